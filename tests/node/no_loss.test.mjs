// No mail lost, proved from outside Python: open a window through mailqueue's HTTP API,
// send mail over SMTP, end the window, wait for the drain and ask the API to verify.
//
// Node's standard library only (node:test, fetch, node:net). Set:
//   MAILQUEUE_API        the admin endpoint, e.g. http://127.0.0.1:8025
//   MAILQUEUE_SMTP_PORT  the SMTP port of the same server
//   MAILQUEUE_TOKEN      the [admin] token, if one is set
//   MAILQUEUE_RCPT       the recipient (default alice@basic.example)
// and run: node --test tests/node/

import assert from "node:assert/strict";
import net from "node:net";
import { test } from "node:test";

const API = `${process.env.MAILQUEUE_API ?? "http://127.0.0.1:8025"}/api/v1`;
const SMTP_PORT = Number(process.env.MAILQUEUE_SMTP_PORT ?? 2525);
const TOKEN = process.env.MAILQUEUE_TOKEN;
const RCPT = process.env.MAILQUEUE_RCPT ?? "alice@basic.example";
const HEADERS = TOKEN ? { Authorization: `Bearer ${TOKEN}` } : {};
const COUNT = 5;

async function api(method, path, body) {
  const response = await fetch(API + path, {
    method,
    headers: { ...HEADERS, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, type: response.headers.get("content-type"),
           data: text ? JSON.parse(text) : null };
}

// One SMTP conversation: each command, then the reply it must get; the queue id of the
// 250 after DATA.
async function sendMail(subject, messageId) {
  const socket = net.connect(SMTP_PORT, "127.0.0.1");
  socket.setEncoding("utf8");
  let buffered = "";
  const waiting = [];
  socket.on("data", (chunk) => {
    buffered += chunk;
    // A reply ends with a line whose code is followed by a space (RFC 5321 4.2.1).
    let match;
    while ((match = buffered.match(/^(?:\d{3}-[^\n]*\n)*(\d{3}) [^\n]*\n/))) {
      buffered = buffered.slice(match[0].length);
      waiting.shift()?.resolve(match[0]);
    }
  });
  socket.on("error", (error) => waiting.shift()?.reject(error));
  const reply = () => new Promise((resolve, reject) => waiting.push({ resolve, reject }));
  const expect = async (code, line) => {
    const answer = reply();
    if (line !== undefined) socket.write(`${line}\r\n`);
    const text = await answer;
    assert.ok(text.startsWith(String(code)), `${line ?? "greeting"}: ${text}`);
    return text;
  };
  await expect(220);
  await expect(250, "EHLO node.test");
  await expect(250, "MAIL FROM:<sender@src.test>");
  await expect(250, `RCPT TO:<${RCPT}>`);
  await expect(354, "DATA");
  const message = [
    "From: sender@src.test", `To: ${RCPT}`, `Subject: ${subject}`,
    `Message-ID: ${messageId}`, "", "Sent from a Node.js test.", ".",
  ].join("\r\n");
  const queued = await expect(250, message);
  await expect(221, "QUIT");
  socket.end();
  return queued.match(/queued as (\w+)/)[1];
}

// The events of the stream (Server-Sent Events read with fetch), collected until stop().
function watch(types) {
  const seen = [];
  const controller = new AbortController();
  const url = `${API}/events?types=${types}` + (TOKEN ? `&token=${TOKEN}` : "");
  const ready = (async () => {
    const response = await fetch(url, { signal: controller.signal });
    assert.equal(response.status, 200);
    return response;
  })();
  const done = ready.then(async (response) => {
    const decoder = new TextDecoder();
    let text = "";
    try {
      for await (const chunk of response.body) {
        text += decoder.decode(chunk, { stream: true });
        let end;
        while ((end = text.indexOf("\n\n")) >= 0) {
          const frame = text.slice(0, end);
          text = text.slice(end + 2);
          const name = frame.match(/^event: (.*)$/m)?.[1];
          const data = frame.match(/^data: (.*)$/m)?.[1];
          if (name) seen.push({ name, data: JSON.parse(data) });
        }
      }
    } catch (error) {
      if (error.name !== "AbortError") throw error;
    }
  });
  return { seen, ready, stop: async () => { controller.abort(); await done; } };
}

async function until(what, check, seconds = 30) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const value = await check();
    if (value) return value;
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

test("mail sent during a window is all delivered after it, none lost", async () => {
  const doc = await api("GET", "/openapi.json");
  assert.equal(doc.status, 200);
  assert.equal(doc.data.openapi, "3.1.0");

  const events = watch("queued,delivered");
  await events.ready;

  const started = await api("POST", "/windows/node-window/start", { duration: "1h" });
  assert.equal(started.status, 201, JSON.stringify(started.data));
  assert.equal(started.data.state, "active");

  const ids = [];
  for (let i = 0; i < COUNT; i++) {
    ids.push(await sendMail(`node ${i}`, `<node-${i}-${Date.now()}@src.test>`));
  }
  const queued = await api("GET", "/messages?state=queued&limit=100");
  assert.deepEqual(queued.data.messages.map((m) => m.queue_id).sort(), [...ids].sort());

  const ended = await api("POST", "/windows/node-window/end");
  assert.equal(ended.status, 200);
  assert.equal(ended.data.state, "ended");

  const drain = await until("the drain", async () => {
    const progress = await api("GET", "/windows/node-window/drain");
    return progress.data.done ? progress.data : null;
  });
  assert.equal(drain.delivered, COUNT);
  assert.equal(drain.remaining, 0);

  const verify = await api("GET", "/verify");
  assert.equal(verify.status, 200);
  assert.equal(verify.data.passed, true, verify.data.equation);
  assert.equal(verify.data.accepted, COUNT);
  assert.equal(verify.data.delivered, COUNT);
  assert.equal(verify.data.unaccounted, 0);
  assert.deepEqual(verify.data.missing, []);
  assert.deepEqual(verify.data.duplicated, []);

  await until("the delivered events", () =>
    events.seen.filter((e) => e.name === "delivered").length >= COUNT);
  await events.stop();
  const by = (name) => events.seen.filter((e) => e.name === name)
    .map((e) => e.data.queue_id).sort();
  assert.deepEqual(by("queued"), [...ids].sort());
  assert.deepEqual(by("delivered"), [...ids].sort());
});

test("errors are problem documents naming what to fix", async () => {
  const unknown = await api("POST", "/windows/no-such-window/end");
  assert.equal(unknown.status, 404);
  assert.match(unknown.type, /^application\/problem\+json/);
  assert.equal(unknown.data.status, 404);
  const bad = await api("POST", "/windows/w/start", { duration: "soon" });
  assert.equal(bad.status, 400);
  assert.equal(bad.data.errors[0].field, "duration");
});

// The message search (queue id, Message-ID, sender or recipient) and a message's detail.

import {request} from "./api.js";
import {showDetail} from "./dialogs.js";
import {badge, count, h, time} from "./format.js";

const LIMIT = 50;
const RAW_SHOWN = 65536;  // characters of the raw message the dialog shows

function idButton(queueId) {
  return h("button", {type: "button", class: "link", "aria-label": `Message ${queueId}`,
                      onclick: () => openMessage(queueId)}, queueId);
}

async function search(query) {
  const status = document.getElementById("search-status");
  const table = document.getElementById("results-table");
  status.textContent = "Searching…";
  try {
    const found = await request("/messages", {query: {q: query, all: "true", limit: LIMIT}});
    const messages = found.messages;
    document.getElementById("results").replaceChildren(...messages.map((m) => h("tr", {},
      h("td", {}, idButton(m.queue_id)),
      h("td", {}, time(m.arrival_epoch)),
      h("td", {}, m.sender || "<>"),
      h("td", {}, m.recipients.map((r) => h("div", {}, `${r.address} `, badge(r.state)))),
      h("td", {class: "mono"}, m.message_id || "–"))));
    table.hidden = messages.length === 0;
    const more = found.next_cursor ? ` (the first ${LIMIT}; narrow the search for others)` : "";
    status.textContent = messages.length === 0 ? `No message matches “${query}”.`
      : `${messages.length} ${messages.length === 1 ? "message" : "messages"} found${more}.`;
  } catch (error) {
    table.hidden = true;
    status.textContent = `Search failed: ${error.message}`;
  }
}

export function setupSearch() {
  document.getElementById("search").addEventListener("submit", (event) => {
    event.preventDefault();
    const query = document.getElementById("search-q").value.trim();
    if (query) search(query);
  });
}

function facts(message) {
  const rows = [
    ["Queue id", message.queue_id], ["Message-ID", message.message_id || "–"],
    ["Sender", message.sender || "<>"], ["Arrived", time(message.arrival_epoch)],
    ["Size", `${count(message.size)} bytes`],
    ["Client", message.client ? `${message.client.helo || "?"} [${message.client.peer}]` : "–"],
    ["TLS", message.tls || "no"], ["AUTH user", message.auth_user || "–"],
  ];
  return h("dl", {}, rows.flatMap(([name, value]) => [h("dt", {}, name), h("dd", {}, value)]));
}

function recipients(message) {
  return h("table", {class: "grid"},
    h("caption", {class: "sr-only"}, "Recipients"),
    h("thead", {}, h("tr", {}, ["Recipient", "Store", "State", "Attempts", "Next attempt",
                                "Last error"].map((name) => h("th", {scope: "col"}, name)))),
    h("tbody", {}, message.recipients.map((r) => h("tr", {},
      h("td", {}, r.address), h("td", {}, r.store), h("td", {}, badge(r.state)),
      h("td", {class: "num"}, r.attempts),
      h("td", {}, r.next_attempt ? time(Date.parse(r.next_attempt) / 1000) : "–"),
      h("td", {}, r.last_error || "–")))));
}

function history(message) {
  if (!message.history || !message.history.length) {
    return h("p", {class: "muted"}, "Nothing has happened to it yet.");
  }
  return h("ol", {}, message.history.map((entry) => h("li", {},
    `${time(entry.at_epoch)} — `, badge(entry.kind), ` ${entry.recipient || ""}`,
    entry.detail ? `: ${entry.detail}` : "")));
}

function rawButton(message) {
  if (!message.raw_available) return h("p", {class: "muted"}, "Its content is no longer kept.");
  const holder = h("div");
  const button = h("button", {type: "button", onclick: async () => {
    button.disabled = true;
    try {
      const raw = await request(`/messages/${encodeURIComponent(message.queue_id)}/raw`);
      const text = String(raw);
      holder.replaceChildren(h("pre", {tabindex: 0, "aria-label": "Raw message"},
        text.length > RAW_SHOWN ? `${text.slice(0, RAW_SHOWN)}\n…` : text));
    } catch (error) {
      holder.replaceChildren(h("p", {class: "error"}, error.message));
    }
    button.remove();
  }}, "Show the raw message");
  return h("div", {}, button, holder);
}

/** Open one message's detail in the dialog. */
export async function openMessage(queueId) {
  try {
    const message = await request(`/messages/${encodeURIComponent(queueId)}`);
    showDetail(`Message ${message.queue_id}`, [
      facts(message),
      h("h3", {}, "Recipients"), recipients(message),
      h("h3", {}, "History"), history(message),
      h("h3", {}, "Headers"),
      message.headers.length ? h("pre", {tabindex: 0, "aria-label": "Headers"},
                                 message.headers.join("\n"))
        : h("p", {class: "muted"}, "Its content is no longer kept."),
      h("h3", {}, "Content"), rawButton(message),
    ]);
  } catch (error) {
    showDetail(`Message ${queueId}`, [h("p", {class: "error"}, error.message)]);
  }
}

// The dashboard: reads the state through /api/v1, then follows the event stream.

import {checkAuth, listen, request, setToken} from "./api.js";
import {renderQueueChart} from "./chart.js";
import {askToken, setupDetail} from "./dialogs.js";
import {count, duration, perMinute, time} from "./format.js";
import {openMessage, setupSearch} from "./search.js";
import {LiveSeries} from "./series.js";
import {Problems, renderStores} from "./stores.js";
import {renderWindows, startNew, tickCountdowns} from "./windows.js";

const DRAIN_SHOWN = 3600;  // seconds after its end a window's drain stays on the page
const REFRESH = 15000;     // milliseconds between full re-reads (the stream covers the rest)

const state = {
  skew: 0,            // server time minus this browser's clock, in seconds
  windows: [],
  stores: [],
  nodes: [],
  events: [],         // numbered marks on the chart: {at, label}
  series: new LiveSeries(Date.now() / 1000),
  drain: null,        // the latest drain progress
  zone: undefined,
};
const problems = new Problems(openMessage);

function serverNow() {
  return Date.now() / 1000 + state.skew;
}

function setConnection(kind, text) {
  const node = document.getElementById("connection");
  node.dataset.state = kind;
  node.textContent = text || {live: "Live", connecting: "Connecting…",
                              lost: "Connection lost"}[kind];
}

// --- what the chart shows ---------------------------------------------------------------

/** The window the chart follows: the active one, else one whose drain is recent. */
function focusWindow() {
  const active = state.windows.filter((w) => w.state === "active" && w.started_at_epoch)
    .sort((a, b) => a.started_at_epoch - b.started_at_epoch);
  if (active.length) return active[0];
  const now = serverNow();
  return state.windows.filter((w) => w.state === "ended" && w.ended_at_epoch &&
                                     w.started_at_epoch && now - w.ended_at_epoch < DRAIN_SHOWN)
    .sort((a, b) => b.ended_at_epoch - a.ended_at_epoch)[0] || null;
}

function drawChart() {
  const series = state.series;
  const end = Math.max(serverNow(), series.start + 60);
  const [interval, delivered] = series.deliveredBars(end);
  renderQueueChart(document.getElementById("queue-chart"), {
    title: "Recipients waiting, by store, and deliveries",
    unit: "recipients", depthLabel: "recipients waiting",
    zone: state.zone, interval, start: series.start, end,
    stores: state.stores.map((s) => s.name),
    points: series.points, delivered,
    windows: state.windows.filter((w) => w.started_at_epoch).map((w) => ({
      name: w.name, start: w.started_at_epoch, end: w.ended_at_epoch,
      planned_end: w.end_epoch})),
    events: state.events,
  }, {depthHeight: 210, barHeight: 80});
  const focus = focusWindow();
  document.getElementById("chart-since").textContent = focus
    ? `since window ${focus.name} started, ${time(focus.started_at_epoch)}`
    : `since ${time(series.start)}`;
}

function drawFigures() {
  const counts = state.series.latest;
  if (!counts) return;
  const r = counts.recipients || {};
  document.getElementById("fig-waiting").textContent =
    count((r.queued || 0) + (r.active || 0) + (r.held || 0));
  document.getElementById("fig-pending").textContent = count(counts.messages_pending);
  document.getElementById("fig-accepted-rate").textContent =
    perMinute(state.series.rate("accepted"));
  document.getElementById("fig-delivered-rate").textContent =
    perMinute(state.series.rate("delivered"));
  document.getElementById("fig-oldest").textContent =
    counts.oldest_pending_seconds == null ? "–" : duration(counts.oldest_pending_seconds);
}

/** Start the chart at the followed window's start (seeded from the waiting mail). */
async function followWindow() {
  const focus = focusWindow();
  const start = focus ? focus.started_at_epoch : state.series.start;
  if (start === state.series.start && state.series.points.length) return;
  state.series.restart(start);
  if (focus && focus.state === "active") {
    try {
      state.series.seed(await waitingMessages());
    } catch {
      // the history is a nicety: the live counts still draw the chart
    }
  }
}

async function waitingMessages() {
  const messages = [];
  let cursor = null;
  for (let page = 0; page < 10; page += 1) {
    const found = await request("/messages", {query: {limit: 1000, cursor}});
    messages.push(...found.messages);
    cursor = found.next_cursor;
    if (!cursor) break;
  }
  return messages;
}

// --- drain progress ---------------------------------------------------------------------

async function updateDrain() {
  const focus = focusWindow();
  const box = document.getElementById("drain");
  if (!focus || focus.state !== "ended") {
    box.hidden = true;
    state.drain = null;
    return;
  }
  if (state.drain && state.drain.window === focus.name && state.drain.done) return;
  try {
    state.drain = await request(`/windows/${encodeURIComponent(focus.name)}/drain`);
  } catch {
    return;
  }
  drawDrain();
}

function drawDrain() {
  const drain = state.drain;
  const box = document.getElementById("drain");
  if (!drain) return;
  box.hidden = false;
  const settled = drain.delivered + drain.bounced + drain.deleted;
  const all = settled + drain.remaining;
  const bar = document.getElementById("drain-progress");
  bar.max = Math.max(1, all);
  bar.value = settled;
  document.getElementById("drain-heading").textContent = `Drain after window ${drain.window}`;
  const bounced = drain.bounced ? `, ${count(drain.bounced)} bounced` : "";
  let text;
  if (drain.done) {
    const took = drain.last_settled_epoch ? drain.last_settled_epoch - drain.since_epoch : null;
    text = `Drained: ${count(settled)} recipients settled${bounced}` +
      (took === null ? "." : `, ${duration(took)} after the window ended.`);
  } else {
    const eta = drain.eta_seconds == null ? "no delivery yet" :
      `about ${duration(drain.eta_seconds)} left`;
    const held = drain.held ? ` (${count(drain.held)} held)` : "";
    text = `${count(settled)} of ${count(all)} recipients settled${bounced}; ` +
      `${count(drain.remaining)} remaining${held} — ${perMinute(drain.rate_per_second)}, ${eta}.`;
  }
  document.getElementById("drain-text").textContent = text;
  box.dataset.done = String(Boolean(drain.done));
}

// --- reading the state ------------------------------------------------------------------

async function loadWindows() {
  state.windows = (await request("/windows")).windows;
  renderWindows(state.windows, serverNow(), refreshAll);
}

async function loadStores() {
  const [stores, nodes] = await Promise.all([request("/stores"), request("/nodes")]);
  state.stores = stores.stores;
  state.nodes = nodes.nodes;
  renderStores(state.stores, state.nodes, state.series.latest);
}

async function refreshAll() {
  await Promise.all([loadWindows(), loadStores()]);
  await followWindow();
  drawChart();
  await updateDrain();
}

async function seedProblems() {
  const [deferred, bounced] = await Promise.all([
    request("/messages", {query: {state: "queued", limit: 200}}),
    request("/messages", {query: {state: "bounced", limit: 50}}),
  ]);
  problems.seed([...bounced.messages, ...deferred.messages]);
}

// --- the event stream -------------------------------------------------------------------

function mark(label) {
  state.events.push({at: serverNow(), label});
}

const handlers = {
  hello(data) {
    state.skew = data.server_time_epoch - Date.now() / 1000;
  },
  counts(data) {
    state.skew = data.at_epoch - Date.now() / 1000;
    state.series.add(data);
    drawFigures();
    drawChart();
    renderStores(state.stores, state.nodes, data);
    document.getElementById("server-time").textContent = `Server time ${time(data.at_epoch)}`;
  },
  deferred(data) { problems.add("deferred", data); },
  bounced(data) { problems.add("bounced", data); },
  async window(data) {
    const w = data.window;
    // Starts and ends show as the shading; the other changes get a numbered mark.
    if (data.change === "extended") mark(`Window ${w.name} extended to ${time(w.end_epoch)}`);
    if (data.change === "cancelled") mark(`Window ${w.name} cancelled`);
    await refreshAll();
  },
  async node(data) {
    mark(`Node ${data.node.name} ${data.node.mode}`);
    await loadStores();
  },
};

function setupControls() {
  document.getElementById("new-window").addEventListener("click",
    () => startNew(state.stores.map((s) => s.name), refreshAll));
  setupDetail();
  setupSearch();
}

async function authorise() {
  if (await checkAuth()) return;
  await askToken(async (value) => {
    setToken(value);
    return checkAuth();
  });
}

async function main() {
  setupControls();
  try {
    await authorise();
    await refreshAll();
  } catch (error) {
    setConnection("lost", `Cannot read the queue: ${error.message}`);
    return;
  }
  seedProblems().catch(() => {});
  listen(handlers, {
    onState: (kind) => setConnection(kind),
    // On a reconnect, what the stream missed is read again.
    onOpen: () => { refreshAll().catch(() => {}); },
  });
  setInterval(() => {
    tickCountdowns(serverNow());
    const focus = focusWindow();
    if (focus && focus.state === "ended" && !(state.drain && state.drain.done)) {
      updateDrain();
    }
  }, 1000);
  setInterval(() => { refreshAll().catch(() => {}); }, REFRESH);
}

main();

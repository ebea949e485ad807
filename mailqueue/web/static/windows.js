// The windows panel: each window with its state and countdown, and the buttons that start,
// end or extend one, each behind a confirmation.

import {request} from "./api.js";
import {confirmAction} from "./dialogs.js";
import {badge, countdown, h, redraw, time} from "./format.js";

const ORDER = {active: 0, scheduled: 1, ended: 2, cancelled: 3};
const SHOWN_DONE = 4;  // ended or cancelled windows listed after the live ones

function storesText(window) {
  return window.stores.length ? window.stores.join(", ") : "every store";
}

/** The windows worth listing: active and scheduled ones, then the latest few done. */
export function listed(windows) {
  const live = windows.filter((w) => w.state === "active" || w.state === "scheduled");
  const done = windows.filter((w) => w.state === "ended" || w.state === "cancelled")
    .sort((a, b) => (b.ended_at_epoch ?? b.end_epoch) - (a.ended_at_epoch ?? a.end_epoch))
    .slice(0, SHOWN_DONE);
  return live.sort((a, b) => ORDER[a.state] - ORDER[b.state] || a.end_epoch - b.end_epoch)
    .concat(done);
}

function when(window, now) {
  const zone = window.timezone || undefined;
  if (window.state === "active") {
    return [`ends ${time(window.end_epoch, zone)} — `,
      h("span", {class: "countdown", dataset: {until: window.end_epoch}},
        countdown(window.end_epoch - now)), " left"];
  }
  if (window.state === "scheduled") {
    return [`starts ${time(window.start_epoch, zone)} — in `,
      h("span", {class: "countdown", dataset: {until: window.start_epoch}},
        countdown(window.start_epoch - now))];
  }
  if (window.state === "ended") return [`ended ${time(window.ended_at_epoch, zone)}`];
  return ["cancelled"];
}

function endWindow(window, refresh) {
  return confirmAction({
    title: `End window ${window.name}?`,
    text: `Mail for ${storesText(window)} is delivered from now on: the queue drains.`,
    ok: "End window", danger: true,
    action: async () => { await request(`/windows/${encodeURIComponent(window.name)}/end`,
                                        {method: "POST", body: {}}); await refresh(); },
  });
}

function extendWindow(window, refresh) {
  return confirmAction({
    title: `Extend window ${window.name}?`,
    text: `It now ends ${time(window.end_epoch, window.timezone)}. ` +
      `Mail for ${storesText(window)} stays queued until the new end.`,
    ok: "Extend window",
    fields: [{name: "by", label: "Extend by", value: "1h", required: true,
              hint: "A duration: 30m, 2h, 1d12h."}],
    action: async ({by}) => {
      await request(`/windows/${encodeURIComponent(window.name)}/extend`,
                    {method: "POST", body: {by}});
      await refresh();
    },
  });
}

function startScheduled(window, refresh) {
  return confirmAction({
    title: `Start window ${window.name} now?`,
    text: `Mail for ${storesText(window)} is queued, not delivered, until ` +
      `${time(window.end_epoch, window.timezone)}.`,
    ok: "Start window",
    action: async () => { await request(`/windows/${encodeURIComponent(window.name)}/start`,
                                        {method: "POST", body: {}}); await refresh(); },
  });
}

/** The "Start a window…" dialog: a name, how long, which stores, what new mail gets. */
export function startNew(stores, refresh) {
  return confirmAction({
    title: "Start a window",
    text: "The stores you pick (none picked: every store) stop receiving deliveries now; " +
      "their mail is held in the queue until the window ends.",
    ok: "Start window",
    fields: [
      {name: "name", label: "Name", value: "maintenance", required: true},
      {name: "duration", label: "Duration", value: "2h", required: true,
       hint: "A duration: 30m, 2h, 1d12h."},
      {name: "stores", label: "Stores", type: "checkboxes", options: stores, value: []},
      {name: "inbound", label: "New mail for these stores", type: "select",
       options: ["queue", "tempfail", "reject"], value: "queue"},
    ],
    action: async ({name, duration, stores: picked, inbound}) => {
      if (!name) throw new Error("Give the window a name.");
      const body = {duration, inbound};
      if (picked.length) body.stores = picked;
      await request(`/windows/${encodeURIComponent(name)}/start`, {method: "POST", body});
      await refresh();
    },
  });
}

function button(window, action, text, onclick, extra = {}) {
  return h("button", {type: "button", "aria-label": `${text.replace("…", "")}: ${window.name}`,
                      "data-action": action, "data-focus": `window ${window.name} ${action}`,
                      onclick, ...extra}, text);
}

function actions(window, refresh) {
  if (window.state === "active") {
    return [
      button(window, "end", "End now", () => endWindow(window, refresh), {class: "danger"}),
      button(window, "extend", "Extend…", () => extendWindow(window, refresh)),
    ];
  }
  if (window.state === "scheduled") {
    return [button(window, "start", "Start now", () => startScheduled(window, refresh))];
  }
  return [];
}

let drawn = null;  // what the list shows now (countdowns move on their own)

/** Draw the windows into the panel (when they changed). */
export function renderWindows(windows, now, refresh) {
  const list = document.getElementById("windows");
  const shown = listed(windows);
  const key = JSON.stringify(shown.map((w) => [w.name, w.state, w.stores, w.inbound,
    w.start_epoch, w.end_epoch, w.started_at_epoch, w.ended_at_epoch]));
  if (key === drawn) return;
  drawn = key;
  document.getElementById("windows-empty").hidden = shown.length > 0;
  const item = (w) => h("li", {dataset: {window: w.name, state: w.state}},
    h("div", {class: "window-head"}, h("span", {class: "window-name"}, w.name), badge(w.state)),
    h("p", {class: "window-meta"}, `${storesText(w)} · new mail: ${w.inbound}`),
    h("p", {class: "window-meta"}, ...when(w, now)),
    h("div", {class: "window-actions"}, ...actions(w, refresh)));
  redraw(list, () => list.replaceChildren(...shown.map(item)));
}

/** Move every countdown on to `now` (each second). */
export function tickCountdowns(now) {
  for (const node of document.querySelectorAll(".countdown[data-until]")) {
    node.textContent = countdown(Number(node.dataset.until) - now);
  }
}

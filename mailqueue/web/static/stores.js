// The stores-and-nodes panel and the recent deferrals and bounces.

import {badge, count, h, redraw, time} from "./format.js";
import {waiting} from "./series.js";

/** Stores with their window, recipients waiting and delivered, and their nodes' modes. */
export function renderStores(stores, nodes, counts) {
  const perStore = (counts && counts.stores) || {};
  const body = document.getElementById("stores");
  body.replaceChildren(...stores.map((store) => {
    const states = perStore[store.name] || {};
    const own = nodes.filter((n) => n.store === store.name);
    const state = store.open ? badge("open") :
      [badge("held"), h("br"), h("span", {class: "muted"}, `by ${store.window}`)];
    return h("tr", {dataset: {store: store.name}},
      h("th", {scope: "row"}, store.name,
        h("div", {class: "muted small"}, `${store.kind} · ${store.domains.join(", ")}`),
        own.length ? h("div", {class: "nodes"}, own.map((n) => h("span", {
          class: `badge state-${n.mode}`, title: nodeTitle(n)}, `${n.name} ${n.mode}`)))
          : null),
      h("td", {}, state),
      h("td", {class: "num"}, count(waiting(states))),
      h("td", {class: "num"}, count(states.delivered || 0)));
  }));
}

function nodeTitle(node) {
  const parts = [`${node.name}: ${node.mode}`];
  if (node.mode === "slow") parts.push(`latency ${node.latency} s`);
  if (node.mode === "flaky") parts.push(`failure rate ${node.failure_rate}`);
  if (node.updated_at_epoch) parts.push(`since ${time(node.updated_at_epoch)}`);
  return parts.join(", ");
}

const KEEP = 50;

/** The latest deferrals and bounces, newest first; `open` shows one message's detail. */
export class Problems {
  constructor(open) {
    this.open = open;
    this.rows = [];
  }

  add(kind, event) {
    this.rows.unshift({kind, at: event.at_epoch ?? null, recipient: event.recipient,
                       store: event.store, reason: event.reason || "",
                       queueId: event.queue_id});
    this.rows.length = Math.min(this.rows.length, KEEP);
    this.render();
  }

  /** What the queue already knows: recipients with a last error, and bounced ones. */
  seed(messages) {
    const known = new Set(this.rows.map((r) => `${r.queueId} ${r.recipient}`));
    for (const message of messages) {
      for (const rcpt of message.recipients || []) {
        const kind = rcpt.state === "bounced" ? "bounced" : "deferred";
        if (!rcpt.last_error || known.has(`${message.queue_id} ${rcpt.address}`)) continue;
        this.rows.push({kind, at: null, recipient: rcpt.address, store: rcpt.store,
                        reason: rcpt.last_error, queueId: message.queue_id});
      }
    }
    this.rows.length = Math.min(this.rows.length, KEEP);
    this.render();
  }

  render() {
    document.getElementById("problems-empty").hidden = this.rows.length > 0;
    document.getElementById("problems-table").hidden = this.rows.length === 0;
    const body = document.getElementById("problems");
    redraw(body, () => body.replaceChildren(...this.rows.map((row) => h("tr", {},
      h("td", {}, row.at === null ? h("span", {class: "muted"}, "earlier") : time(row.at)),
      h("td", {}, badge(row.kind)),
      h("td", {}, row.recipient, h("br"), h("span", {class: "muted"}, row.store)),
      h("td", {}, row.reason),
      h("td", {}, h("button", {type: "button", class: "link",
                               "aria-label": `Message ${row.queueId}`,
                               "data-focus": `${row.kind} ${row.queueId} ${row.recipient}`,
                               onclick: () => this.open(row.queueId)}, row.queueId))))));
  }
}

// The live queue series: what the chart draws, gathered from the event stream's counts.

const WAITING = ["queued", "active", "held"];
const MAX_POINTS = 3000;
const BAR_STEPS = [5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400];
const MAX_BARS = 90;

/** Recipients waiting (queued, active or held) in one store's counts. */
export function waiting(counts) {
  return WAITING.reduce((sum, state) => sum + (counts[state] || 0), 0);
}

function sameDepth(a, b) {
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
  for (const key of keys) if ((a[key] || 0) !== (b[key] || 0)) return false;
  return true;
}

export class LiveSeries {
  constructor(start) {
    this.start = start;     // the chart's left edge (epoch seconds)
    this.points = [];       // {at, depth: {store: recipients waiting}}
    this.totals = [];       // {at, accepted, delivered}: cumulative, for rates and bars
    this.latest = null;     // the last counts seen
  }

  /** Start over from `start`, keeping nothing earlier. */
  restart(start) {
    this.start = start;
    this.points = this.points.filter((p) => p.at >= start);
    this.totals = this.totals.filter((t) => t.at >= start);
  }

  /**
   * The depth history rebuilt from the messages still waiting: while a window holds their
   * stores nothing of theirs is delivered, so their arrivals are the curve.
   */
  seed(messages) {
    const arrivals = [];
    for (const message of messages) {
      for (const rcpt of message.recipients || []) {
        if (WAITING.includes(rcpt.state) && message.arrival_epoch >= this.start) {
          arrivals.push([message.arrival_epoch, rcpt.store]);
        }
      }
    }
    arrivals.sort((a, b) => a[0] - b[0]);
    const depth = {};
    const points = [{at: this.start, depth: {}}];
    for (const [at, store] of arrivals) {
      depth[store] = (depth[store] || 0) + 1;
      points.push({at, depth: {...depth}});
    }
    const firstLive = this.points.length ? this.points[0].at : Infinity;
    this.points = points.filter((p) => p.at < firstLive).concat(this.points);
  }

  /** Take one `counts` event. */
  add(counts) {
    this.latest = counts;
    const at = counts.at_epoch;
    const depth = {};
    for (const [store, states] of Object.entries(counts.stores || {})) {
      depth[store] = waiting(states);
    }
    const last = this.points.at(-1);
    // A step chart needs a point only where the depth changes.
    if (!last || !sameDepth(last.depth, depth)) this.points.push({at, depth});
    this.totals.push({at, accepted: counts.accepted || 0, delivered: counts.delivered || 0});
    this.now = at;
    this.thin();
  }

  /** Keep the series small: drop every other point of the older half when it grows. */
  thin() {
    for (const list of [this.points, this.totals]) {
      if (list.length > MAX_POINTS) {
        const half = Math.floor(list.length / 2);
        const older = list.slice(0, half).filter((_, i) => i % 2 === 0);
        list.splice(0, half, ...older);
      }
    }
  }

  /** Per-second rate of a cumulative total over the last `span` seconds. */
  rate(key, span = 60) {
    if (this.totals.length < 2) return null;
    const last = this.totals.at(-1);
    const from = this.totals.find((t) => t.at >= last.at - span) || this.totals[0];
    const seconds = last.at - from.at;
    return seconds > 0 ? (last[key] - from[key]) / seconds : null;
  }

  /** Recipients delivered per interval since the start: [interval, [{at, count}]]. */
  deliveredBars(end) {
    const span = Math.max(1, end - this.start);
    const interval = BAR_STEPS.find((s) => span / s <= MAX_BARS) || BAR_STEPS.at(-1);
    if (this.totals.length < 2) return [interval, []];
    const bars = [];
    let index = 0;
    let before = this.totals[0].delivered;
    const first = Math.ceil(this.totals[0].at / interval) * interval;
    for (let at = first; at < end + interval; at += interval) {
      while (index + 1 < this.totals.length && this.totals[index + 1].at <= at) index += 1;
      const now = this.totals[index].delivered;
      if (now > before) bars.push({at, count: now - before});
      before = now;
    }
    return [interval, bars];
  }
}

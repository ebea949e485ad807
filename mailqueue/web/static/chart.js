// The queue chart: queue depth by store (stacked steps) over time, maintenance windows
// shaded, numbered events, and below it the recipients delivered per interval and, where
// there are any, what the mail servers answered. Plain SVG, no library. The dashboard draws
// it live; a rehearsal's report.html carries this file inline and draws its series.
//
// renderQueueChart(container, data) replaces the container's content with the chart.
// data = {
//   title: "queue depth and deliveries",
//   unit: "messages",                 // what the depth counts
//   depthLabel: "messages queued",    // the depth axis's label (default: unit + " queued")
//   zone: "America/Chicago",          // IANA zone of the time axis (default: the browser's)
//   interval: 60,                     // seconds each bar counts (delivered, replies)
//   start: epoch, end: epoch,         // the time axis (default: the points' span)
//   stores: ["basic", ...],           // stacking order (default: as the points name them)
//   points: [{at: epoch, depth: {basic: 3, ...}}],   // depth from this point to the next
//   delivered: [{at: epoch, count: 5}],              // the interval ending at `at`
//   replies: [{at, accepted, deferred, bounced}],    // optional third panel
//   windows: [{name, start, end, planned_end}],      // end null: still active
//   events: [{at, label}],                           // numbered in order
//   access: {                       // optional: mailbox access, a band under the depth
//     label: "mailbox access",     // drawn a word a line left of the band
//     stores: ["basic", ...],       // a row each, top to bottom
//     spans: [{store, start, end, rounds,          // rounds that each got these counts
//              counts: {available, maintenance, "node-down", error}}],
//     moments: [{store, at, kind: "read_again" | "mail_arrived"}],
//   },
// }
//
// renderArrivalChart(container, data) draws arrivals replayed from a traffic profile:
// data = {title, zone, interval, start, end,
//         rows: [{at, expected, accepted}]}   // the interval starting at `at`

const SVG = "http://www.w3.org/2000/svg";
// Store colours: each has at least 3:1 contrast against white (WCAG 1.4.11).
export const STORE_COLOURS = ["#1f5fa8", "#a34f00", "#6a3d9a", "#16745a", "#8c3b4b",
                              "#4d5b00", "#0f6f8a", "#7a4a8c"];
const DELIVERED = "#2e7d32";
const REPLIES = [["accepted", "#2e7d32"], ["deferred", "#b35900"], ["bounced", "#b3261e"]];
const WINDOW_FILL = "#c44e52";
const INK = "#1f2328";
const GRID = "#d0d7de";
// Mailbox access: [outcome, fill, pattern, label]. The fills are queue.png's (Okabe and
// Ito: told apart with any colour vision), node down and errors hatched as well. Two of
// them are lighter than 3:1 against white, so every segment is outlined in ACCESS_OUTLINE,
// which reaches 3:1 against white and against each fill (WCAG 1.4.11).
export const ACCESS = [["available", "#009e73", "", "available"],
                       ["maintenance", "#e69f00", "", "refused: maintenance"],
                       ["node-down", "#d55e00", "hatch", "refused: node down"],
                       ["error", "#999999", "cross", "error"]];
export const ACCESS_OUTLINE = "#1f2328";
const MOMENTS = [["read_again", "circle", "users read mail again"],
                 ["mail_arrived", "diamond", "their queued mail arrived"]];
const ACCESS_ROW = 34;
// Arrivals replayed from a profile: the replay's bars, the profile's line.
export const REPLAYED = "#1f5fa8";
export const PROFILE = "#b3261e";
const MARGIN = {left: 64, right: 16, top: 42, bottom: 44};
const GAP = 26;
const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
                    21600, 43200, 86400, 172800];

function el(name, attrs = {}, parent = null) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (parent) parent.appendChild(node);
  return node;
}

function text(parent, x, y, content, attrs = {}) {
  const node = el("text", {x, y, fill: INK, "font-size": 12, ...attrs}, parent);
  node.textContent = content;
  return node;
}

/** Round numbers for an axis up to `max`: [step, top]. */
export function niceScale(max, ticks = 4) {
  if (!(max > 0)) return [1, 1];
  const raw = max / ticks;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const wholeStep = Math.max(1, step);
  return [wholeStep, Math.ceil(max / wholeStep) * wholeStep];
}

/** The stores in stacking order: those given first, then any other a point names. */
export function storesOf(data) {
  const order = [...(data.stores || [])];
  for (const point of data.points || []) {
    for (const name of Object.keys(point.depth || {})) {
      if (!order.includes(name)) order.push(name);
    }
  }
  return order;
}

function total(point) {
  return Object.values(point.depth || {}).reduce((sum, n) => sum + n, 0);
}

function timeFormat(zone, step, span) {
  const base = {hourCycle: "h23"};
  if (zone) base.timeZone = zone;
  const options = step < 60 ? {hour: "2-digit", minute: "2-digit", second: "2-digit"}
    : {hour: "2-digit", minute: "2-digit"};
  const clock = new Intl.DateTimeFormat("en-GB", {...base, ...options});
  const day = new Intl.DateTimeFormat("en-GB", {...base, weekday: "short", day: "numeric",
                                                 month: "short"});
  return (at) => {
    const when = new Date(at * 1000);
    return span > 86400 || step >= 86400 ? [day.format(when), clock.format(when)]
      : [clock.format(when)];
  };
}

function timeTicks(start, end, width) {
  const span = Math.max(1, end - start);
  const wanted = Math.max(2, Math.floor(width / 110));
  const step = TIME_STEPS.find((s) => span / s <= wanted) || TIME_STEPS.at(-1);
  const ticks = [];
  for (let at = Math.ceil(start / step) * step; at <= end; at += step) ticks.push(at);
  return [step, ticks];
}

/** The x range: the data's span, or the one given, never empty. */
function range(data) {
  const times = [...(data.points || []).map((p) => p.at),
                 ...(data.delivered || []).map((d) => d.at)];
  let start = data.start ?? (times.length ? Math.min(...times) : 0);
  let end = data.end ?? (times.length ? Math.max(...times) : start + 60);
  if (end - start < 60) end = start + 60;
  return [start, end];
}

function stackedSteps(svg, panel, data, stores, x, yOf, end) {
  const points = data.points || [];
  const lower = points.map(() => 0);
  stores.forEach((store, index) => {
    const colour = STORE_COLOURS[index % STORE_COLOURS.length];
    const upper = points.map((p, i) => lower[i] + ((p.depth || {})[store] || 0));
    // A store with nothing queued draws nothing: its line would hide the one below.
    if (upper.some((value, i) => value !== lower[i])) {
      const xs = points.map((p) => x(p.at)).concat([x(end)]);
      let line = `M${xs[0]},${yOf(upper[0])}`;
      let area = line;
      for (let i = 0; i < points.length; i += 1) {
        const step = `H${xs[i + 1]}` + (i + 1 < points.length ? `V${yOf(upper[i + 1])}` : "");
        line += step;
        area += step;
      }
      for (let i = points.length - 1; i >= 0; i -= 1) {
        area += `V${yOf(lower[i])}H${xs[i]}`;
      }
      el("path", {d: area + "Z", fill: colour, "fill-opacity": 0.22, stroke: "none"}, panel);
      el("path", {d: line, fill: "none", stroke: colour, "stroke-width": 2,
                  class: "depth-line", "data-store": store}, panel);
    }
    upper.forEach((value, i) => { lower[i] = value; });
  });
}

function bars(panel, rows, keys, x, yOf, interval) {
  for (const row of rows) {
    let below = 0;
    // A bar stands over the interval it counts, cut at the left edge of the plot.
    const left = Math.max(MARGIN.left, x(row.at - interval));
    const width = Math.max(1, (x(row.at) - left) * 0.9);
    for (const [key, colour] of keys) {
      const value = row[key] || 0;
      if (value > 0) {
        el("rect", {x: left, y: yOf(below + value), width, height: yOf(below) - yOf(below + value),
                    fill: colour}, panel);
      }
      below += value;
    }
  }
}

function yAxis(svg, top, height, max, label, plotWidth) {
  const [step, highest] = niceScale(max, height >= 160 ? 4 : 2);
  const yOf = (v) => top + height - (v / highest) * height;
  for (let v = 0; v <= highest; v += step) {
    el("line", {x1: MARGIN.left, x2: MARGIN.left + plotWidth, y1: yOf(v), y2: yOf(v),
                stroke: GRID, "stroke-width": 1}, svg);
    text(svg, MARGIN.left - 6, yOf(v) + 4, String(v), {"text-anchor": "end"});
  }
  text(svg, 14, top + height / 2, label,
       {"text-anchor": "middle", transform: `rotate(-90 14 ${top + height / 2})`});
  return yOf;
}

function windows(svg, data, x, top, bottom, end) {
  for (const w of data.windows || []) {
    if (w.start == null) continue;
    const from = x(Math.max(w.start, x.start));
    const to = x(Math.min(w.end ?? end, end));
    if (to > from) {
      const shade = el("rect", {x: from, y: top, width: to - from, height: bottom - top,
                                fill: WINDOW_FILL, "fill-opacity": 0.12, class: "window"}, svg);
      el("title", {}, shade).textContent = `window ${w.name}`;
    }
    const ended = w.end ?? null;
    if (w.planned_end != null && (ended == null || Math.abs(w.planned_end - ended) > 60) &&
        w.planned_end >= x.start && w.planned_end <= end) {
      el("line", {x1: x(w.planned_end), x2: x(w.planned_end), y1: top, y2: bottom,
                  stroke: "#9f2a2e", "stroke-width": 1.5, "stroke-dasharray": "2 3",
                  class: "planned-end"}, svg);
      text(svg, x(w.planned_end) - 4, bottom - 6, `planned end of ${w.name}`,
           {"text-anchor": "end", "font-size": 11, fill: "#9f2a2e"});
    }
  }
}

function events(svg, data, x, top, bottom, end) {
  const groups = new Map();
  (data.events || []).forEach((event, index) => {
    if (event.at < x.start || event.at > end) return;
    const numbers = groups.get(event.at) || [];
    numbers.push({number: index + 1, label: event.label});
    groups.set(event.at, numbers);
  });
  for (const [at, numbers] of groups) {
    el("line", {x1: x(at), x2: x(at), y1: top, y2: bottom, stroke: "#57606a",
                "stroke-width": 1, "stroke-dasharray": "4 3"}, svg);
    const label = numbers.map((n) => n.number).join(",");
    const mark = el("g", {class: "event"}, svg);
    el("title", {}, mark).textContent = numbers.map((n) => `(${n.number}) ${n.label}`)
      .join("\n");
    const width = 8 + 7 * label.length;
    el("rect", {x: x(at) - width / 2, y: top - 18, width, height: 16, rx: 4, fill: "#fff",
                stroke: "#57606a"}, mark);
    text(mark, x(at), top - 6, label, {"text-anchor": "middle", "font-size": 11});
  }
}

/** A row of legend entries from the left at `y`: add(label, swatch) draws swatch(x, y). */
function legendRow(svg, y) {
  let at = MARGIN.left;
  return (label, swatch) => {
    swatch(at, y);
    const node = text(svg, at + 16, y, label, {"font-size": 12});
    at += 26 + 7 * label.length;
    return node;
  };
}

function legend(svg, stores, replies, y) {
  const add = legendRow(svg, y);
  const box = (colour, attrs = {}) => (at) => el("rect", {x: at, y: y - 9, width: 12,
                                                          height: 10, fill: colour, ...attrs},
                                                 svg);
  stores.forEach((store, i) => add(store, box(STORE_COLOURS[i % STORE_COLOURS.length])));
  add("delivered", box(DELIVERED));
  if (replies) for (const [key, colour] of REPLIES.slice(1)) add(`server ${key}`, box(colour));
  add("maintenance window", box(WINDOW_FILL, {"fill-opacity": 0.12, stroke: WINDOW_FILL}));
}

// --- mailbox access ---------------------------------------------------------------------

/** White lines over a fill: diagonal (hatch) or crossed (cross), as queue.png hatches. */
function patterns(svg, id) {
  const defs = el("defs", {}, svg);
  for (const [name, d] of [["hatch", "M0,6 L6,0"], ["cross", "M0,6 L6,0 M0,0 L6,6"]]) {
    const pattern = el("pattern", {id: `${id}-${name}`, width: 6, height: 6,
                                   patternUnits: "userSpaceOnUse"}, defs);
    el("path", {d, stroke: "#fff", "stroke-width": 1.2}, pattern);
  }
}

function accessSegment(parent, id, outcome, box) {
  const [, fill, pattern] = ACCESS.find(([name]) => name === outcome);
  const attrs = {...box, stroke: ACCESS_OUTLINE, "stroke-width": 0.75};
  const shape = el("rect", {...attrs, fill, class: "access", "data-outcome": outcome}, parent);
  if (pattern) el("rect", {...attrs, fill: `url(#${id}-${pattern})`}, parent);
  return shape;
}

function momentMark(parent, kind, cx, cy) {
  const attrs = {fill: "#fff", stroke: ACCESS_OUTLINE, "stroke-width": 1.5, class: "moment",
                 "data-kind": kind};
  if (kind === "read_again") return el("circle", {cx, cy, r: 5, ...attrs}, parent);
  return el("polygon", {points: `${cx},${cy - 6} ${cx + 6},${cy} ${cx},${cy + 6} ` +
                                `${cx - 6},${cy}`, ...attrs}, parent);
}

function accessBand(svg, access, id, x, top, height, plotWidth, end, formatTime) {
  const band = el("g", {class: "access-band"}, svg);
  // The band shows the window in its own colours: no window shading under it.
  el("rect", {x: MARGIN.left, y: top, width: plotWidth, height, fill: "#fff"}, band);
  // Across, a word a line: turned up the label would be longer than a band of few rows.
  const words = (access.label || "mailbox access").split(" ");
  words.forEach((word, i) => text(band, MARGIN.left - 6,
                                  top + height / 2 + 13 * (i - (words.length - 1) / 2) + 4,
                                  word, {"text-anchor": "end", "font-size": 11}));
  const when = (at) => formatTime(at).join(" ");
  access.stores.forEach((store, row) => {
    const rowTop = top + row * ACCESS_ROW;
    text(band, MARGIN.left + 2, rowTop + 11, store, {"font-size": 11, class: "access-store"});
    for (const span of access.spans.filter((s) => s.store === store)) {
      const from = x(Math.max(span.start, x.start));
      const to = x(Math.min(span.end, end));
      const total = ACCESS.reduce((sum, [name]) => sum + (span.counts[name] || 0), 0);
      if (!(to > from) || !total) continue;
      let below = 0;
      for (const [outcome, , , label] of ACCESS) {
        const n = span.counts[outcome] || 0;
        if (!n) continue;
        const box = {x: from, y: rowTop + 14 + (18 * below) / total, width: to - from,
                     height: (18 * n) / total};
        el("title", {}, accessSegment(band, id, outcome, box)).textContent =
          `${store}, ${when(span.start)} to ${when(span.end)}: ${n} of ${total} ${label}`;
        below += n;
      }
    }
  });
  for (const moment of access.moments || []) {
    const row = access.stores.indexOf(moment.store);
    if (row < 0 || moment.at < x.start || moment.at > end) continue;
    const [, , label] = MOMENTS.find(([kind]) => kind === moment.kind);
    const mark = momentMark(band, moment.kind, x(moment.at), top + row * ACCESS_ROW + 23);
    el("title", {}, mark).textContent = `${moment.store}: ${label}, ${when(moment.at)}`;
  }
}

function accessLegend(svg, access, id, y) {
  const add = legendRow(svg, y);
  const seen = new Set(access.spans.flatMap((s) => Object.keys(s.counts)
    .filter((k) => s.counts[k] > 0)));
  for (const [outcome, , , label] of ACCESS) {
    // The three states always, errors if there were any (as queue.png).
    if (outcome === "error" && !seen.has("error")) continue;
    add(label, (at) => accessSegment(svg, id, outcome, {x: at, y: y - 9, width: 12,
                                                        height: 10}));
  }
  for (const [kind, , label] of MOMENTS) add(label, (at) => momentMark(svg, kind, at + 6, y - 4));
}

function accessSummary(access, formatTime) {
  const when = (at) => formatTime(at).join(" ");
  return access.stores.map((store) => {
    const logins = ACCESS.map(([outcome, , , label]) => [label, access.spans
      .filter((s) => s.store === store)
      .reduce((sum, s) => sum + (s.counts[outcome] || 0) * (s.rounds || 1), 0)])
      .filter(([, n]) => n > 0);
    const moments = MOMENTS.map(([kind, , label]) => [label, (access.moments || []).find(
      (m) => m.store === store && m.kind === kind)]).filter(([, m]) => m);
    return `Mailbox access of ${store}: logins ` +
      (logins.map(([label, n]) => `${label} ${n}`).join(", ") || "none") +
      moments.map(([label, m]) => `; ${label} ${when(m.at)}`).join("") + ".";
  }).join(" ");
}

// --- the queue chart --------------------------------------------------------------------

function summary(data, stores, formatTime) {
  const points = data.points || [];
  if (!points.length) return "No queue samples yet.";
  const last = points.at(-1);
  const parts = stores.map((s) => `${s} ${(last.depth || {})[s] || 0}`).join(", ");
  const peak = points.reduce((best, p) => (total(p) > total(best) ? p : best), points[0]);
  const delivered = (data.delivered || []).reduce((sum, d) => sum + (d.count || 0), 0);
  const unit = data.unit || "messages";
  const access = data.access ? " " + accessSummary(data.access, formatTime) : "";
  return `Queue depth now ${total(last)} ${unit} (${parts}); peak ${total(peak)} at ` +
    `${formatTime(peak.at).join(" ")}; ${delivered} recipients delivered in the period ` +
    `shown.${access}`;
}

/** The time axis under the last panel: ticks, their labels, the base line. */
function timeAxis(svg, ticks, formatTime, x, bottom, plotWidth) {
  for (const at of ticks) {
    el("line", {x1: x(at), x2: x(at), y1: bottom, y2: bottom + 4, stroke: INK}, svg);
    formatTime(at).forEach((line, i) => text(svg, x(at), bottom + 16 + 13 * i, line,
                                             {"text-anchor": "middle", "font-size": 11}));
  }
  el("line", {x1: MARGIN.left, x2: MARGIN.left + plotWidth, y1: bottom, y2: bottom,
              stroke: INK}, svg);
}

/** The frame shared by both charts: the svg, its title and x scale. */
function frame(container, data, width, height, range) {
  const plotWidth = width - MARGIN.left - MARGIN.right;
  const [start, end] = range;
  const x = (at) => MARGIN.left + ((at - start) / (end - start)) * plotWidth;
  x.start = start;
  const [step, ticks] = timeTicks(start, end, plotWidth);
  const formatTime = timeFormat(data.zone, step, end - start);
  const id = container.id || "queue-chart";
  const svg = el("svg", {viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img",
                         "aria-labelledby": `${id}-title ${id}-desc`,
                         "font-family": "system-ui, sans-serif"});
  el("title", {id: `${id}-title`}, svg).textContent = data.title || "Queue depth";
  const desc = el("desc", {id: `${id}-desc`}, svg);
  text(svg, MARGIN.left, 16, data.title || "Queue depth", {"font-size": 14,
                                                            "font-weight": 600});
  return {svg, desc, x, end, ticks, formatTime, id, plotWidth};
}

/** Draw the chart into `container` (its content is replaced). */
export function renderQueueChart(container, data, options = {}) {
  const width = Math.max(480, options.width || container.clientWidth || 960);
  const replies = (data.replies || []).length > 0;
  const access = data.access && (data.access.stores || []).length ? data.access : null;
  const depthHeight = options.depthHeight || 220;
  const barHeight = options.barHeight || 110;
  const bandHeight = access ? ACCESS_ROW * access.stores.length + 4 : 0;
  const panels = [depthHeight].concat(access ? [bandHeight] : [], [barHeight],
                                      replies ? [barHeight] : []);
  const legends = access ? 2 : 1;
  const height = MARGIN.top + panels.reduce((a, b) => a + b, 0) + GAP * (panels.length - 1) +
    MARGIN.bottom + 22 * legends;
  const {svg, desc, x, end, ticks, formatTime, id, plotWidth} = frame(
    container, data, width, height, range(data));
  svg.classList.add("queue-chart");
  const stores = storesOf(data);
  const points = data.points || [];
  svg.dataset.points = String(points.length);
  svg.dataset.latestDepth = String(points.length ? total(points.at(-1)) : 0);
  desc.textContent = summary(data, stores, formatTime);

  const tops = [];
  let top = MARGIN.top;
  for (const h of panels) { tops.push(top); top += h + GAP; }
  const bottom = tops.at(-1) + panels.at(-1);
  const [barsAt, repliesAt] = access ? [2, 3] : [1, 2];

  windows(svg, data, x, MARGIN.top, bottom, end);
  const maxDepth = Math.max(0, ...points.map(total));
  const yDepth = yAxis(svg, tops[0], depthHeight, maxDepth,
                       data.depthLabel || `${data.unit || "messages"} queued`, plotWidth);
  const depth = el("g", {class: "depth"}, svg);
  stackedSteps(svg, depth, data, stores, x, yDepth, end);
  if (access) {
    patterns(svg, id);
    accessBand(svg, access, id, x, tops[1], bandHeight, plotWidth, end, formatTime);
  }

  const interval = data.interval || 60;
  const delivered = (data.delivered || []).map((d) => ({at: d.at, delivered: d.count}));
  const maxDelivered = Math.max(0, ...delivered.map((d) => d.delivered));
  const perLabel = interval >= 60 ? `${Math.round(interval / 60)} min` : `${interval} s`;
  const yDelivered = yAxis(svg, tops[barsAt], barHeight, maxDelivered,
                           `delivered / ${perLabel}`, plotWidth);
  bars(el("g", {class: "delivered"}, svg), delivered, [["delivered", DELIVERED]], x,
       yDelivered, interval);
  if (replies) {
    const rows = data.replies;
    const maxReplies = Math.max(0, ...rows.map((r) => REPLIES.reduce(
      (sum, [key]) => sum + (r[key] || 0), 0)));
    const yReplies = yAxis(svg, tops[repliesAt], barHeight, maxReplies,
                           `replies / ${perLabel}`, plotWidth);
    bars(el("g", {class: "replies"}, svg), rows, REPLIES, x, yReplies, interval);
  }
  events(svg, data, x, MARGIN.top, bottom, end);
  timeAxis(svg, ticks, formatTime, x, bottom, plotWidth);
  if (access) accessLegend(svg, access, id, height - 28);
  legend(svg, stores, replies, height - 6);
  container.replaceChildren(svg);
  return svg;
}

// --- arrivals replayed from a traffic profile -------------------------------------------

function profileStep(parent, rows, x, yOf, interval, attrs) {
  if (!rows.length) return;
  let d = `M${x(rows[0].at)},${yOf(rows[0].value)}`;
  rows.forEach((row, i) => {
    d += `H${x(row.at + interval)}`;
    if (i + 1 < rows.length) d += `V${yOf(rows[i + 1].value)}`;
  });
  el("path", {d, fill: "none", ...attrs}, parent);
}

function arrivalSummary(rows, formatTime) {
  const sum = (key) => rows.reduce((total, r) => total + (r[key] || 0), 0);
  const busiest = rows.reduce((best, r) => (r.accepted > best.accepted ? r : best), rows[0]);
  return `${sum("accepted")} messages replayed and acknowledged, for ` +
    `${Math.round(sum("expected") * 10) / 10} the profile puts in the period (times the ` +
    `scale); the busiest interval, from ${formatTime(busiest.at).join(" ")}, had ` +
    `${busiest.accepted} (the profile ${busiest.expected}).`;
}

/** Draw replayed arrivals against their profile into `container` (content replaced): per
 * interval, the messages acknowledged as bars and the profile's as a line; below, the
 * running totals of both. */
export function renderArrivalChart(container, data, options = {}) {
  const width = Math.max(480, options.width || container.clientWidth || 960);
  const rows = data.rows || [];
  const interval = data.interval || 60;
  const panels = [options.rateHeight || 200, options.totalHeight || 130];
  const height = MARGIN.top + panels[0] + GAP + panels[1] + MARGIN.bottom + 22;
  const start = data.start ?? (rows.length ? rows[0].at : 0);
  const last = rows.length ? rows.at(-1).at + interval : start + 60;
  const {svg, desc, x, end, ticks, formatTime, plotWidth} = frame(
    container, data, width, height, [start, Math.max(data.end ?? last, start + 60)]);
  svg.classList.add("arrival-chart");
  svg.dataset.rows = String(rows.length);
  desc.textContent = rows.length ? arrivalSummary(rows, formatTime) : "No arrivals.";
  const tops = [MARGIN.top, MARGIN.top + panels[0] + GAP];
  const perLabel = interval >= 60 ? `${Math.round(interval / 60)} min` : `${interval} s`;
  const max = Math.max(0, ...rows.map((r) => Math.max(r.accepted, r.expected)));
  const yRate = yAxis(svg, tops[0], panels[0], max, `messages / ${perLabel}`, plotWidth);
  bars(el("g", {class: "replayed", "fill-opacity": 0.35, stroke: REPLAYED}, svg),
       rows.map((r) => ({at: r.at + interval, accepted: r.accepted})),
       [["accepted", REPLAYED]], x, yRate, interval);
  const profile = el("g", {class: "profile"}, svg);
  profileStep(profile, rows.map((r) => ({at: r.at, value: r.expected})), x, yRate, interval,
              {stroke: PROFILE, "stroke-width": 2});
  let expected = 0;
  let accepted = 0;
  const totals = rows.map((r) => {
    expected += r.expected;
    accepted += r.accepted;
    return {at: r.at, expected, accepted};
  });
  const yTotal = yAxis(svg, tops[1], panels[1], Math.max(expected, accepted),
                       "messages so far", plotWidth);
  const running = el("g", {class: "running"}, svg);
  profileStep(running, totals.map((t) => ({at: t.at, value: t.expected})), x, yTotal,
              interval, {stroke: PROFILE, "stroke-width": 2, "stroke-dasharray": "6 4"});
  profileStep(running, totals.map((t) => ({at: t.at, value: t.accepted})), x, yTotal,
              interval, {stroke: REPLAYED, "stroke-width": 2});
  timeAxis(svg, ticks, formatTime, x, tops[1] + panels[1], plotWidth);
  const add = legendRow(svg, height - 6);
  const line = (colour, dash) => (at) => el("line", {x1: at, x2: at + 12, y1: height - 10,
                                                      y2: height - 10, stroke: colour,
                                                      "stroke-width": 2,
                                                      "stroke-dasharray": dash}, svg);
  add("replayed: acknowledged per interval", (at) => el("rect", {
    x: at, y: height - 15, width: 12, height: 10, fill: REPLAYED, "fill-opacity": 0.35,
    stroke: REPLAYED}, svg));
  add("profile, times the scale", line(PROFILE, "none"));
  add("replayed, running total", line(REPLAYED, "none"));
  add("profile, running total", line(PROFILE, "6 4"));
  container.replaceChildren(svg);
  return svg;
}

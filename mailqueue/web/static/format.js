// Numbers, durations and times as the dashboard shows them.

/** `3 h 05 min`, `4 min 10 s`, `12 s`. */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = s % 60;
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${String(m).padStart(2, "0")} min`;
  if (m) return `${m} min ${String(r).padStart(2, "0")} s`;
  return `${r} s`;
}

/** A clock reading for a countdown: `1:02:03` or `02:03`. */
export function countdown(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const mm = String(Math.floor((s % 3600) / 60)).padStart(2, "0");
  const ss = String(s % 60).padStart(2, "0");
  return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

export function count(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
}

/** A time of day (with the date when it is not today), in `zone` or the browser's. */
export function time(epoch, zone = undefined) {
  if (epoch === null || epoch === undefined) return "–";
  const when = new Date(epoch * 1000);
  const sameDay = new Date().toDateString() === when.toDateString();
  const options = {hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23"};
  if (!sameDay) Object.assign(options, {weekday: "short", day: "numeric", month: "short"});
  if (zone) Object.assign(options, {timeZone: zone, timeZoneName: "short"});
  return new Intl.DateTimeFormat("en-GB", options).format(when);
}

/** `12.5/min` from a per-second rate. */
export function perMinute(perSecond) {
  if (perSecond === null || perSecond === undefined || !Number.isFinite(perSecond)) return "–";
  const value = perSecond * 60;
  return `${value >= 10 ? Math.round(value) : value.toFixed(1)}/min`;
}

/** An element with text: h("td", {class: "num"}, "12"). Children: nodes or strings. */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function badge(state) {
  return h("span", {class: `badge state-${state}`}, state);
}

/**
 * Re-draw `container` with `draw()` without losing the keyboard's place: the focused
 * element's `data-focus` key is looked up again in the new content and focused.
 */
export function redraw(container, draw) {
  const focused = document.activeElement;
  const key = focused && container.contains(focused) ? focused.dataset.focus : null;
  draw();
  if (key) {
    const again = [...container.querySelectorAll("[data-focus]")]
      .find((node) => node.dataset.focus === key);
    if (again) again.focus();
  }
}

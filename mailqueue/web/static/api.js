// The page's side of the JSON API under /api/v1: the token, requests, the event stream.

const BASE = "/api/v1";
const TOKEN_KEY = "mailqueue.token";

/** A failed request: `status` and the problem document's one-line `detail`. */
export class ApiError extends Error {
  constructor(status, detail, problem = null) {
    super(detail);
    this.status = status;
    this.problem = problem;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function headers(extra = {}) {
  const given = token();
  return given ? {...extra, Authorization: `Bearer ${given}`} : extra;
}

async function problem(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const detail = (body && (body.detail || body.title || body.error)) ||
    `${response.status} ${response.statusText}`;
  return new ApiError(response.status, detail, body);
}

/** GET or POST `path` (under /api/v1) and return its JSON; an ApiError when it fails. */
export async function request(path, {method = "GET", body, query} = {}) {
  let url = BASE + path;
  if (query) {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) {
      if (value !== undefined && value !== null && value !== "") params.append(key, value);
    }
    const text = params.toString();
    if (text) url += `?${text}`;
  }
  const init = {method, headers: headers({Accept: "application/json"})};
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(url, init);
  if (!response.ok) throw await problem(response);
  const type = response.headers.get("Content-Type") || "";
  return type.includes("json") ? response.json() : response.text();
}

/** Whether the endpoint takes the token we hold (or needs none): true, or false on a 401. */
export async function checkAuth() {
  try {
    await request("/auth");
    return true;
  } catch (error) {
    if (error.status === 401) return false;
    throw error;
  }
}

/**
 * Listen to the event stream: `handlers` maps event names to functions of the parsed data;
 * `onState` is told "live" or "connecting". EventSource reconnects by itself; `onOpen`
 * runs on every (re)connect, so the page can re-read what it may have missed.
 */
export function listen(handlers, {onState = () => {}, onOpen = () => {}} = {}) {
  // Only the kinds the page handles: under load, one event per message would be a flood.
  const query = new URLSearchParams({types: Object.keys(handlers).join(",")});
  const given = token();
  if (given) query.set("token", given);
  const url = `${BASE}/events?${query}`;
  const source = new EventSource(url);
  source.onopen = () => { onState("live"); onOpen(); };
  source.onerror = () => onState(source.readyState === EventSource.CLOSED ? "lost" :
    "connecting");
  for (const [name, handle] of Object.entries(handlers)) {
    source.addEventListener(name, (event) => {
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;  // not ours to show: a malformed event is skipped
      }
      // A failed re-read is not fatal: the next event or the periodic refresh reads again.
      Promise.resolve(handle(data)).catch(() => {});
    });
  }
  return source;
}

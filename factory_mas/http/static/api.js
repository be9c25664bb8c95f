// HTTP helpers: every request carries the API key (if any) as a Bearer header, never
// in the URL; a 401 asks the shell to show the key dialog.

const KEY_NAME = "factory_mas.key";
let authNeeded = () => {};

export const getKey = () => sessionStorage.getItem(KEY_NAME) || "";

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY_NAME, key);
  else sessionStorage.removeItem(KEY_NAME);
}

/** Register what to do when the server says 401 (the shell opens the key dialog). */
export function onAuthNeeded(fn) {
  authNeeded = fn;
}

export function requestAuth() {
  authNeeded();
}

export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/**
 * Fetch JSON. `accept` lists non-2xx statuses whose body is still wanted (e.g. /health
 * answers 503 with its components when degraded).
 */
export async function api(path, { method = "GET", body, accept = [] } = {}) {
  const headers = { Accept: "application/json" };
  const key = getKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (err) {
    throw new HttpError(0, `network error: ${err.message}`);
  }
  if (res.status === 401) authNeeded();
  if (!res.ok && !accept.includes(res.status)) {
    throw new HttpError(res.status, await errorText(res));
  }
  return res.json();
}

// The API answers errors as {"error", "detail"}; fall back to the status line.
async function errorText(res) {
  try {
    const body = await res.json();
    return `${res.status} ${body.error || ""}: ${body.detail || res.statusText}`;
  } catch {
    return `${res.status} ${res.statusText}`;
  }
}

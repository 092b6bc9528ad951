// The console's only way to the server: the same /api/v1 routes as any client.
// The browser session is the HttpOnly cookie polegw_session; writes carry the
// polegw_csrf cookie's value as X-CSRF-Token (double submit, bound to the session).

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : describe(detail));
    this.status = status;
    this.detail = detail;
  }
}

function describe(detail) {
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
  }
  if (detail && typeof detail === "object" && detail.msg) return detail.msg;
  return JSON.stringify(detail);
}

function cookie(name) {
  for (const part of document.cookie.split(";")) {
    const [k, ...v] = part.trim().split("=");
    if (k === name) return decodeURIComponent(v.join("="));
  }
  return null;
}

let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

export async function request(method, path, { body, query, signal, raw } = {}) {
  let url = path.startsWith("/") ? path : `/api/v1/${path}`;
  if (query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v !== undefined && v !== null && v !== "") q.append(k, String(v));
    }
    const s = q.toString();
    if (s) url += (url.includes("?") ? "&" : "?") + s;
  }
  const headers = { Accept: "application/json" };
  if (method !== "GET" && method !== "HEAD") {
    const csrf = cookie("polegw_csrf");
    if (csrf) headers["X-CSRF-Token"] = csrf;
  }
  let payload;
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const res = await fetch(url, { method, headers, body: payload, credentials: "same-origin", signal });
  if (res.status === 401 && !path.includes("auth/session")) {
    onUnauthorized();
  }
  if (!res.ok) {
    let detail = res.statusText;
    try {
      detail = (await res.json()).detail ?? detail;
    } catch {
      /* not JSON: keep the status text */
    }
    throw new ApiError(res.status, detail);
  }
  if (raw) return res;
  if (res.status === 204) return null;
  return res.json();
}

export const get = (path, query, opts = {}) => request("GET", path, { ...opts, query });
export const post = (path, body) => request("POST", path, { body });
export const put = (path, body) => request("PUT", path, { body });
export const del = (path) => request("DELETE", path);

// Every item of a paginated list (keyset paging: `next` goes back as `after`).
export async function all(path, query = {}, { max = 20000 } = {}) {
  const items = [];
  let after;
  for (;;) {
    const page = await get(path, { ...query, limit: query.limit ?? 1000, after });
    items.push(...page.items);
    if (!page.next || items.length >= max) return items;
    after = page.next;
  }
}

// The API client: every request carries the operator's token (typed into the page, kept in
// sessionStorage for this tab only, never part of the build) as `Authorization: Bearer`.
// A 401 raises Unauthorized, which the page turns into the token prompt.

export const TOKEN_KEY = "kq.token";

export class Unauthorized extends Error {
  constructor() {
    super("unauthorized");
  }
}

export class ApiError extends Error {
  status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

export function getToken(): string | null {
  if (typeof window === "undefined") return null;
  return window.sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(t: string | null): void {
  if (t) window.sessionStorage.setItem(TOKEN_KEY, t);
  else window.sessionStorage.removeItem(TOKEN_KEY);
  window.dispatchEvent(new Event("kq-token"));
}

async function errorText(r: Response): Promise<string> {
  try {
    const j = await r.json();
    const d = j?.detail ?? j?.error ?? j;
    return typeof d === "string" ? d : JSON.stringify(d);
  } catch {
    return `${r.status} ${r.statusText}`;
  }
}

export async function api<T = unknown>(path: string, init?: { method?: string; body?: unknown }): Promise<T> {
  const token = getToken();
  if (!token) throw new Unauthorized();
  const r = await fetch(path, {
    method: init?.method ?? "GET",
    headers: {
      Authorization: `Bearer ${token}`,
      ...(init?.body !== undefined ? { "Content-Type": "application/json" } : {}),
    },
    body: init?.body !== undefined ? JSON.stringify(init.body) : undefined,
    cache: "no-store",
  });
  if (r.status === 401 || r.status === 403) throw new Unauthorized();
  if (!r.ok) throw new ApiError(r.status, await errorText(r));
  return (await r.json()) as T;
}

// ---- formatting: times in UTC, returns and drawdowns as percentages ------------------------

export function utc(ts: number | string | null | undefined): string {
  if (ts === null || ts === undefined || ts === "") return "—";
  if (typeof ts === "string" && !/^\d+(\.\d+)?$/.test(ts)) {
    // ISO 8601 (the API's `*_utc` and `recorded_utc`), or a label already in UTC
    const d = new Date(/[zZ]|[+-]\d\d:\d\d$/.test(ts) ? ts : `${ts}Z`);
    return Number.isNaN(d.getTime()) ? ts : d.toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }
  const n = Number(ts);
  // hour indices (hours since the epoch) or unix seconds
  const sec = n < 1e7 ? n * 3600 : n > 1e12 ? n / 1000 : n;
  return new Date(sec * 1000).toISOString().slice(0, 16).replace("T", " ") + " UTC";
}

export function num(x: unknown): number | null {
  if (x === null || x === undefined || x === "") return null;
  const n = typeof x === "number" ? x : Number(x);
  return Number.isFinite(n) ? n : null;
}

export function money(x: unknown, digits = 2): string {
  const n = num(x);
  if (n === null) return "—";
  return n.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

export function pct(frac: unknown, digits = 2): string {
  const n = num(frac);
  if (n === null) return "—";
  return `${(n * 100).toFixed(digits)}%`;
}

/** A list out of an API answer: the answer itself, or its first array-valued field among `keys`. */
export function rows<T = Record<string, unknown>>(j: unknown, ...keys: string[]): T[] {
  if (Array.isArray(j)) return j as T[];
  if (j && typeof j === "object") {
    const o = j as Record<string, unknown>;
    for (const k of [...keys, "items", "rows", "data", "points"]) if (Array.isArray(o[k])) return o[k] as T[];
  }
  return [];
}

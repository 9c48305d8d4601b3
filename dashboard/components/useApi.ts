"use client";
import { useCallback, useEffect, useRef, useState } from "react";
import { api, Unauthorized } from "@/lib/api";

/** How often every page re-reads the API (ms). */
export const REFRESH_MS = 15_000;

export type ApiState<T> = {
  data: T | null;
  error: string | null;
  loading: boolean;
  updated: Date | null;
  reload: () => void;
};

/** GET `path` now, then every `refreshMs` (0: once); a 401 raises the token prompt. `path` null: nothing. */
export function useApi<T = unknown>(path: string | null, refreshMs = REFRESH_MS): ApiState<T> {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [loading, setLoading] = useState<boolean>(path !== null);
  const [updated, setUpdated] = useState<Date | null>(null);
  const [tick, setTick] = useState(0);
  const live = useRef(true);

  const reload = useCallback(() => setTick((t) => t + 1), []);

  useEffect(() => {
    const onToken = () => setTick((t) => t + 1);
    window.addEventListener("kq-token", onToken);
    return () => window.removeEventListener("kq-token", onToken);
  }, []);

  useEffect(() => {
    live.current = true;
    if (path === null) {
      setData(null);
      setLoading(false);
      return;
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const load = async () => {
      try {
        const j = await api<T>(path);
        if (!live.current) return;
        setData(j);
        setError(null);
        setUpdated(new Date());
      } catch (e) {
        if (!live.current) return;
        if (e instanceof Unauthorized) {
          window.dispatchEvent(new Event("kq-401"));
          return; // no timer: the prompt's new token restarts the cycle
        }
        setError(e instanceof Error ? e.message : String(e));
      } finally {
        if (live.current) setLoading(false);
      }
      if (live.current && refreshMs > 0) timer = setTimeout(load, refreshMs);
    };
    setLoading(true);
    load();
    return () => {
      live.current = false;
      if (timer) clearTimeout(timer);
    };
  }, [path, refreshMs, tick]);

  return { data, error, loading, updated, reload };
}

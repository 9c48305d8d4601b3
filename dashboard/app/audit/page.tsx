"use client";
import { useEffect, useState } from "react";
import { useApi } from "@/components/useApi";
import { api, ApiError, Unauthorized, utc } from "@/lib/api";

type Status = { hour: number; hour_utc: string; status: string; ok: boolean; replayed: boolean; first_diff: string | null };

export default function AuditPage() {
  const hours = useApi<{ hours: number[]; total: number }>("/api/replay/hours?limit=5000");
  const hs = hours.data?.hours ?? [];
  const [hour, setHour] = useState<number | null>(null);
  useEffect(() => {
    if (hour === null && hs.length) {
      const q = new URLSearchParams(window.location.search).get("hour");
      setHour(q !== null && Number.isFinite(Number(q)) ? Number(q) : hs[hs.length - 1]);
    }
  }, [hs, hour]);
  const man = useApi<Record<string, unknown>>(hour === null ? null : `/api/replay/${hour}`, 0);
  const [check, setCheck] = useState<{ busy: boolean; res?: Status; err?: string }>({ busy: false });

  const choose = (h: number) => {
    setHour(h);
    setCheck({ busy: false });
    window.history.replaceState(null, "", `?hour=${h}`);
  };
  const replay = async () => {
    if (hour === null) return;
    setCheck({ busy: true });
    try {
      setCheck({ busy: false, res: await api<Status>(`/api/replay/${hour}/status`) });
    } catch (e) {
      if (e instanceof Unauthorized) window.dispatchEvent(new Event("kq-401"));
      setCheck({ busy: false, err: e instanceof ApiError ? e.message : String(e) });
    }
  };

  return (
    <>
      <h1>Audit</h1>
      {hours.error ? <p className="err">{hours.error}</p> : null}
      <section className="card">
        <h2>Hour</h2>
        {hs.length ? (
          <div className="row">
            <select
              aria-label="hour"
              value={hour ?? ""}
              onChange={(e) => choose(Number(e.target.value))}
              data-testid="hour-select"
            >
              {hs
                .slice()
                .reverse()
                .map((h) => (
                  <option key={h} value={h}>
                    {utc(h)}
                  </option>
                ))}
            </select>
            <button onClick={replay} disabled={check.busy || hour === null} data-testid="replay">
              {check.busy ? "Replaying…" : "Replay check"}
            </button>
            <span className="muted">{hours.data?.total ?? hs.length} completed hours in the ledger</span>
          </div>
        ) : (
          <p className="empty">{hours.loading ? "Loading…" : "The ledger holds no completed hour yet."}</p>
        )}
        {check.res ? (
          <p data-testid="replay-result" className={check.res.ok ? "" : "err"}>
            <span className={`badge ${check.res.ok ? "ok" : "bad"}`}>{check.res.status}</span>{" "}
            {check.res.first_diff ? `first difference: ${check.res.first_diff}` : `${utc(check.res.hour_utc)} replays from the ledger alone.`}
          </p>
        ) : null}
        {check.err ? <p className="err">{check.err}</p> : null}
      </section>
      <section className="card">
        <h2>Manifest {hour !== null ? utc(hour) : ""}</h2>
        {man.error ? <p className="err">{man.error}</p> : null}
        {man.data ? <pre data-testid="manifest">{JSON.stringify(man.data, null, 2)}</pre> : <p className="empty">No hour chosen.</p>}
      </section>
    </>
  );
}

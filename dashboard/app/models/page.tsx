"use client";
import { useEffect, useMemo, useState } from "react";
import Chart from "@/components/Chart";
import Table from "@/components/Table";
import { useApi } from "@/components/useApi";
import { api, num, utc } from "@/lib/api";

type Pred = { pair: string; model_id: string | null; values: Record<string, string> };
type Preds = {
  hour: number | null;
  hour_utc: string | null;
  model_id: string | null;
  manifest_sha256: string | null;
  regime: string | null;
  profile: string | null;
  predictions: Pred[];
};

const HISTORY = 48; // hours of per-model history read once per page visit

export default function ModelsPage() {
  const now = useApi<Preds>("/api/predictions");
  const hours = useApi<{ hours: number[] }>("/api/replay/hours?limit=" + HISTORY, 0);
  const shadow = useApi<Record<string, unknown>>("/api/shadow", 60_000);
  const [hist, setHist] = useState<Preds[]>([]);

  useEffect(() => {
    const hs = hours.data?.hours ?? [];
    if (!hs.length) return;
    let gone = false;
    (async () => {
      const out: Preds[] = [];
      for (const h of hs.slice(-HISTORY)) {
        try {
          out.push(await api<Preds>(`/api/predictions?hour=${h}`));
        } catch {
          /* an hour without predictions: skipped */
        }
      }
      if (!gone) setHist(out);
    })();
    return () => {
      gone = true;
    };
  }, [hours.data]);

  const cur = now.data;
  // this hour's outputs; when it has none (e.g. its data step failed), the newest hour that has
  const fallback = cur && !cur.predictions.length ? [...hist].reverse().find((h) => h.predictions.length) : undefined;
  const p = fallback ?? cur;
  const predRows = (p?.predictions ?? []).map((r) => ({ pair: r.pair, model_id: r.model_id, ...r.values }));
  const valueKeys = Array.from(new Set((p?.predictions ?? []).flatMap((r) => Object.keys(r.values ?? {}))));

  // per model x pair: one output (p_up when there is one) through the history
  const chart = useMemo(() => {
    const key = valueKeys.includes("p_up") ? "p_up" : valueKeys[0];
    if (!key || !hist.length) return null;
    const x = hist.map((h) => Number(h.hour) * 3600);
    const names = Array.from(new Set(hist.flatMap((h) => h.predictions.map((r) => `${r.model_id ?? "?"} ${r.pair}`))));
    const series = names.map((n) => ({
      label: n,
      values: hist.map((h) => {
        const r = h.predictions.find((q) => `${q.model_id ?? "?"} ${q.pair}` === n);
        return r ? num(r.values?.[key]) : null;
      }),
    }));
    return { key, x, series };
  }, [hist, valueKeys.join(",")]); // eslint-disable-line react-hooks/exhaustive-deps

  return (
    <>
      <h1>Models</h1>
      {now.error ? <p className="err">{now.error}</p> : null}
      <section className="card">
        <h2>This hour: {cur ? utc(cur.hour_utc) : "—"}</h2>
        {fallback ? (
          <p className="muted" data-testid="predictions-fallback">
            No prediction ledgered at {utc(cur?.hour_utc)}; the newest outputs, {utc(fallback.hour_utc)}:
          </p>
        ) : null}
        {p ? (
          <p className="muted">
            model <strong>{p.model_id ?? "—"}</strong> · manifest <code>{p.manifest_sha256?.slice(0, 16) ?? "—"}</code> · regime{" "}
            {p.regime ?? "not ledgered"} · profile {p.profile ?? "not ledgered"}
          </p>
        ) : null}
        <Table
          rows={predRows}
          testid="predictions"
          empty="No prediction ledgered for this hour."
          cols={[["pair", "pair"], ["model_id", "model"], ...valueKeys.map((k) => [k, k] as [string, string])]}
        />
      </section>
      <section className="card">
        <h2>History (last {HISTORY} hours)</h2>
        {chart ? (
          <Chart x={chart.x} series={chart.series} title={chart.key} />
        ) : (
          <p className="empty">{hist.length ? "No numeric output." : "No history yet."}</p>
        )}
      </section>
      <section className="card">
        <h2>Shadow model</h2>
        {shadow.data ? <pre>{JSON.stringify(shadow.data, null, 2)}</pre> : <p className="empty">{shadow.error ?? "No shadow model configured."}</p>}
      </section>
    </>
  );
}

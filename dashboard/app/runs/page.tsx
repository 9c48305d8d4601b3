"use client";
import { useEffect, useMemo, useState } from "react";
import Chart from "@/components/Chart";
import Table from "@/components/Table";
import { useApi } from "@/components/useApi";
import { money, num, pct, utc } from "@/lib/api";

type RunSummary = { id: string; kind: string; modified_utc: string; headline: Record<string, unknown> };
type Runs = { runs_dir: string; runs: RunSummary[] };
type Point = { ts: number; equity: number | null; drawdown: number | null };
type Detail = {
  id: string;
  kind: string;
  modified_utc: string;
  metrics: Record<string, unknown>;
  equity: Point[];
  /** buy-and-hold of the same pairs over the same hours (benchmark.json); null when not written */
  benchmark: {
    definition: string;
    metrics: { total_return: number | null; annual_return: number | null; max_drawdown: number | null; sharpe: number | null };
    curve: Point[];
  } | null;
  table: Record<string, unknown>[];
  files: string[];
};

/** The per-fold rows of a walk-forward's metrics: `models` (one row per model, horizon and fold:
 * auc, log_loss, brier, hit_rate...), or a `folds` / `per_fold` list when a document has one. */
function folds(m: Record<string, unknown> | undefined): Record<string, unknown>[] {
  if (!m) return [];
  for (const k of ["models", "folds", "per_fold", "fold_metrics"]) {
    const v = m[k];
    if (Array.isArray(v) && v.length && typeof v[0] === "object" && v[0] !== null && "fold" in v[0])
      return v as Record<string, unknown>[];
  }
  return [];
}

const FOLD_METRICS = ["auc", "log_loss", "brier", "hit_rate"];

function headline(h: Record<string, unknown>): string {
  return Object.entries(h)
    .slice(0, 4)
    .map(([k, v]) => {
      const n = num(v);
      const pctKey = /(return|drawdown|dd|cagr|vol)/i.test(k);
      const moneyKey = /(equity|fees|cash)/i.test(k);
      const txt = n === null ? String(v) : pctKey ? pct(n) : moneyKey ? money(n) : n.toFixed(3);
      return `${k.replace(/_/g, " ")} ${txt}`;
    })
    .join(" · ");
}

/** Strategy against buy-and-hold, the rows of the headline table: [label, metrics key, percent?]. */
const VERSUS: [string, string, boolean][] = [
  ["total return", "total_return", true],
  ["CAGR", "annual_return", true],
  ["max drawdown", "max_drawdown", true],
  ["Sharpe (hourly, annualised)", "sharpe", false],
];

function cell(v: unknown, isPct: boolean): string {
  const n = num(v);
  return n === null ? "—" : isPct ? pct(n) : n.toFixed(2);
}

/** A buy-and-hold curve on the strategy's hours (the files share them; a missing hour is a gap). */
function onHours(x: number[], curve: Point[] | undefined, key: "equity" | "drawdown"): (number | null)[] {
  const at = new Map((curve ?? []).map((p) => [p.ts, p[key]]));
  return x.map((t) => at.get(t) ?? null);
}

export default function RunsPage() {
  const runs = useApi<Runs>("/api/runs", 60_000);
  const [id, setId] = useState<string | null>(null);
  useEffect(() => {
    setId(new URLSearchParams(window.location.search).get("id"));
  }, []);
  const pick = (rid: string) => {
    setId(rid);
    window.history.replaceState(null, "", `?id=${encodeURIComponent(rid)}`);
  };
  const [metric, setMetric] = useState("auc");
  const det = useApi<Detail>(id ? `/api/runs/${encodeURIComponent(id)}` : null, 0);
  const d = det.data;

  const charts = useMemo(() => {
    const pts = d?.equity ?? [];
    const x = pts.map((p) => p.ts);
    const f = folds(d?.metrics);
    // one line per model (and horizon) of the chosen metric, fold by fold
    // (rows whose fold is "all", the pooled out-of-sample figure, stay in the table only)
    const fx = Array.from(new Set(f.map((r) => Number(r.fold)).filter(Number.isInteger))).sort((a, b) => a - b);
    const name = (r: Record<string, unknown>) =>
      [r.model, r.horizon !== undefined ? `h${String(r.horizon)}` : null].filter((v) => v !== null && v !== undefined).join(" ") || "run";
    const names = Array.from(new Set(f.map(name)));
    const fseries = names.map((n) => ({
      label: n,
      values: fx.map((k) => {
        const r = f.find((q) => name(q) === n && Number(q.fold) === k);
        return r ? num(r[metric]) : null;
      }),
    }));
    const bh = d?.benchmark?.curve;
    const grey = "#9ca3af";
    const neg = (v: number | null) => (v === null ? null : -Math.abs(v));
    return {
      x,
      equity: [
        { label: "strategy", values: pts.map((p) => p.equity), color: "#2563eb" },
        ...(bh ? [{ label: "buy-and-hold", values: onHours(x, bh, "equity"), color: grey }] : []),
      ],
      dd: [
        { label: "strategy", values: pts.map((p) => neg(p.drawdown)), color: "#dc2626" },
        ...(bh ? [{ label: "buy-and-hold", values: onHours(x, bh, "drawdown").map(neg), color: grey }] : []),
      ],
      f,
      fx,
      fseries,
    };
  }, [d, metric]);

  const list = runs.data?.runs ?? [];
  return (
    <>
      <h1>Research runs</h1>
      {runs.error ? <p className="err">{runs.error}</p> : null}
      <section className="card">
        <h2>Runs {runs.data ? <span className="muted">in {runs.data.runs_dir}</span> : null}</h2>
        {list.length ? (
          <div className="scroll">
            <table data-testid="runs">
              <thead>
                <tr>
                  <th>run</th>
                  <th>kind</th>
                  <th>modified</th>
                  <th>headline</th>
                </tr>
              </thead>
              <tbody>
                {list.map((r) => (
                  <tr key={r.id} className={`pick ${r.id === id ? "sel" : ""}`} onClick={() => pick(r.id)}>
                    <td>{r.id}</td>
                    <td>{r.kind}</td>
                    <td>{utc(r.modified_utc)}</td>
                    <td>{headline(r.headline ?? {})}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ) : (
          <p className="empty">{runs.loading ? "Loading…" : "No research run found."}</p>
        )}
      </section>
      {id ? (
        <section className="card" data-testid="run-detail">
          <h2>
            {id} {d ? <span className="muted">({d.kind})</span> : null}
          </h2>
          {det.error ? <p className="err">{det.error}</p> : null}
          {d ? (
            <>
              {d.benchmark || d.kind === "backtest" ? (
                <>
                  <div className="scroll">
                  <table data-testid="run-versus">
                    <thead>
                      <tr>
                        <th></th>
                        <th>strategy</th>
                        <th>buy-and-hold</th>
                      </tr>
                    </thead>
                    <tbody>
                      {VERSUS.map(([label, k, isPct]) => (
                        <tr key={k} data-key={k}>
                          <td>{label}</td>
                          <td data-col="strategy">
                            {cell((d.kind === "walkforward" ? (d.metrics.strategy as Record<string, unknown> | undefined) ?? {} : d.metrics)[k], isPct)}
                          </td>
                          <td data-col="buy-and-hold">{cell(d.benchmark?.metrics[k as keyof NonNullable<Detail["benchmark"]>["metrics"]], isPct)}</td>
                        </tr>
                      ))}
                    </tbody>
                  </table>
                  </div>
                  <p className="muted">{d.benchmark ? d.benchmark.definition : "Buy-and-hold: not written with this run."}</p>
                </>
              ) : null}
              <div className="two">
                <Chart x={charts.x} series={charts.equity} unit="money" title="Equity" />
                <Chart x={charts.x} series={charts.dd} unit="pct" title="Drawdown" />
              </div>
              {charts.f.length ? (
                <>
                  <div className="row">
                    <h2>Per fold</h2>
                    <select aria-label="fold metric" value={metric} onChange={(e) => setMetric(e.target.value)}>
                      {FOLD_METRICS.map((k) => (
                        <option key={k}>{k}</option>
                      ))}
                    </select>
                  </div>
                  <Chart x={charts.fx} series={charts.fseries} time={false} title={`${metric} by fold (out of sample)`} />
                  <details>
                    <summary>Per-fold table</summary>
                    <Table rows={charts.f} />
                  </details>
                </>
              ) : null}
              {d.table.length ? (
                <>
                  <h2>{d.kind === "study" ? "Trials" : "Results"}</h2>
                  <Table rows={d.table} testid="run-table" />
                </>
              ) : null}
              <details>
                <summary>Metrics document</summary>
                <pre>{JSON.stringify(d.metrics, null, 2)}</pre>
              </details>
            </>
          ) : null}
        </section>
      ) : null}
    </>
  );
}

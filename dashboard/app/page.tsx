"use client";
import { useMemo } from "react";
import Chart from "@/components/Chart";
import Gauge from "@/components/Gauge";
import Operator from "@/components/Operator";
import Table from "@/components/Table";
import { useApi } from "@/components/useApi";
import { money, num, pct, rows, utc } from "@/lib/api";

// docs/RISK_RULES.md: drawdown tiers R4-R6 and the exposure cap R3 (the defaults)
const TIERS = [
  { at: 0.1, label: "10% tier 1" },
  { at: 0.15, label: "15% tier 2" },
  { at: 0.2, label: "20% halt" },
];
const EXPOSURE_CAP = 0.2;

type Overview = Record<string, unknown> & {
  portfolio: boolean;
  state: string | null;
  kill_switch: boolean;
  halted: boolean;
  paused: boolean;
  pending_actions: Record<string, unknown>[];
};

function stateClass(state: unknown): string {
  if (state === "ACTIVE") return "ok";
  if (state === "HALTED" || state === "KILL_SWITCH") return "bad";
  return state ? "warn" : "";
}

function Stat({ k, v, s, testid }: { k: string; v: React.ReactNode; s?: React.ReactNode; testid?: string }) {
  return (
    <div className="stat">
      <div className="k">{k}</div>
      <div className="v" data-testid={testid}>
        {v}
      </div>
      {s ? <div className="s">{s}</div> : null}
    </div>
  );
}

export default function OverviewPage() {
  const ov = useApi<Overview>("/api/overview");
  const eq = useApi<unknown>("/api/equity?limit=5000");
  const pos = useApi<unknown>("/api/positions");
  const act = useApi<unknown>("/api/operator/actions");

  const curve = useMemo(() => {
    const pts = rows<Record<string, unknown>>(eq.data, "points");
    return {
      x: pts.map((p) => Number(p.hour) * 3600),
      equity: [{ label: "equity", values: pts.map((p) => num(p.equity)) }],
      dd: [{ label: "drawdown", values: pts.map((p) => (num(p.drawdown) === null ? null : -num(p.drawdown)!)), color: "#dc2626" }],
    };
  }, [eq.data]);

  const o = ov.data;
  const reload = () => {
    ov.reload();
    act.reload();
  };
  const suggest = o?.halted ? "reset-halt" : o?.paused ? "resume" : "reactivate";
  const posRows = rows(pos.data, "positions");

  return (
    <>
      <h1>Overview</h1>
      {ov.error ? <p className="err">{ov.error}</p> : null}
      {!o ? (
        <p className="empty">{ov.loading ? "Loading…" : "No data."}</p>
      ) : !o.portfolio ? (
        <p className="empty" data-testid="no-portfolio">
          The ledger holds no completed hour yet ({String(o.ledger ?? "")}).
        </p>
      ) : (
        <>
          <div className="grid">
            <Stat k="Value" v={money(o.equity)} s={`cash ${money(o.cash)}`} testid="equity" />
            <Stat
              k="Risk state"
              v={<span className={`badge ${stateClass(o.state)}`}>{String(o.state)}</span>}
              s={
                o.kill_switch
                  ? `kill switch: ${String(o.kill_reason)}`
                  : o.halted
                    ? "drawdown halt latched"
                    : `tier ${String(o.tier)}${o.paused ? " · paused" : ""}`
              }
              testid="state"
            />
            <Stat k="Peak" v={money(o.peak)} s={`init ${money(o.init_cash)}`} />
            <Stat k="Positions" v={String(o.n_positions ?? posRows.length)} s={`${String(o.fills ?? 0)} fills, fees ${money(o.fees)}`} />
            <Stat k="Last hour" v={<span style={{ fontSize: "0.95rem" }}>{utc(o.last_completed_utc as string)}</span>} s={`model ${String(o.model_id ?? "—")}`} />
          </div>
          <div className="two">
            <section className="card">
              <h2>Drawdown and exposure</h2>
              <Gauge label="Drawdown from peak" value={o.drawdown} marks={TIERS} max={0.25} testid="drawdown" />
              <Gauge
                label={`Exposure (${money(o.exposure)})`}
                value={o.exposure_frac}
                marks={[{ at: EXPOSURE_CAP, label: "20% cap" }]}
                max={0.25}
                testid="exposure"
              />
              {Array.isArray(o.latch_next) && o.latch_next.length ? (
                <p className="err">Asked for the next bar: {(o.latch_next as string[]).join("; ")}</p>
              ) : null}
            </section>
            <section className="card">
              <h2>Equity</h2>
              <Chart x={curve.x} series={curve.equity} height={200} />
              <Chart x={curve.x} series={curve.dd} height={110} unit="pct" title="Drawdown" />
            </section>
          </div>
        </>
      )}
      <section className="card">
        <h2>Positions</h2>
        <Table
          rows={posRows}
          testid="positions"
          empty="No open position."
          cols={[
            ["pair", "pair"],
            ["qty", "qty"],
            ["entry_price", "entry"],
            ["entry_hour_utc", "entered"],
            ["mark", "mark"],
            ["value", "value"],
            ["unrealised_pnl", "unreal. PnL"],
            ["unrealised_return", "return"],
            ["stop", "stop"],
            ["take_profit", "take-profit"],
          ]}
        />
      </section>
      <div className="two">
        <section className="card">
          <h2>Operator action</h2>
          <Operator key={suggest} suggest={suggest} onDone={reload} />
          {o && o.pending_actions?.length ? (
            <p className="muted">Pending: {o.pending_actions.map((a) => `${a.action} (seq ${a.seq})`).join(", ")}</p>
          ) : null}
        </section>
        <section className="card">
          <h2>Operator history</h2>
          <Table
            rows={rows(act.data, "actions").slice().reverse()}
            testid="actions"
            empty="No operator action yet."
            cols={[
              ["seq", "seq"],
              ["action", "action"],
              ["actor", "by"],
              ["reason", "reason"],
              ["outcome", "outcome"],
              ["recorded_utc", "recorded"],
            ]}
          />
        </section>
      </div>
      <p className="muted">
        {ov.updated ? `Updated ${ov.updated.toISOString().slice(11, 19)} UTC; refreshes every 15 s.` : null}
        {o ? ` Pct: drawdown ${pct(o.drawdown)}, exposure ${pct(o.exposure_frac)}.` : null}
      </p>
    </>
  );
}

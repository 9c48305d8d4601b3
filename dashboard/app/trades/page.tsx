"use client";
import Table from "@/components/Table";
import { useApi } from "@/components/useApi";
import { money, rows } from "@/lib/api";

type Fills = { totals?: Record<string, unknown>; fills?: Record<string, unknown>[]; total?: number };

export default function TradesPage() {
  const fills = useApi<Fills>("/api/fills?limit=500");
  const orders = useApi<unknown>("/api/orders?limit=500");
  const alerts = useApi<unknown>("/api/alerts?limit=200");
  const t = fills.data?.totals;
  return (
    <>
      <h1>Trades</h1>
      {fills.error ? <p className="err">{fills.error}</p> : null}
      {t ? (
        <div className="grid">
          <div className="stat">
            <div className="k">Fills</div>
            <div className="v">{String(t.count)}</div>
            <div className="s">
              {String(t.buys)} buys, {String(t.sells)} sells
            </div>
          </div>
          <div className="stat">
            <div className="k">Fees</div>
            <div className="v">{money(t.fees)}</div>
          </div>
          <div className="stat">
            <div className="k">Bought</div>
            <div className="v">{money(t.bought_notional)}</div>
          </div>
          <div className="stat">
            <div className="k">Sold</div>
            <div className="v">{money(t.sold_notional)}</div>
          </div>
        </div>
      ) : null}
      <section className="card">
        <h2>Fills (newest first)</h2>
        <Table
          rows={rows(fills.data, "fills").slice().reverse()}
          testid="fills"
          empty="No fill yet."
          cols={[
            ["hour_utc", "hour"],
            ["pair", "pair"],
            ["side", "side"],
            ["qty", "qty"],
            ["price", "price"],
            ["cost", "cost"],
            ["fee", "fee"],
            ["origin", "origin"],
            ["trade_id", "trade id"],
          ]}
        />
      </section>
      <section className="card">
        <h2>Orders (newest first)</h2>
        <Table
          rows={rows(orders.data, "orders").slice().reverse()}
          testid="orders"
          empty="No order yet."
          cols={[
            ["hour_utc", "hour"],
            ["pair", "pair"],
            ["side", "side"],
            ["order_type", "type"],
            ["qty", "qty"],
            ["limit_price", "limit"],
            ["outcome", "outcome"],
            ["filled_qty", "filled"],
            ["fills", "fills"],
            ["fees", "fees"],
            ["cl_ord_id", "client id"],
          ]}
        />
      </section>
      <section className="card">
        <h2>Alerts (newest first)</h2>
        <Table
          rows={rows(alerts.data, "alerts").slice().reverse()}
          testid="alerts"
          empty="No alert."
          cols={[
            ["ts", "time"],
            ["severity", "severity"],
            ["kind", "kind"],
            ["pair", "pair"],
            ["message", "message"],
          ]}
        />
      </section>
    </>
  );
}

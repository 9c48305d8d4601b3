"use client";
import { money, utc } from "@/lib/api";

type Row = Record<string, unknown>;

function cell(key: string, v: unknown): string {
  if (v === null || v === undefined) return "—";
  if (key.endsWith("_utc") || key === "ts" || key === "recorded_utc") return utc(v as string);
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v === "object") return JSON.stringify(v);
  if (/(return|drawdown|frac|_pct)$/.test(key) && typeof v !== "boolean") {
    const n = Number(v);
    if (Number.isFinite(n)) return `${(n * 100).toFixed(2)}%`;
  }
  if (/^(equity|cash|value|cost|fee|fees|price|limit_price|entry_price|mark|stop|take_profit|unrealised_pnl)$/.test(key))
    return money(v, key.includes("price") || key === "mark" || key === "stop" ? 4 : 2);
  return String(v);
}

/** A table of `rows`; `cols` picks and orders the columns (default: the first row's keys). */
export default function Table({
  rows,
  cols,
  empty = "Nothing yet.",
  testid,
}: {
  rows: Row[];
  cols?: [string, string][];
  empty?: string;
  testid?: string;
}) {
  if (!rows.length) return <p className="empty">{empty}</p>;
  const columns: [string, string][] = cols ?? Object.keys(rows[0]).map((k) => [k, k.replace(/_/g, " ")]);
  return (
    <div className="scroll">
      <table data-testid={testid}>
        <thead>
          <tr>
            {columns.map(([k, label]) => (
              <th key={k}>{label}</th>
            ))}
          </tr>
        </thead>
        <tbody>
          {rows.map((r, i) => (
            <tr key={i}>
              {columns.map(([k]) => (
                <td key={k} data-col={k}>
                  {cell(k, r[k])}
                </td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

"use client";
import { num, pct } from "@/lib/api";

/**
 * A horizontal bar: `value` (a fraction) against marks (fractions), e.g. the drawdown tiers
 * 10/15/20% or the 20% exposure cap. The bar turns amber past the first mark, red past the last.
 */
export default function Gauge({
  label,
  value,
  marks,
  max,
  testid,
}: {
  label: string;
  value: unknown;
  marks: { at: number; label: string }[];
  max: number;
  testid?: string;
}) {
  const v = num(value);
  const w = v === null ? 0 : Math.min(Math.max(v / max, 0), 1) * 100;
  const level = v === null ? "" : v >= marks[marks.length - 1].at ? "bad" : v >= marks[0].at ? "warn" : "ok";
  return (
    <div className="gauge" data-testid={testid}>
      <div className="gauge-head">
        <span>{label}</span>
        <strong data-testid={testid ? `${testid}-value` : undefined}>{pct(v)}</strong>
      </div>
      <div className="gauge-track">
        <div className={`gauge-fill ${level}`} style={{ width: `${w}%` }} />
        {marks.map((m) => (
          <div key={m.at} className="gauge-mark" style={{ left: `${(m.at / max) * 100}%` }} title={m.label}>
            <span>{m.label}</span>
          </div>
        ))}
      </div>
    </div>
  );
}

"use client";
import { useEffect, useRef } from "react";

export type Series = { label: string; values: (number | null)[]; color?: string };

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"];

/**
 * A time-series line chart (uPlot, drawn on a canvas). `x`: unix seconds, shown in UTC.
 * `unit` "pct": the values are fractions, the axis shows percent.
 */
export default function Chart({
  x,
  series,
  height = 240,
  unit,
  title,
  time = true,
}: {
  time?: boolean;
  x: number[];
  series: Series[];
  height?: number;
  unit?: "pct" | "money";
  title?: string;
}) {
  const box = useRef<HTMLDivElement>(null);

  useEffect(() => {
    const el = box.current;
    if (!el || x.length === 0) return;
    let plot: { destroy: () => void; setSize: (s: { width: number; height: number }) => void } | null = null;
    let ro: ResizeObserver | null = null;
    let gone = false;
    (async () => {
      const { default: uPlot } = await import("uplot");
      if (gone) return;
      const fmt = (v: number) =>
        v === null || v === undefined
          ? ""
          : unit === "pct"
            ? `${(v * 100).toFixed(2)}%`
            : v.toLocaleString("en-US", { maximumFractionDigits: 2 });
      const opts = {
        width: Math.max(el.clientWidth, 200),
        height,
        tzDate: (ts: number) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
        legend: { show: series.length > 1 },
        scales: {
          x: time ? { time: true } : { time: false, range: (_u: unknown, lo: number, hi: number) => [lo - 0.5, hi + 0.5] },
        },
        series: [
          { label: time ? "UTC" : "fold" },
          ...series.map((s, i) => ({
            label: s.label,
            stroke: s.color ?? COLORS[i % COLORS.length],
            width: 1.5,
            value: (_u: unknown, v: number) => fmt(v),
            spanGaps: true,
          })),
        ],
        axes: [
          // x: UTC, 24-hour ("06-02 05:00"); a day or longer apart: the date only
          time
            ? {
                space: 90,
                // hourly data: ticks on whole hours, days, weeks, months, years
                incrs: [3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800, 2592000, 7776000, 31536000],
                values: (_u: unknown, vals: number[]) => {
                  const daily = vals.length > 1 && vals[1] - vals[0] >= 86_400;
                  return vals.map((t) => new Date(t * 1000).toISOString().slice(daily ? 0 : 5, daily ? 10 : 16).replace("T", " "));
                },
              }
            : { values: (_u: unknown, vals: number[]) => vals.map((v) => (Number.isInteger(v) ? String(v) : "")) },
          { values: (_u: unknown, vals: number[]) => vals.map(fmt), size: 70 },
        ],
      };
      const data = [x, ...series.map((s) => s.values)] as unknown as ConstructorParameters<typeof uPlot>[1];
      plot = new uPlot(opts as unknown as ConstructorParameters<typeof uPlot>[0], data, el);
      ro = new ResizeObserver(() => plot?.setSize({ width: Math.max(el.clientWidth, 200), height }));
      ro.observe(el);
    })();
    return () => {
      gone = true;
      ro?.disconnect();
      plot?.destroy();
    };
  }, [x, series, height, unit, time]);

  return (
    <figure className="chart">
      {title ? <figcaption>{title}</figcaption> : null}
      {x.length === 0 ? <p className="empty">No points yet.</p> : <div ref={box} data-testid="chart" />}
    </figure>
  );
}

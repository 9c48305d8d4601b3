"""The integrity log: what is wrong or suspicious in stored bars, and how bad it is.

Findings are computed in SQL over the validated ``bars`` table (window functions, one pass per
pair) and stored in ``integrity`` at every import; ``kq data check`` recomputes them live.

Severities (see docs/DECISIONS.md):

* ``warning`` - facts about the data that research must respect but that do not make the store
  wrong: ``gap`` (missing hours inside a pair's span; the panel marks them invalid),
  ``zero_volume`` (filler bars: no trades, price carried), ``bad_print`` (an isolated single-bar wick
  far outside its own body and both neighbours; the bar is kept and flagged, never deleted).
* ``blocking`` - states the import validator never lets in, so they can only come from a damaged
  or hand-edited store: ``non_positive`` price or negative volume, ``non_finite`` value, ``ohlc``
  inconsistency (high < low, open/close outside [low, high]), ``off_grid`` timestamp, ``duplicate``
  (venue, pair, ts), ``bad_trades`` (a trade count below 0 or above :data:`MAX_TRADES`, e.g. the
  int64 minimum an overflowing cast leaves). Volume must be finite and >= 0 (``non_finite``,
  ``non_positive``); a known vwap must be finite and > 0 (same kinds).
"""

from __future__ import annotations

#: A wick is a bad print when it reaches this factor beyond the bar's body AND both neighbours'
#: bodies and extremes. On the shared data only LINK/USDT 2020-03-12 10:00 (low 0.0001 against
#: ~2.47, factor 2e4) qualifies; the deepest real crash wick (DOT/USDT 2025-10-10 21:00) is ~3.9.
BAD_PRINT_FACTOR = 5.0

#: The largest trade count one hourly bar may carry (the importer refuses more, the integrity log
#: flags more): 10^12, about 3 x 10^7 times the busiest hour in the shared data (33,260) and far below
#: 2^53, so the count is exact in the raw layer's float64 and in the bars' BIGINT.
MAX_TRADES = 10**12

WARNING, BLOCKING = "warning", "blocking"
KINDS = {
    "gap": WARNING,
    "zero_volume": WARNING,
    "bad_print": WARNING,
    "non_positive": BLOCKING,
    "non_finite": BLOCKING,
    "ohlc": BLOCKING,
    "off_grid": BLOCKING,
    "duplicate": BLOCKING,
    "bad_trades": BLOCKING,
}


def findings_sql(where: str = "TRUE") -> str:
    """SELECT venue, pair, ts, kind, severity, value, detail over ``bars`` rows matching ``where``."""
    k = BAD_PRINT_FACTOR
    return f"""
WITH src AS (SELECT venue, pair, ts, open, high, low, close, volume, trades, vwap FROM bars WHERE {where}),
w AS (
  SELECT *,
    LAG(ts) OVER win AS pts,
    least(open, close) AS blo, greatest(open, close) AS bhi,
    LAG(least(open, close)) OVER win AS pblo, LEAD(least(open, close)) OVER win AS nblo,
    LAG(greatest(open, close)) OVER win AS pbhi, LEAD(greatest(open, close)) OVER win AS nbhi,
    LAG(low) OVER win AS plow, LEAD(low) OVER win AS nlow,
    LAG(high) OVER win AS phigh, LEAD(high) OVER win AS nhigh
  FROM src WINDOW win AS (PARTITION BY venue, pair ORDER BY ts)
)
SELECT venue, pair, pts + 3600 AS ts, 'gap' AS kind, 'warning' AS severity,
       CAST((ts - pts) / 3600 - 1 AS DOUBLE) AS value,
       format('{{}} missing hour(s) before the bar at {{}}', (ts - pts) // 3600 - 1, ts) AS detail
  FROM w WHERE pts IS NOT NULL AND ts - pts > 3600
UNION ALL
SELECT venue, pair, ts, 'zero_volume', 'warning', volume,
       format('volume 0 (filler bar: open {{}} high {{}} low {{}} close {{}})', open, high, low, close)
  FROM w WHERE volume = 0
UNION ALL
SELECT venue, pair, ts, 'bad_print', 'warning', low,
       format('isolated low {{}} vs body/neighbours {{}} (kept, flagged)', low,
              least(blo, coalesce(pblo, blo), coalesce(nblo, blo),
                    coalesce(plow, 'inf'::DOUBLE), coalesce(nlow, 'inf'::DOUBLE)))
  FROM w WHERE low > 0 AND low * {k} < least(blo, coalesce(pblo, blo), coalesce(nblo, blo))
               AND low * {k} < least(coalesce(plow, 'inf'::DOUBLE), coalesce(nlow, 'inf'::DOUBLE))
UNION ALL
SELECT venue, pair, ts, 'bad_print', 'warning', high,
       format('isolated high {{}} vs body/neighbours {{}} (kept, flagged)', high,
              greatest(bhi, coalesce(pbhi, bhi), coalesce(nbhi, bhi), coalesce(phigh, 0), coalesce(nhigh, 0)))
  FROM w WHERE high > {k} * greatest(bhi, coalesce(pbhi, bhi), coalesce(nbhi, bhi))
               AND high > {k} * greatest(coalesce(phigh, 0), coalesce(nhigh, 0))
UNION ALL
SELECT venue, pair, ts, 'non_finite', 'blocking', NULL, 'NaN or infinite price, volume or vwap'
  FROM src WHERE NOT (isfinite(open) AND isfinite(high) AND isfinite(low) AND isfinite(close) AND isfinite(volume)
                      AND (vwap IS NULL OR isfinite(vwap)))
UNION ALL
SELECT venue, pair, ts, 'non_positive', 'blocking', least(open, high, low, close, volume, coalesce(vwap, 1)),
       format('non-positive price or vwap or negative volume (open {{}} high {{}} low {{}} close {{}} volume {{}} '
              'vwap {{}})', open, high, low, close, volume, vwap)
  FROM src WHERE least(open, high, low, close) <= 0 OR volume < 0 OR vwap <= 0
UNION ALL
SELECT venue, pair, ts, 'bad_trades', 'blocking', CAST(trades AS DOUBLE),
       format('trade count {{}} outside [0, {MAX_TRADES}]', trades)
  FROM src WHERE trades < 0 OR trades > {MAX_TRADES}
UNION ALL
SELECT venue, pair, ts, 'ohlc', 'blocking', NULL,
       format('OHLC inconsistent (open {{}} high {{}} low {{}} close {{}})', open, high, low, close)
  FROM src WHERE high < low OR open > high OR open < low OR close > high OR close < low
UNION ALL
SELECT venue, pair, ts, 'off_grid', 'blocking', NULL, 'timestamp not a multiple of 3600'
  FROM src WHERE ts % 3600 <> 0
UNION ALL
SELECT venue, pair, ts, 'duplicate', 'blocking', CAST(count(*) AS DOUBLE), format('{{}} rows for one hour', count(*))
  FROM src GROUP BY venue, pair, ts HAVING count(*) > 1
"""

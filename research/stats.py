"""Overfitting statistics: probabilistic and deflated Sharpe ratios, probability of backtest overfitting.

All Sharpe ratios here are PER PERIOD (mean / standard deviation of the period returns, not
annualised): returns, benchmark Sharpe ratios and the trials' Sharpe ratios must share one period
(hourly returns with hourly Sharpe ratios). Conventions (the same as skfolio's, against which the
tests check): the Sharpe ratio uses the sample standard deviation (ddof=1); skewness and kurtosis
are the population (biased) moment ratios, kurtosis NOT in excess (3 for a normal law); the
variance of the trials' Sharpe ratios uses ddof=1.

* :func:`probabilistic_sharpe_ratio` (Bailey and Lopez de Prado 2012):
  ``PSR(SR*) = Phi((SR - SR*) sqrt(T - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2))``.
* :func:`expected_max_sharpe` (Bailey and Lopez de Prado 2014): expected maximum of N independent
  trial Sharpe ratios with true Sharpe 0 and variance V:
  ``SR0 = mean + sqrt(V) ((1 - gamma) Phi^-1(1 - 1/N) + gamma Phi^-1(1 - 1/(N e)))``.
* :func:`deflated_sharpe_ratio`: ``DSR = PSR(SR0)``, the probability that the selected strategy's
  true Sharpe ratio is above what the best of N skill-less trials would show.
* :func:`probability_of_backtest_overfitting` (Bailey, Borwein, Lopez de Prado and Zhu 2017,
  combinatorially symmetric cross-validation, CSCV).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as st

from engine.errors import InputError

EULER_GAMMA = 0.5772156649015329

__all__ = [
    "DSRResult",
    "PBOResult",
    "deflated_sharpe_ratio",
    "expected_max_sharpe",
    "probabilistic_sharpe_ratio",
    "probability_of_backtest_overfitting",
    "psr_from_returns",
    "return_moments",
    "sharpe_ratio",
]


def _returns_1d(returns: Any, name: str = "returns") -> np.ndarray:
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim != 1:
        raise InputError(f"{name} must be one-dimensional, got shape {r.shape}")
    if not np.isfinite(r).all():
        raise InputError(f"{name} contain NaN or infinity: drop them first")
    if r.size < 3:
        raise InputError(f"{name} need at least 3 observations, got {r.size}")
    return r


def sharpe_ratio(returns: Any) -> float:
    """Per-period Sharpe ratio mean / std (ddof=1); 0 for constant zero returns."""
    r = _returns_1d(returns)
    sd = float(np.std(r, ddof=1))
    mu = float(np.mean(r))
    if sd == 0.0:
        if mu == 0.0:
            return 0.0
        raise InputError("returns are constant and non-zero: the Sharpe ratio is undefined")
    return mu / sd


def return_moments(returns: Any) -> tuple[float, float, float, int]:
    """(Sharpe ratio, skewness, kurtosis (not excess), number of observations) of a return series."""
    r = _returns_1d(returns)
    sr = sharpe_ratio(r)
    if float(np.std(r)) == 0.0:
        return sr, 0.0, 3.0, int(r.size)
    skew = float(st.skew(r, bias=True))
    kurt = float(st.kurtosis(r, fisher=False, bias=True))
    return sr, skew, kurt, int(r.size)


def probabilistic_sharpe_ratio(
    sr: float, n_obs: int, skew: float = 0.0, kurtosis: float = 3.0, sr_benchmark: float = 0.0
) -> float:
    """PSR: probability that the true per-period Sharpe ratio exceeds ``sr_benchmark``.

    ``sr`` is the observed per-period Sharpe ratio from ``n_obs`` returns with the given skewness
    and (non-excess) kurtosis. NaN when the variance term ``1 - skew sr + (kurtosis - 1)/4 sr^2``
    is not positive (possible only for extreme skew)."""
    for name, v in (("sr", sr), ("skew", skew), ("kurtosis", kurtosis), ("sr_benchmark", sr_benchmark)):
        if not math.isfinite(float(v)):
            raise InputError(f"{name} must be finite, got {v!r}")
    if isinstance(n_obs, bool) or int(n_obs) != n_obs or n_obs < 2:
        raise InputError(f"n_obs must be an integer >= 2, got {n_obs!r}")
    if kurtosis < 1.0:
        raise InputError(f"kurtosis must be >= 1 (it is not the excess kurtosis), got {kurtosis}")
    var = 1.0 - skew * sr + (kurtosis - 1.0) / 4.0 * sr * sr
    if not var > 0.0:
        return float("nan")
    z = (sr - sr_benchmark) * math.sqrt(n_obs - 1) / math.sqrt(var)
    return float(st.norm.cdf(z))


def psr_from_returns(returns: Any, sr_benchmark: float = 0.0) -> float:
    """PSR of a per-period return series against ``sr_benchmark``."""
    sr, skew, kurt, n = return_moments(returns)
    return probabilistic_sharpe_ratio(sr, n, skew, kurt, sr_benchmark)


def expected_max_sharpe(n_trials: float, sr_variance: float, sr_mean: float = 0.0) -> float:
    """Expected maximum Sharpe ratio of ``n_trials`` independent trials whose Sharpe ratios have
    mean ``sr_mean`` and variance ``sr_variance`` (False Strategy theorem, Bailey and Lopez de
    Prado 2014). ``n_trials`` may be fractional (an effective number of independent trials)."""
    if not math.isfinite(float(n_trials)) or n_trials < 1:
        raise InputError(f"n_trials must be >= 1, got {n_trials!r}")
    if not math.isfinite(float(sr_variance)) or sr_variance < 0:
        raise InputError(f"sr_variance must be finite and >= 0, got {sr_variance!r}")
    if n_trials == 1 or sr_variance == 0:
        return float(sr_mean)
    z = (1.0 - EULER_GAMMA) * st.norm.ppf(1.0 - 1.0 / n_trials) + EULER_GAMMA * st.norm.ppf(
        1.0 - 1.0 / (n_trials * math.e)
    )
    return float(sr_mean + math.sqrt(sr_variance) * z)


@dataclass(frozen=True)
class DSRResult:
    dsr: float  # PSR(sr0): probability the true Sharpe ratio beats the selection benchmark
    sr: float  # observed per-period Sharpe ratio of the selected strategy
    sr0: float  # expected maximum Sharpe ratio of n_trials skill-less trials
    psr0: float  # PSR against 0 (no deflation), for comparison
    skew: float
    kurtosis: float
    n_obs: int
    n_trials: float
    sr_variance: float

    def to_dict(self) -> dict[str, float]:
        return {k: (float(v) if not isinstance(v, int) else v) for k, v in self.__dict__.items()}


def deflated_sharpe_ratio(
    returns: Any, trial_sharpes: Any = None, *, n_trials: float | None = None, sr_variance: float | None = None
) -> DSRResult:
    """Deflated Sharpe ratio of the selected strategy's per-period ``returns``.

    Either give ``trial_sharpes`` (the per-period Sharpe ratios of EVERY configuration tried,
    the selected one included; N = their count, V = their variance with ddof=1) or both
    ``n_trials`` and ``sr_variance``. DSR >= 0.95 is the usual bar for a real edge."""
    sr, skew, kurt, n = return_moments(returns)
    if trial_sharpes is not None:
        if n_trials is not None or sr_variance is not None:
            raise InputError("give trial_sharpes or (n_trials, sr_variance), not both")
        ts = np.asarray(trial_sharpes, dtype=np.float64)
        if ts.ndim != 1 or ts.size == 0:
            raise InputError("trial_sharpes must be a non-empty one-dimensional array")
        if not np.isfinite(ts).all():
            raise InputError("trial_sharpes contain NaN or infinity")
        n_trials = float(ts.size)
        sr_variance = float(np.var(ts, ddof=1)) if ts.size > 1 else 0.0
    elif n_trials is None or sr_variance is None:
        raise InputError("deflated_sharpe_ratio needs trial_sharpes or both n_trials and sr_variance")
    sr0 = expected_max_sharpe(n_trials, sr_variance)
    return DSRResult(
        dsr=probabilistic_sharpe_ratio(sr, n, skew, kurt, sr0),
        sr=sr,
        sr0=sr0,
        psr0=probabilistic_sharpe_ratio(sr, n, skew, kurt, 0.0),
        skew=skew,
        kurtosis=kurt,
        n_obs=n,
        n_trials=float(n_trials),
        sr_variance=float(sr_variance),
    )


# --------------------------------------------------------------------------------------------
# probability of backtest overfitting (CSCV)


@dataclass(frozen=True)
class PBOResult:
    pbo: float  # share of combinations whose logit is <= 0
    logits: np.ndarray  # (n_combinations,) logit of the OOS relative rank of the IS best
    is_best: np.ndarray  # (n_combinations,) index of the in-sample best configuration
    is_perf: np.ndarray  # (n_combinations,) its in-sample performance
    oos_perf: np.ndarray  # (n_combinations,) its out-of-sample performance
    slope: float  # performance degradation: OLS slope of oos_perf on is_perf
    intercept: float
    prob_oos_loss: float  # share of combinations where the IS best loses out of sample (< 0)
    n_blocks: int
    n_combinations: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "pbo": self.pbo,
            "slope": self.slope,
            "intercept": self.intercept,
            "prob_oos_loss": self.prob_oos_loss,
            "n_blocks": self.n_blocks,
            "n_combinations": self.n_combinations,
            "logits": [float(v) for v in self.logits],
        }


def _sharpe_from_sums(n: np.ndarray, s1: np.ndarray, s2: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Per-column Sharpe ratio (ddof=1) from counts, sums and sums of squares of the returns minus
    a per-column ``shift`` (centring keeps the variance accurate); 0 where constant."""
    mean_c = s1 / n
    mean = mean_c + shift
    var = (s2 - s1 * mean_c) / (n - 1)
    var = np.where(var > 0, var, 0.0)
    sd = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(sd > 0, mean / sd, np.where(mean > 0, np.inf, np.where(mean < 0, -np.inf, 0.0)))
    return out


def probability_of_backtest_overfitting(
    perf: Any, n_blocks: int = 16, metric: Callable[[np.ndarray], np.ndarray] | None = None
) -> PBOResult:
    """PBO by combinatorially symmetric cross-validation (Bailey, Borwein, Lopez de Prado, Zhu 2017).

    ``perf`` is a (T, N) matrix: per-period returns (or other performance) of N configurations
    over the same T periods, in time order. Its rows are cut into ``n_blocks`` (even) contiguous
    blocks of equal size (``numpy.array_split``: sizes differ by at most one when T is not a
    multiple). For each of the C(S, S/2) choices of S/2 blocks as in-sample (the rest, in time
    order, out-of-sample) the configuration with the best in-sample ``metric`` (default: per-period
    Sharpe ratio, ddof=1) is found; its out-of-sample relative rank w = rank / (N + 1) (ranks 1..N,
    ties averaged) gives the logit ``ln(w / (1 - w))``. PBO is the share of logits <= 0: how often
    the in-sample winner ends in the bottom half out of sample. The performance degradation is the
    OLS line of the winner's out-of-sample on its in-sample performance."""
    m = np.asarray(perf, dtype=np.float64)
    if m.ndim != 2:
        raise InputError(f"perf must be a (periods x configurations) matrix, got shape {m.shape}")
    t, n = m.shape
    if n < 2:
        raise InputError(f"PBO needs at least 2 configurations, got {n}")
    if not np.isfinite(m).all():
        raise InputError("perf contains NaN or infinity: fill or drop those periods first")
    if isinstance(n_blocks, bool) or int(n_blocks) != n_blocks or n_blocks < 2 or n_blocks % 2:
        raise InputError(f"n_blocks must be an even integer >= 2, got {n_blocks!r}")
    s = int(n_blocks)
    if t < 2 * s:
        raise InputError(f"perf has {t} periods: too few for {s} blocks (need >= {2 * s})")
    blocks = np.array_split(np.arange(t), s)
    if metric is None:
        shift = m.mean(axis=0)
        mc = m - shift
        cnt = np.array([b.size for b in blocks], dtype=np.float64)
        s1 = np.stack([mc[b].sum(axis=0) for b in blocks])  # (S, N)
        s2 = np.stack([(mc[b] ** 2).sum(axis=0) for b in blocks])

    combos = list(itertools.combinations(range(s), s // 2))
    k = len(combos)
    logits = np.empty(k)
    best = np.empty(k, dtype=np.int64)
    is_perf = np.empty(k)
    oos_perf = np.empty(k)
    all_blocks = np.arange(s)
    for c_i, c in enumerate(combos):
        ins = np.zeros(s, dtype=bool)
        ins[list(c)] = True
        if metric is None:
            r_is = _sharpe_from_sums(cnt[ins].sum(), s1[ins].sum(axis=0), s2[ins].sum(axis=0), shift)
            r_oos = _sharpe_from_sums(cnt[~ins].sum(), s1[~ins].sum(axis=0), s2[~ins].sum(axis=0), shift)
        else:
            rows_is = np.concatenate([blocks[b] for b in all_blocks[ins]])
            rows_oos = np.concatenate([blocks[b] for b in all_blocks[~ins]])
            r_is = np.asarray(metric(m[rows_is]), dtype=np.float64)
            r_oos = np.asarray(metric(m[rows_oos]), dtype=np.float64)
            if r_is.shape != (n,) or r_oos.shape != (n,):
                raise InputError(f"metric must return one value per configuration ({n})")
        b = int(np.argmax(r_is))
        v = r_oos[b]  # average rank (1..N) of the winner among the out-of-sample results
        rank = float(np.sum(r_oos < v)) + (float(np.sum(r_oos == v)) + 1.0) / 2.0
        w = rank / (n + 1.0)
        logits[c_i] = math.log(w / (1.0 - w))
        best[c_i] = b
        is_perf[c_i] = r_is[b]
        oos_perf[c_i] = r_oos[b]
    fin = np.isfinite(is_perf) & np.isfinite(oos_perf)
    if fin.sum() >= 2 and np.ptp(is_perf[fin]) > 0:
        slope, intercept = (float(v) for v in np.polyfit(is_perf[fin], oos_perf[fin], 1))
    else:
        slope, intercept = float("nan"), float("nan")
    return PBOResult(
        pbo=float(np.mean(logits <= 0.0)),
        logits=logits,
        is_best=best,
        is_perf=is_perf,
        oos_perf=oos_perf,
        slope=slope,
        intercept=intercept,
        prob_oos_loss=float(np.mean(oos_perf < 0.0)),
        n_blocks=s,
        n_combinations=k,
    )

"""Prediction: time to exhaustion from trends, and anomaly scores over recent windows.

Time to exhaustion fits a least-squares line to the free amount (MemAvailable, free disk bytes) over the
recent window and extrapolates to zero; the fit's R^2 says how much to trust it. Anomaly scores use
scikit-learn's IsolationForest (Liu, Ting and Zhou, "Isolation Forest", ICDM 2008): fitted on every
(agent, sample) row of the window, each agent's newest row is scored; isolation needs few splits for an
outlier. scikit-learn is imported inside the function so ``import sutazai_hwopt`` stays light.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["anomaly_scores", "linear_trend", "time_to_exhaustion"]


def linear_trend(t: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope per second, R^2) of the least-squares line through the finite points; (nan, nan) if < 3."""
    mask = np.isfinite(t) & np.isfinite(y)
    if int(mask.sum()) < 3:
        return math.nan, math.nan
    tt, yy = t[mask] - t[mask][0], y[mask].astype(np.float64)
    tm, ym = tt.mean(), yy.mean()
    var = float(((tt - tm) ** 2).sum())
    if var == 0:
        return math.nan, math.nan
    slope = float(((tt - tm) * (yy - ym)).sum() / var)
    ss_tot = float(((yy - ym) ** 2).sum())
    resid = yy - (ym + slope * (tt - tm))
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return slope, r2


def time_to_exhaustion(t: np.ndarray, free: np.ndarray, *, min_r2: float = 0.6) -> dict[str, float] | None:
    """Seconds until ``free`` reaches zero at the current trend, or ``None`` when it is not falling.

    Returns ``{"seconds": ..., "slope_per_s": ..., "r2": ..., "free": latest}``.
    """
    slope, r2 = linear_trend(t, free)
    if not (slope < 0) or not (r2 >= min_r2):
        return None
    finite = free[np.isfinite(free)]
    latest = float(finite[-1])
    return {"seconds": max(0.0, latest / -slope), "slope_per_s": slope, "r2": r2, "free": latest}


def anomaly_scores(window: np.ndarray, agent_ids: list[str], *, seed: int = 0,
                   n_estimators: int = 50) -> dict[str, float]:
    """IsolationForest anomaly score in [0, 1] (higher = more unusual) of each agent's newest sample.

    Args:
        window: array (samples, agents, features); NaN rows (dead agents, first sample) are skipped.
        agent_ids: the agent of each column of axis 1.
        seed: random_state, so a run is reproducible.
    """
    from sklearn.ensemble import IsolationForest  # heavy: import on use

    s, a, f = window.shape
    if s < 2 or a == 0:
        return {}
    rows = window.reshape(s * a, f).astype(np.float64)
    good = np.isfinite(rows).all(axis=1)
    if int(good.sum()) < 8:
        return {}
    x = rows[good]
    # scale-free features: log1p of magnitudes keeps bytes/s and percentages comparable
    x = np.sign(x) * np.log1p(np.abs(x))
    forest = IsolationForest(n_estimators=n_estimators, random_state=seed)
    forest.fit(x)
    latest = window[-1].astype(np.float64)
    ok = np.isfinite(latest).all(axis=1)
    out: dict[str, float] = {}
    if ok.any():
        lx = latest[ok]
        lx = np.sign(lx) * np.log1p(np.abs(lx))
        scores: Any = -forest.score_samples(lx)  # sklearn: score_samples is the negated paper score
        for aid, sc in zip(np.asarray(agent_ids)[ok], scores):
            out[str(aid)] = float(sc)
    return out

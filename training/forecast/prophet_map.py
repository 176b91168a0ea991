"""Prophet's MAP fit solved in-process: the same objective as its Stan model, no cmdstan child.

Prophet fits a linear model (trend with changepoints, Fourier seasonalities) by maximising the
posterior of its Stan program with L-BFGS in a cmdstan child process, after writing the data as
JSON. For a linear trend with additive seasonalities that posterior is, on Prophet's scaled data,

    ||y - k t - m - B delta - X beta||^2 / (2 s^2) + T log s + 2 s^2
    + (k^2 + m^2) / 50 + sum |delta| / tau + sum beta^2 / (2 sigmas^2)

(``B[i, j] = max(t_i - t_change_j, 0)``, ``s = sigma_obs``; Stan's ``optimize`` adds no Jacobian,
so this is the objective it minimises). Here ``s`` is profiled out in closed form, ``delta`` is
split into positive and negative parts so the Laplace prior becomes smooth under bounds, and
scipy's L-BFGS-B works on the Gram matrix, so one iteration costs O(P^2) for P = 2 + S + K
parameters, whatever the number of points. :class:`MapBackend` plugs into Prophet as its
``stan_backend``; everything else (features, scaling, serialisation, prediction) stays Prophet's.
Any other model (logistic or flat growth, multiplicative seasonality, MCMC) goes to Stan.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

#: priors of Prophet's Stan program (prophet.stan): k, m ~ normal(0, 5); sigma_obs ~ normal(0, 0.5)
_KM_SCALE, _SIGMA_SCALE = 5.0, 0.5
#: |delta| below this counts as zero for the majorant (far below any slope change that matters)
_L1_FLOOR = 1e-9


def design(data: dict[str, Any]) -> np.ndarray:
    """``[t, 1, B, X]``: the linear model behind a linear trend with additive seasonalities."""
    t = np.asarray(data["t"], dtype=np.float64)
    t_change = np.asarray(data["t_change"], dtype=np.float64).reshape(-1)
    hinge = np.maximum(t[:, None] - t_change[None, :], 0.0)
    x = np.asarray(data["X"], dtype=np.float64).reshape(t.size, -1)
    return np.column_stack([t, np.ones_like(t), hinge, x])


def neg_log_posterior(w: np.ndarray, sigma: float, z: np.ndarray, y: np.ndarray,
                      sigmas: np.ndarray, tau: float, n_change: int) -> float:
    """The objective Stan minimises, at ``w = [k, m, delta, beta]`` and ``sigma_obs``."""
    rss = float(np.sum((y - z @ w) ** 2))
    k, m, delta, beta = w[0], w[1], w[2:2 + n_change], w[2 + n_change:]
    return (rss / (2 * sigma**2) + y.size * np.log(sigma) + sigma**2 / (2 * _SIGMA_SCALE**2)
            + (k**2 + m**2) / (2 * _KM_SCALE**2) + np.abs(delta).sum() / tau
            + np.sum(beta**2 / (2 * sigmas**2)))


def _profiled_sigma2(rss: float, n: int) -> float:
    """The ``sigma_obs^2`` minimising the objective for a given residual sum of squares."""
    c = 1.0 / _SIGMA_SCALE**2  # d/ds [s^2 / (2 * 0.25)] = 4 s
    return max((-n + np.sqrt(n * n + 4 * c * max(rss, 0.0))) / (2 * c), 1e-300)


def map_fit(data: dict[str, Any], init: dict[str, Any], max_iter: int = 5_000
            ) -> tuple[dict[str, np.ndarray], int]:
    """The MAP parameters as Stan gives them to Prophet (``lp__`` and ``trend`` included, each
    shaped ``(1, n)``) and the iterations taken."""
    z = design(data)
    y = np.asarray(data["y"], dtype=np.float64)
    n_change = int(np.asarray(data["t_change"]).size)
    sigmas = np.asarray(data["sigmas"], dtype=np.float64).reshape(-1)
    tau = float(data["tau"])
    n = y.size
    gram, zy, yy = z.T @ z, z.T @ y, float(y @ y)
    p = gram.shape[0]
    ridge = np.zeros(p)
    ridge[:2] = 1.0 / _KM_SCALE**2
    ridge[2 + n_change:] = 1.0 / sigmas**2
    lo, hi = 2, 2 + n_change  # delta's slice of w

    k0, m0 = float(np.ravel(init["k"])[0]), float(np.ravel(init["m"])[0])
    delta0 = np.asarray(init.get("delta", np.zeros(n_change)), dtype=np.float64).reshape(-1)
    beta0 = np.asarray(init.get("beta", np.zeros(p - hi)), dtype=np.float64).reshape(-1)
    w = np.concatenate([[k0, m0], delta0, beta0])
    if not np.any(delta0) and not np.any(beta0):  # a cold start: the ridge solution first
        s2 = max(yy / n, 1e-12)  # the majorant at |delta| = 1 lets every changepoint move
        w = np.linalg.solve(gram / s2 + np.diag(ridge + _l1_weight(np.ones(n_change), lo, hi, p,
                                                                   tau)), zy / s2)
    best, iterations = np.inf, 0
    while iterations < max_iter:
        iterations += 1
        rss = max(yy - 2 * w @ zy + w @ gram @ w, 0.0)
        s2 = _profiled_sigma2(rss, n)
        f = (rss / (2 * s2) + 0.5 * n * np.log(s2) + s2 / (2 * _SIGMA_SCALE**2)
             + 0.5 * np.sum(ridge * w * w) + np.abs(w[lo:hi]).sum() / tau)
        if best - f <= 1e-12 * max(abs(f), 1.0):
            break
        best = f
        # |d| <= d^2 / (2 |d0|) + |d0| / 2: each step minimises a quadratic majorant (MM)
        w = np.linalg.solve(gram / s2 + np.diag(ridge + _l1_weight(w[lo:hi], lo, hi, p, tau)),
                            zy / s2)
    if not np.all(np.isfinite(w)):
        raise RuntimeError("MAP fit diverged")
    trend = z[:, :hi] @ w[:hi]
    rss = float(np.sum((y - trend - z[:, hi:] @ w[hi:]) ** 2))
    sigma = np.sqrt(_profiled_sigma2(rss, n))
    # Stan reports its log density (no Jacobian, constants dropped) as lp__: the same, negated
    params = OrderedDict(lp__=-neg_log_posterior(w, sigma, z, y, sigmas, tau, n_change), k=w[0],
                         m=w[1], delta=w[lo:hi], sigma_obs=sigma, beta=w[hi:], trend=trend)
    return {k: np.asarray(v, dtype=np.float64).reshape((1, -1)) for k, v in params.items()}, iterations


def _l1_weight(delta: np.ndarray, lo: int, hi: int, p: int, tau: float) -> np.ndarray:
    """The diagonal of the quadratic majorant of the Laplace prior at ``delta`` (zero elsewhere)."""
    out = np.zeros(p)
    out[lo:hi] = 1.0 / (tau * np.maximum(np.abs(delta), _L1_FLOOR))
    return out


def solvable(data: dict[str, Any]) -> bool:
    """A linear trend with additive seasonalities only: the models :func:`map_fit` solves."""
    return (int(data["trend_indicator"]) == 0
            and not np.any(np.asarray(data["s_m"], dtype=np.float64)))


class MapBackend:
    """A Prophet ``stan_backend`` whose MAP fit is :func:`map_fit`; anything else goes to Stan.

    Set it on a Prophet model before ``fit``: ``model.stan_backend = MapBackend(model.stan_backend)``.
    ``fit(..., init=params)`` warm-starts from another fit's parameters, as Prophet's own does.
    """

    def __init__(self, stan: Any):
        self.stan = stan  # the backend Prophet loaded (cmdstanpy): for what map_fit does not solve
        self.stan_fit = None
        self.iterations: int | None = None

    @staticmethod
    def get_type() -> str:
        return "PREALERT_MAP"

    def fit(self, stan_init: dict[str, Any], stan_data: dict[str, Any], **kwargs: Any) -> dict:
        if not solvable(stan_data) or set(kwargs) - {"init"}:
            out = self.stan.fit(stan_init, stan_data, **kwargs)
            self.stan_fit = self.stan.stan_fit
            return out
        init = dict(stan_init)
        if "init" in kwargs:  # Prophet's warm start: another fit's params, same shapes
            init.update({k: np.asarray(v, dtype=np.float64).reshape(-1)
                         for k, v in kwargs["init"].items() if k in ("k", "m", "delta", "beta")})
            if np.asarray(init["delta"]).size != np.asarray(stan_init["delta"]).size:
                raise ValueError("a warm start needs as many changepoints as the model")
        params, self.iterations = map_fit(stan_data, init)
        return params

    def sampling(self, stan_init, stan_data, samples, **kwargs):
        out = self.stan.sampling(stan_init, stan_data, samples, **kwargs)
        self.stan_fit = self.stan.stan_fit
        return out


#: Prophet's component matrix by feature columns and modes: it depends on nothing else here
_COMPONENTS: dict[tuple, tuple[Any, dict]] = {}


@contextmanager
def cached_components(model: Any) -> Iterator[None]:
    """During ``model.fit``, Prophet's ``regressor_column_matrix`` from a cache.

    That matrix (which feature column belongs to which component, built with ``pd.crosstab``)
    depends only on the column names and the seasonality modes, the same for every series
    fitted with the same settings, yet costs ~35 ms a fit. Models with holidays or extra
    regressors, or a fitted model (predicting), use Prophet's own.
    """
    original = model.regressor_column_matrix

    def cached(seasonal_features, modes):
        if (model.train_component_cols is not None or model.train_holiday_names is not None
                or model.extra_regressors):
            return original(seasonal_features, modes)
        key = (tuple(seasonal_features.columns), model.holidays_mode,
               *(tuple(modes[m]) for m in sorted(modes)))
        if key not in _COMPONENTS:
            cols, out = original(seasonal_features, {m: list(v) for m, v in modes.items()})
            _COMPONENTS[key] = (cols, {m: list(v) for m, v in out.items()})
        cols, out = _COMPONENTS[key]
        for m in modes:  # Prophet appends its combination components to the caller's lists
            modes[m][:] = out[m]
        return cols.copy(), modes

    model.regressor_column_matrix = cached
    try:
        yield
    finally:
        del model.regressor_column_matrix


#: Prophet's Fourier features per (period, order): the sorted times (ns) a fit asked for last, and
#: their rows
_FOURIER: dict[tuple[float, int], tuple[np.ndarray, np.ndarray]] = {}


@contextmanager
def cached_fourier(model: Any) -> Iterator[None]:
    """During ``model.fit``, the rows of Prophet's Fourier features of times seen before from a cache.

    Each row of ``fourier_series`` depends on its own time only, and a trial fit's times, the
    served fit's (the same plus the holdout) and the next series' (the same scrape times) are
    mostly the same: the rows of times the last fit at the same period and order asked for are
    copied, the others computed by Prophet, and the frame built as Prophet builds it.
    """
    from prophet import Prophet

    def cached(dates, period, series_order, prefix):
        key = (float(period), int(series_order))
        when = dates.to_numpy(dtype="datetime64[ns]").view(np.int64)
        rows = np.empty((when.size, 2 * int(series_order)))
        hit = np.zeros(when.size, dtype=bool)
        if key in _FOURIER:
            seen, values = _FOURIER[key]
            at = np.minimum(np.searchsorted(seen, when), seen.size - 1)
            hit = seen[at] == when
            rows[hit] = values[at[hit]]
        if not hit.all():
            rows[~hit] = Prophet.fourier_series(dates[~hit], period, series_order)
        seen, first = np.unique(when, return_index=True)
        _FOURIER[key] = (seen, rows[first])  # a copy: Prophet zeroes rows of the frame's array
        return pd.DataFrame(rows, columns=[f"{prefix}_delim_{i + 1}"
                                           for i in range(rows.shape[1])])

    model.make_seasonality_features = cached
    try:
        yield
    finally:
        del model.make_seasonality_features

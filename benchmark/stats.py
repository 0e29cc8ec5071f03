"""Statistics for few-seed RL results (Agarwal et al., 2021, "Deep RL at the Edge of the Statistical
Precipice"), written out in numpy rather than taken from rliable, which would pull pandas, statsmodels
and arch (and pandas<3 with our numpy) for thirty lines; the tests check them against hand-computed values.

Scores come as a list with one array per task (the normalised score of each seed's run on that task):
- a cell of a table (one env, tuning, algorithm) is the mean over tasks per seed, and its interval is
  the Student-t 95% interval over seeds (`t_interval`): with 3 seeds a percentile bootstrap of the mean
  covers far less than 95% (with 2 it is just [min, max]); the t interval is wide because 3 seeds say little.
- aggregates over seeds x tasks (`aggregate`): the mean and the interquartile mean (IQM), with 95%
  stratified-bootstrap intervals (seeds resampled with replacement within each task, as rliable does).
- the probability of improvement P(X > Y) (`probability_of_improvement`): the chance that a run of X on a
  random task beats a run of Y on it (ties count one half), with an independent stratified bootstrap.
- performance profiles (`performance_profile`): the fraction of runs scoring above tau, per tau.
A stratified bootstrap resamples runs within a task, so a task with one run (one seed) has no spread to
resample: the intervals of `aggregate` and `probability_of_improvement` need at least two runs on every task
and are nan otherwise (a one-seed interval would be a single point and read as certainty).
"""
from __future__ import annotations

import numpy as np

REPS = 2000  # bootstrap resamples (rliable's default is 50,000; 2000 moves a 95% bound by < 1% of its width here)


def t_interval(x, level: float = 0.95) -> tuple[float, float, float]:
    """mean and the Student-t interval of the mean over seeds (nan bounds for fewer than two values)."""
    from scipy.stats import t

    x = np.asarray(x, float)
    if len(x) == 0:
        return np.nan, np.nan, np.nan
    m = float(x.mean())
    if len(x) == 1:
        return m, np.nan, np.nan
    h = float(t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return m, m - h, m + h


def iqm(x) -> float:
    """interquartile mean: the mean of the middle 50% of the values (scipy.stats.trim_mean(x, 0.25), as rliable)."""
    x = np.sort(np.asarray(x, float).ravel())
    n = len(x)
    return float(x[int(np.floor(n * 0.25)):int(np.ceil(n * 0.75))].mean()) if n else np.nan


def _resample(scores: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """One stratified resample: within each task, its runs drawn with replacement."""
    return [s[rng.integers(0, len(s), len(s))] for s in scores]


def aggregate(scores: list, stat=iqm, reps: int = REPS, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """stat of all runs of all tasks (pooled) and its percentile stratified-bootstrap interval."""
    scores = [np.asarray(s, float) for s in scores if len(s)]
    if not scores:
        return np.nan, np.nan, np.nan
    if min(map(len, scores)) < 2:  # one run on a task: nothing to resample there
        return stat(np.concatenate(scores)), np.nan, np.nan
    rng = np.random.default_rng(seed)
    boot = [stat(np.concatenate(_resample(scores, rng))) for _ in range(reps)]
    q = 100 * (1 - level) / 2
    return stat(np.concatenate(scores)), float(np.percentile(boot, q)), float(np.percentile(boot, 100 - q))


def mean(x) -> float:
    return float(np.mean(x))


def _poi(x: list[np.ndarray], y: list[np.ndarray]) -> float:
    """mean over tasks of P(X > Y) + P(X = Y) / 2 over all pairs of runs (the Mann-Whitney U / (n m))."""
    return float(np.mean([((a[:, None] > b[None]) + 0.5 * (a[:, None] == b[None])).mean() for a, b in zip(x, y)]))


def probability_of_improvement(x: list, y: list, reps: int = REPS, seed: int = 0,
                               level: float = 0.95) -> tuple[float, float, float]:
    """P(X > Y) over the tasks both have, and its interval (X's and Y's runs resampled independently
    within each task). x, y: one array of run scores per task, in the same task order."""
    pairs = [(np.asarray(a, float), np.asarray(b, float)) for a, b in zip(x, y) if len(a) and len(b)]
    if not pairs:
        return np.nan, np.nan, np.nan
    x, y = [a for a, _ in pairs], [b for _, b in pairs]
    if min(map(len, x + y)) < 2:  # one run on a task: nothing to resample there
        return _poi(x, y), np.nan, np.nan
    rng = np.random.default_rng(seed)
    boot = [_poi(_resample(x, rng), _resample(y, rng)) for _ in range(reps)]
    q = 100 * (1 - level) / 2
    return _poi(x, y), float(np.percentile(boot, q)), float(np.percentile(boot, 100 - q))


def performance_profile(scores: list, taus: np.ndarray, reps: int = REPS, seed: int = 0,
                        level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fraction of runs with score > tau for each tau (each task weighted equally), and its pointwise
    stratified-bootstrap interval: (profile, lower, upper), each of len(taus)."""
    scores = [np.asarray(s, float) for s in scores if len(s)]
    taus = np.asarray(taus, float)
    prof = lambda ss: np.mean([(s[:, None] > taus[None]).mean(0) for s in ss], 0)  # noqa: E731
    rng = np.random.default_rng(seed)
    boot = np.stack([prof(_resample(scores, rng)) for _ in range(reps)])
    q = 100 * (1 - level) / 2
    return prof(scores), np.percentile(boot, q, 0), np.percentile(boot, 100 - q, 0)

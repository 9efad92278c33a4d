"""Tail probabilities used to ask "is this much evidence, given the baseline?" (pure, no scipy)."""

from __future__ import annotations

import math

_LOG10 = math.log(10.0)


def poisson_tail_log10(k: float, mu: float) -> float:
    """``-log10 P(X >= k)`` for X ~ Poisson(mu), 0 when k <= mu. Uses the upper bound
    ``pmf(k) * (k + 1) / (k + 1 - mu)`` on the tail (conservative: never overstates the evidence)."""
    if k <= mu or mu <= 0.0:
        return 0.0 if k <= mu else math.inf
    log_pmf = -mu + k * math.log(mu) - math.lgamma(k + 1.0)
    log_tail = log_pmf + math.log((k + 1.0) / (k + 1.0 - mu))
    return max(0.0, -log_tail / _LOG10)


def binomial_tail_log10(k: float, n: float, p: float) -> float:
    """``-log10 P(X >= k)`` for X ~ Binomial(n, p), 0 when k <= n p. Upper bound ``pmf(k) / (1 - r)`` with
    ``r`` the ratio of the next term to this one (the terms' ratio only falls from there)."""
    if k <= n * p:
        return 0.0
    if p <= 0.0:
        return math.inf
    if k >= n:
        return max(0.0, -n * math.log(p) / _LOG10)
    log_pmf = (
        math.lgamma(n + 1.0) - math.lgamma(k + 1.0) - math.lgamma(n - k + 1.0)
        + k * math.log(p) + (n - k) * math.log1p(-p)
    )  # fmt: skip
    r = (n - k) / (k + 1.0) * p / (1.0 - p)
    log_tail = log_pmf - math.log1p(-r) if r < 1.0 else log_pmf + math.log(n - k + 1.0)
    return max(0.0, -log_tail / _LOG10)

"""Streaming means with standard errors, plain and clustered.

Questions that share an image are not independent (Omni3D-Bench has about 2.5
questions per image), so tasks that declare a cluster key also report the
cluster-robust standard error (Miller 2024, "Adding Error Bars to Evals").
The paired tests at the end serve ``harness check``: did a candidate run score
lower than a baseline run on the same samples?
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

Z_95 = 1.959963984540054


@dataclass
class MeanAccumulator:
    """Mean of per-sample scores, accumulated one sample at a time. Memory grows
    with the number of clusters, never with unclustered samples."""

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    clusters: dict[str, list[float]] = field(default_factory=dict)  # key -> [sum, count]
    # Samples without a cluster are clusters of one; their sums suffice.
    single_n: int = 0
    single_total: float = 0.0
    single_total_sq: float = 0.0

    def add(self, value: float, cluster: str | None = None) -> None:
        self.n += 1
        self.total += value
        self.total_sq += value * value
        if cluster is None:
            self.single_n += 1
            self.single_total += value
            self.single_total_sq += value * value
        else:
            entry = self.clusters.setdefault(cluster, [0.0, 0.0])
            entry[0] += value
            entry[1] += 1

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    @property
    def stderr(self) -> float | None:
        """Standard error of the mean from the sample variance (n - 1)."""
        if self.n < 2:
            return None
        mean = self.total / self.n
        variance = max(self.total_sq - self.n * mean * mean, 0.0) / (self.n - 1)
        return math.sqrt(variance / self.n)

    @property
    def clustered_stderr(self) -> float | None:
        """Cluster-robust standard error with the C/(C-1) small-sample factor.

        With every cluster of size one this equals :attr:`stderr`.
        """
        n_clusters = len(self.clusters) + self.single_n
        if n_clusters < 2:
            return None
        mean = self.total / self.n
        residual_sq = sum((total - count * mean) ** 2 for total, count in self.clusters.values())
        residual_sq += max(
            self.single_total_sq - 2 * mean * self.single_total + self.single_n * mean * mean, 0.0
        )
        return math.sqrt(residual_sq * n_clusters / (n_clusters - 1)) / self.n


def ci95(mean: float | None, stderr: float | None) -> tuple[float, float] | None:
    """Normal-approximation 95% interval, clipped to [0, 1] (scores are in [0, 1])."""
    if mean is None or stderr is None:
        return None
    return max(0.0, mean - Z_95 * stderr), min(1.0, mean + Z_95 * stderr)


# --------------------------------------------------------------------------- paired comparisons
#
# Each test below asks one question: does the candidate score lower than the
# baseline on the same samples? Every p-value is one-sided in that direction.

# Up to this many discordant pairs (or clusters) the null distribution is
# computed exactly; above it the normal form is accurate and cheaper.
EXACT_MAX_DISCORDANT = 100


@dataclass(frozen=True)
class PairedTest:
    """A one-sided test of a drop; ``z`` is the standardised difference (0 when none)."""

    method: str
    z: float
    p_value: float


def _upper_normal_tail(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _binomial_upper_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), from exact integer counts."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n


def mcnemar(b: int, c: int) -> PairedTest:
    """McNemar's test for paired 0/1 scores, one-sided for a drop.

    ``b`` counts samples the baseline got right and the candidate wrong, ``c`` the
    reverse; samples both got right or both got wrong say nothing about which is
    better. With no difference each discordant sample is a fair coin, so ``b``
    is Binomial(b + c, 1/2): exact tail up to :data:`EXACT_MAX_DISCORDANT`
    discordant samples, above it the normal form with continuity correction,
    z = (b - c - 1) / sqrt(b + c).
    """
    m = b + c
    z = (b - c) / math.sqrt(m) if m else 0.0
    if m <= EXACT_MAX_DISCORDANT:
        return PairedTest("McNemar exact", z, _binomial_upper_tail(b, m))
    return PairedTest("McNemar normal", z, _upper_normal_tail((b - c - 1) / math.sqrt(m)))


def clustered_mcnemar(cluster_differences: Sequence[int]) -> PairedTest:
    """McNemar's test when samples come in clusters (questions sharing an image).

    Input: per cluster, d = b - c (its baseline-only minus its candidate-only
    right answers). Questions on one image tend to flip together, so the plain
    test, which counts every flip as independent evidence, finds drops that are
    not there. This is Durkalski et al.'s (2003) adjustment: the statistic
    sum(d) / sqrt(sum(d^2)) treats whole clusters as the independent units.
    With no difference between the checkpoints each cluster's d is as likely
    to be positive as negative, so the exact p-value (up to
    :data:`EXACT_MAX_DISCORDANT` clusters with d != 0) comes from flipping the
    signs of the d's; above it, the normal form with the same continuity
    correction as :func:`mcnemar`. With clusters of one sample both forms are
    exactly McNemar's test.
    """
    d = np.asarray(cluster_differences, dtype=np.int64)
    d = d[d != 0]
    total, square_sum = int(d.sum()), int((d * d).sum())
    z = total / math.sqrt(square_sum) if square_sum else 0.0
    if d.size > EXACT_MAX_DISCORDANT:
        return PairedTest("clustered McNemar normal", z, _upper_normal_tail((total - 1) / math.sqrt(square_sum)))
    magnitudes = np.abs(d)
    span = int(magnitudes.sum())
    # Distribution of the summed magnitudes of the clusters whose sign comes out positive.
    dist = np.zeros(span + 1)
    dist[0] = 1.0
    for size in magnitudes:
        shifted = np.zeros_like(dist)
        shifted[size:] = dist[: span + 1 - size]
        dist = 0.5 * (dist + shifted)
    observed = (total + span) // 2
    return PairedTest("clustered McNemar exact", z, min(1.0, float(dist[observed:].sum())))


@dataclass(frozen=True)
class BootstrapResult:
    """Paired bootstrap of the mean drop (baseline minus candidate)."""

    method: str
    drop: float
    ci95: tuple[float, float]  # percentile interval of the drop
    p_value: float


def paired_bootstrap(baseline: Sequence[float], candidate: Sequence[float], clusters: Sequence[Any] | None = None,
                     n_resamples: int = 10_000, seed: int = 0) -> BootstrapResult:
    """Bootstrap of the mean per-sample drop, one-sided p-value for a drop.

    Resamples samples, or whole clusters when given (then each replicate is the
    resampled clusters' summed drop over their summed sizes). The p-value
    centres the replicates on the observed drop to mimic "no difference" and
    counts how often they reach the observed drop: (1 + count) / (1 + N).
    """
    drops = np.asarray(baseline, dtype=float) - np.asarray(candidate, dtype=float)
    if drops.size == 0:
        raise ValueError("paired_bootstrap needs at least one pair")
    if clusters is None:
        sums, sizes = drops, np.ones_like(drops)
    else:
        codes = np.unique(np.asarray(clusters, dtype=str), return_inverse=True)[1]
        sums, sizes = np.bincount(codes, weights=drops), np.bincount(codes).astype(float)
    rng = np.random.default_rng(seed)
    units = sums.size
    replicates = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // units)  # bounds the index matrix to a few tens of MB
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        picks = rng.integers(0, units, size=(rows, units))
        replicates[start:start + rows] = sums[picks].sum(axis=1) / sizes[picks].sum(axis=1)
    observed = float(sums.sum() / sizes.sum())
    # A tiny slack so that ties (identical runs: every replicate 0) count as reaching it.
    reached = np.count_nonzero(replicates - observed >= observed - 1e-12)
    low, high = np.percentile(replicates, [2.5, 97.5])
    method = "cluster bootstrap" if clusters is not None else "paired bootstrap"
    return BootstrapResult(method, observed, (float(low), float(high)), float((1 + reached) / (1 + n_resamples)))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: adjusted p-values, in the input's order."""
    m = len(p_values)
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted

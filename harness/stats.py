"""Streaming means with standard errors, plain and clustered.

Questions that share an image are not independent (Omni3D-Bench has about 2.5
questions per image), so tasks that declare a cluster key also report the
cluster-robust standard error (Miller 2024, "Adding Error Bars to Evals").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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

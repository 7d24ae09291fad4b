"""Tests for the streaming mean, its standard error and the cluster-robust standard error."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from statistics import NormalDist

import numpy as np
import pytest

from harness.stats import Z_95, MeanAccumulator, ci95


def accumulate(values, clusters=None):
    acc = MeanAccumulator()
    for i, value in enumerate(values):
        acc.add(value, None if clusters is None else clusters[i])
    return acc


def cr1_stderr(values, clusters):
    """The CR1 cluster-robust standard error of the mean, written out directly.

    A cluster of ``None`` means the sample is its own cluster.
    """
    values = np.asarray(values, dtype=float)
    n = len(values)
    mean = values.mean()
    groups = defaultdict(list)
    for i, (value, key) in enumerate(zip(values, clusters)):
        groups[("single", i) if key is None else ("key", key)].append(value - mean)
    n_clusters = len(groups)
    meat = sum(sum(residuals) ** 2 for residuals in groups.values())
    return math.sqrt(n_clusters / (n_clusters - 1) * meat) / n


# --------------------------------------------------------------------------- mean and stderr


def test_mean_and_stderr_by_hand():
    acc = accumulate([1, 0, 1, 1])
    assert acc.n == 4
    assert acc.mean == 0.75
    # sample variance: (3 * 0.0625 + 0.5625) / 3 = 0.25; stderr = sqrt(0.25 / 4)
    assert acc.stderr == pytest.approx(0.25)


def test_mean_and_stderr_match_numpy():
    rng = np.random.default_rng(7)
    values = rng.random(257)
    acc = accumulate(values.tolist())
    assert acc.mean == pytest.approx(values.mean(), rel=1e-12)
    assert acc.stderr == pytest.approx(values.std(ddof=1) / math.sqrt(len(values)), rel=1e-9)


def test_mean_and_stderr_binary_scores_match_numpy():
    rng = np.random.default_rng(11)
    values = (rng.random(1000) < 0.3).astype(float)
    acc = accumulate(values.tolist())
    assert acc.mean == pytest.approx(values.mean())
    assert acc.stderr == pytest.approx(values.std(ddof=1) / math.sqrt(1000), rel=1e-9)


def test_constant_scores_have_zero_error():
    for value in (0.0, 1.0, 0.7, 0.1):
        acc = accumulate([value] * 10)
        assert acc.mean == pytest.approx(value)
        assert acc.stderr == pytest.approx(0.0, abs=1e-7)
        assert acc.stderr >= 0.0
        assert acc.clustered_stderr == pytest.approx(0.0, abs=1e-7)


def test_order_does_not_matter():
    rng = random.Random(3)
    values = [rng.random() for _ in range(40)]
    clusters = [f"img{rng.randrange(12)}" for _ in range(40)]
    forward = accumulate(values, clusters)
    pairs = list(zip(values, clusters))
    rng.shuffle(pairs)
    shuffled = accumulate([v for v, _ in pairs], [c for _, c in pairs])
    assert shuffled.mean == pytest.approx(forward.mean)
    assert shuffled.stderr == pytest.approx(forward.stderr)
    assert shuffled.clustered_stderr == pytest.approx(forward.clustered_stderr)


# --------------------------------------------------------------------------- too few samples


def test_empty_accumulator():
    acc = MeanAccumulator()
    assert acc.n == 0
    assert acc.mean is None
    assert acc.stderr is None
    assert acc.clustered_stderr is None


@pytest.mark.parametrize("cluster", [None, "img0"])
def test_single_sample(cluster):
    acc = MeanAccumulator()
    acc.add(0.5, cluster)
    assert acc.mean == 0.5
    assert acc.stderr is None
    assert acc.clustered_stderr is None
    assert ci95(acc.mean, acc.stderr) is None


def test_one_cluster_has_no_clustered_error():
    acc = accumulate([1, 0, 1, 0, 1], ["same"] * 5)
    assert acc.stderr is not None
    assert acc.clustered_stderr is None


def test_two_samples_two_clusters():
    acc = accumulate([1.0, 0.0], ["a", "b"])
    # variance 0.5, stderr sqrt(0.5 / 2) = 0.5
    assert acc.stderr == pytest.approx(0.5)
    assert acc.clustered_stderr == pytest.approx(0.5)


# --------------------------------------------------------------------------- clustered stderr


def test_clusters_of_one_equal_plain_stderr_without_keys():
    rng = np.random.default_rng(5)
    values = rng.random(60).tolist()
    acc = accumulate(values)
    assert acc.clustered_stderr == pytest.approx(acc.stderr, rel=1e-9)


def test_clusters_of_one_equal_plain_stderr_with_keys():
    rng = np.random.default_rng(6)
    values = rng.random(60).tolist()
    acc = accumulate(values, [f"img{i}" for i in range(60)])
    assert acc.clustered_stderr == pytest.approx(acc.stderr, rel=1e-9)
    assert len(acc.clusters) == 60 and acc.single_n == 0


def test_clusters_of_one_equal_plain_stderr_mixed_keys_and_singles():
    values = [1, 0, 0, 1, 1, 1, 0, 1, 0.5, 0.25]
    clusters = ["a", None, "b", None, "c", "d", None, None, "e", None]
    acc = accumulate(values, clusters)
    assert acc.clustered_stderr == pytest.approx(acc.stderr, rel=1e-9)
    assert acc.clustered_stderr == pytest.approx(cr1_stderr(values, clusters), rel=1e-9)


def test_correlated_clusters_by_hand():
    # four images, five questions each, every answer on an image right or wrong together
    values = [1] * 5 + [0] * 5 + [1] * 5 + [1] * 5
    clusters = ["a"] * 5 + ["b"] * 5 + ["c"] * 5 + ["d"] * 5
    acc = accumulate(values, clusters)
    assert acc.mean == 0.75
    # plain: sum of squared residuals 15 * 0.0625 + 5 * 0.5625 = 3.75
    assert acc.stderr == pytest.approx(math.sqrt(3.75 / 19 / 20))
    # clustered: cluster residual sums 1.25, -3.75, 1.25, 1.25 -> 18.75; * 4/3 = 25; sqrt / 20
    assert acc.clustered_stderr == pytest.approx(0.25)
    assert acc.clustered_stderr > 2 * acc.stderr


def test_correlated_clusters_are_wider_than_plain():
    rng = np.random.default_rng(21)
    values, clusters = [], []
    for image in range(50):
        difficulty = rng.random()  # questions on one image share how hard it is
        for _ in range(4):
            values.append(float(rng.random() < difficulty))
            clusters.append(f"img{image}")
    acc = accumulate(values, clusters)
    assert acc.clustered_stderr > 1.2 * acc.stderr
    assert acc.clustered_stderr == pytest.approx(cr1_stderr(values, clusters), rel=1e-9)


def test_anticorrelated_clusters_cancel():
    # every image has one right and one wrong answer: cluster means equal the overall mean
    values = [1, 0] * 6
    clusters = [f"img{i // 2}" for i in range(12)]
    acc = accumulate(values, clusters)
    assert acc.mean == 0.5
    assert acc.clustered_stderr == pytest.approx(0.0, abs=1e-12)
    assert acc.stderr == pytest.approx(math.sqrt(12 * 0.25 / 11 / 12))


@pytest.mark.parametrize("seed", range(5))
def test_clustered_stderr_matches_cr1_formula(seed):
    rng = random.Random(seed)
    values, clusters = [], []
    for _ in range(rng.randrange(20, 120)):
        values.append(rng.choice([0.0, 1.0, rng.random()]))
        # unbalanced clusters, some samples without a cluster key
        clusters.append(None if rng.random() < 0.3 else f"img{int(rng.expovariate(0.2))}")
    acc = accumulate(values, clusters)
    assert acc.n == len(values)
    assert acc.mean == pytest.approx(sum(values) / len(values))
    assert acc.clustered_stderr == pytest.approx(cr1_stderr(values, clusters), rel=1e-9)


def test_cluster_keys_need_not_be_strings():
    acc_int = accumulate([1, 0, 1, 1, 0, 0], [1, 1, 2, 2, 3, 3])
    acc_str = accumulate([1, 0, 1, 1, 0, 0], ["1", "1", "2", "2", "3", "3"])
    assert acc_int.clustered_stderr == pytest.approx(acc_str.clustered_stderr)


# --------------------------------------------------------------------------- ci95


def test_z_95():
    assert Z_95 == pytest.approx(NormalDist().inv_cdf(0.975), rel=1e-12)


def test_ci95_inside_unit_interval():
    low, high = ci95(0.5, 0.1)
    assert low == pytest.approx(0.5 - 0.1959963984540054)
    assert high == pytest.approx(0.5 + 0.1959963984540054)


def test_ci95_clipped():
    assert ci95(0.95, 0.1) == (pytest.approx(0.95 - Z_95 * 0.1), 1.0)
    assert ci95(0.05, 0.1) == (0.0, pytest.approx(0.05 + Z_95 * 0.1))
    assert ci95(0.5, 1.0) == (0.0, 1.0)
    assert ci95(1.0, 0.0) == (1.0, 1.0)
    assert ci95(0.0, 0.0) == (0.0, 0.0)


def test_ci95_missing_parts():
    assert ci95(None, 0.1) is None
    assert ci95(0.5, None) is None
    assert ci95(None, None) is None


def test_ci95_from_accumulator():
    acc = accumulate([1, 0, 1, 1])
    low, high = ci95(acc.mean, acc.stderr)
    assert low == pytest.approx(0.75 - Z_95 * 0.25)
    assert high == 1.0  # 0.75 + 0.49 clipped

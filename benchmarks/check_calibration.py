"""Calibration of the regression check's tests on simulated pairs of runs.

Each simulated pair is a baseline and a candidate scored on the same questions.
A question's chance of being answered right comes from a logit shared by both
checkpoints (the question's difficulty and its image's), plus, per image, an
effect of each checkpoint's own (it happens to read that image well or badly),
which makes the questions of one image flip together; the candidate's logit is
lowered by a shift to create a true drop. With no shift the two checkpoints are
exchangeable, so a test's rejection rate should be near alpha (its type I
error); with a shift it is the test's power. Prints the one-sided rejection
rates of the plain and clustered tests that ``harness check`` uses.

    python benchmarks/check_calibration.py [--sims 1000] [--alpha 0.05] [--bootstrap 1000]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from harness.stats import clustered_mcnemar, mcnemar, paired_bootstrap


@dataclass(frozen=True)
class Scenario:
    name: str
    images: int
    per_image: int
    image_sd: float  # image effect shared by both checkpoints
    checkpoint_sd: float  # each checkpoint's own effect per image: what clusters the flips
    binary: bool


SCENARIOS = [
    Scenario("independent, 0/1, 500 questions", 500, 1, 0.0, 0.0, True),
    Scenario("clustered, 0/1, 100 images x 5", 100, 5, 1.0, 1.5, True),
    Scenario("clustered, partial credit, 100 images x 3", 100, 3, 1.0, 1.0, False),
]
SHIFTS = (0.0, 0.1, 0.3, 0.5)  # candidate logit shift; 0 is "no true difference"


def simulate(scenario: Scenario, shift: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = scenario.images * scenario.per_image
    image = np.repeat(np.arange(scenario.images), scenario.per_image)
    shared = rng.normal(0.4, 1.0, n) + rng.normal(0.0, scenario.image_sd, scenario.images)[image]
    base_logit = shared + rng.normal(0.0, scenario.checkpoint_sd, scenario.images)[image]
    cand_logit = shared + rng.normal(0.0, scenario.checkpoint_sd, scenario.images)[image] - shift
    if scenario.binary:
        base = (rng.random(n) < 1 / (1 + np.exp(-base_logit))).astype(float)
        cand = (rng.random(n) < 1 / (1 + np.exp(-cand_logit))).astype(float)
    else:  # a score in [0, 1] with noise of its own per answer
        base = 1 / (1 + np.exp(-(base_logit + rng.normal(0.0, 1.0, n))))
        cand = 1 / (1 + np.exp(-(cand_logit + rng.normal(0.0, 1.0, n))))
    return base, cand, image


def p_values(scenario: Scenario, base: np.ndarray, cand: np.ndarray, image: np.ndarray,
             bootstrap: int, seed: int) -> dict[str, float]:
    out = {}
    if scenario.binary:
        lost, gained = (base == 1) & (cand == 0), (base == 0) & (cand == 1)
        out["McNemar"] = mcnemar(int(lost.sum()), int(gained.sum())).p_value
        per_image = np.bincount(image, weights=lost.astype(float) - gained.astype(float))
        out["clustered McNemar"] = clustered_mcnemar(np.rint(per_image).astype(int)).p_value
    out["paired bootstrap"] = paired_bootstrap(base, cand, None, bootstrap, seed).p_value
    out["cluster bootstrap"] = paired_bootstrap(base, cand, image, bootstrap, seed).p_value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sims", type=int, default=1000, help="simulated pairs of runs per row")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples per bootstrap test")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    tests = ["McNemar", "clustered McNemar", "paired bootstrap", "cluster bootstrap"]
    rows = []
    for scenario in SCENARIOS:
        for shift in SHIFTS:
            rejected = {t: 0 for t in tests}
            drops = []
            for sim in tqdm(range(args.sims), desc=f"{scenario.name}, shift {shift}", leave=False,
                            disable=None):
                base, cand, image = simulate(scenario, shift, rng)
                drops.append(100 * (base.mean() - cand.mean()))
                for test, p in p_values(scenario, base, cand, image, args.bootstrap, sim).items():
                    rejected[test] += p < args.alpha
            rates = [f"{100 * rejected[t] / args.sims:.1f}" if scenario.binary or "bootstrap" in t else "-"
                     for t in tests]
            mean_drop = round(float(np.mean(drops)), 1) + 0.0  # + 0.0: no "-0.0"
            rows.append([scenario.name, f"{shift:g}", f"{mean_drop:.1f}", *rates])

    print(f"Rejection rates (%) of the one-sided tests at alpha {args.alpha:g}, {args.sims} simulated pairs of runs "
          f"per row (Monte Carlo error about {100 * np.sqrt(args.alpha * (1 - args.alpha) / args.sims):.1f} "
          f"pts at alpha); shift 0 = no true difference (type I error), others = power\n")
    header = ["scenario", "logit shift", "mean drop (pts)", *tests]
    print("| " + " | ".join(header) + " |")
    print("|---|" + "|".join("---:" for _ in header[1:]) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

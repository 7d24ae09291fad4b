"""Evaluation protocols: the run-level choice of everything that shapes a request and its scoring.

- ``paper``: the original VALOR evaluation at its pinned commit (see
  :mod:`harness.upstream`): its program-writer prompt and message layout, its
  tool API as programs see it (``img_pth``, ``det["bbox"]``), its reply parsing
  and execution wrapper, its question text and gold mapping, its GQA judge and
  its scoring rules. Bugs of the original that are not protocol are fixed and
  listed in ``docs/protocols.md``.
- ``harness``: ours: a documented tool API, tolerant reply parsing, strict
  scoring as the headline number, the original's rules beside it.

A run records its protocol (run.json, results.json), and every place that shows
a number says which protocol produced it. Each layer implements its own face of
a protocol; this module only names them.
"""

from __future__ import annotations

PAPER = "paper"
HARNESS = "harness"
PROTOCOLS = (PAPER, HARNESS)

# The score each protocol reports first: the original's rule, or strict.
HEADLINE_SCORE = {PAPER: "compat", HARNESS: "strict"}

# Paper protocol: gd_detect keeps only boxes whose phrase was asked ("fixed"), or, as the
# original did, every box as soon as one phrase was asked ("original").
LABEL_FILTERS = ("fixed", "original")


class ProtocolError(ValueError):
    """An unknown protocol name."""


def check_protocol(name: str | None, where: str = "--protocol") -> str:
    if name not in PROTOCOLS:
        raise ProtocolError(f"{where}: unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    return name

"""A set of sample ids that costs 16 bytes an id, for runs of hundreds of thousands of samples.

A Python set of short strings costs about 100 bytes an id; a run holds several such sets
(samples recorded, samples of a task, lines of a predictions file), so they would be most
of what a large run keeps in memory. Here each id is kept as its 128-bit BLAKE2b digest in
a sorted NumPy array (a collision is as likely as guessing a random 128-bit key), with the
latest additions in a small Python set until there are enough of them to merge.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np

DIGEST = np.dtype("S16")
_MERGE_AT = 4096  # additions kept apart before a merge into the sorted array


def digest(text: str) -> bytes:
    """The 16-byte key of a text (an id, or a task and an id joined by a NUL)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def sorted_digests(keys: Iterable[bytes]) -> np.ndarray:
    return np.sort(np.fromiter(keys, dtype=DIGEST))


class IdSet:
    """Ids added one at a time, tested for membership; they cannot be listed back."""

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._sorted = np.empty(0, dtype=DIGEST)
        self._recent: set[bytes] = set()
        for sample_id in ids:
            self.add(sample_id)

    def add(self, sample_id: str) -> bool:
        """Add an id; False when it was there already."""
        key = digest(sample_id)
        if key in self._recent or self._holds(key):
            return False
        self._recent.add(key)
        if len(self._recent) >= _MERGE_AT:
            self._merge()
        return True

    def __contains__(self, sample_id: object) -> bool:
        if not isinstance(sample_id, str) or not (self._recent or len(self._sorted)):
            return False
        key = digest(sample_id)
        return key in self._recent or self._holds(key)

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    def _holds(self, key: bytes) -> bool:
        if not len(self._sorted):
            return False
        at = int(self._sorted.searchsorted(key))
        # An element reads back without its trailing NUL bytes (NumPy's padding of S16).
        return at < len(self._sorted) and self._sorted[at] == key.rstrip(b"\0")

    def _merge(self) -> None:
        new = sorted_digests(self._recent)
        self._sorted = np.insert(self._sorted, self._sorted.searchsorted(new), new)
        self._recent = set()

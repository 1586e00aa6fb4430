"""A held-out split of any source, for evaluation during training.

A clip is held out by a hash of its identity (its path for a manifest, its position for TFDS / ArrayRecord / the
procedural dataset) and the split's seed, never by its position in a shuffled order: the split is the same on every
host, in every run and after a restart, and a clip stays on its side when the manifest grows or is reordered. The
held-out clips are those with the smallest hashes, ``min(max_clips, ceil(fraction * len(source)))`` of them; the
training source is every other clip, so no held-out clip is ever trained on.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np


def clip_identity(source: Any, index: int) -> str:
    """What names clip ``index`` of ``source`` independently of the other clips: ``source.clip_identity(index)`` when
    the source has one (manifests: the audio path), else the index."""
    identify = getattr(source, "clip_identity", None)
    return str(identify(int(index))) if identify is not None else str(int(index))


def held_out_order(source: Any, seed: int) -> np.ndarray:
    """Every index of ``source``, sorted by the hash of ``(seed, identity)``: the held-out split takes a prefix."""
    def score(index: int) -> int:
        digest = hashlib.blake2b(f"{int(seed)}:{clip_identity(source, index)}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little")

    scores = np.fromiter((score(i) for i in range(len(source))), dtype=np.uint64, count=len(source))
    return np.argsort(scores, kind="stable")


class Subset:
    """The clips ``indices`` of ``source``, as a random-access source (picklable like its parent)."""

    def __init__(self, source: Any, indices: np.ndarray, name: str):
        self.source = source
        self.indices = np.asarray(indices, np.int64)
        self.name = name

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return self.source[int(self.indices[int(index)])]

    def clip_identity(self, index: int) -> str:
        return clip_identity(self.source, int(self.indices[int(index)]))

    def __repr__(self) -> str:
        # part of the input pipeline's fingerprint: a run resumed with another split is refused, not silently mixed
        return f"Subset({self.name}, {len(self)} of {self.source!r})"


def split_held_out(source: Any, fraction: float, max_clips: int, seed: int = 0) -> tuple[Subset, Subset]:
    """``(training, held_out)`` sources of ``source`` (see the module docstring).

    Raises a ValueError when the split leaves no clip on either side."""
    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    total = len(source)
    count = min(int(max_clips), math.ceil(fraction * total))
    if count < 1 or count >= total:
        raise ValueError(f"a held-out split of {fraction:g} (at most {max_clips} clips) of {total} clips leaves "
                         f"{count} held out and {total - count} to train on: both need at least one clip ({source!r})")
    order = held_out_order(source, seed)
    held = np.sort(order[:count])
    train = np.sort(order[count:])
    spec = f"fraction={fraction:g}, max_clips={int(max_clips)}, seed={int(seed)}"
    return Subset(source, train, f"training split, {spec}"), Subset(source, held, f"held-out split, {spec}")

"""Randomness keyed on what it is for, so a resumed run draws exactly what an uninterrupted run draws.

Every random draw of training (data order, augmentation of each example, masks, dropout, mixup) comes from a seed
derived from `--seed` and a key such as (epoch, example index) or (process, epoch, batch index) — never from a
generator whose state depends on how far an interrupted run got.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def _as_entropy(key: int | str) -> int:
    if isinstance(key, str):
        return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    if key < 0:
        raise ValueError(f"seed keys must be non-negative integers or strings, got {key}")
    return int(key)


def derive_seed(*keys: int | str) -> int:
    """A 63-bit seed mixed from `keys` (non-negative ints or strings); the same keys give the same seed everywhere."""
    state = np.random.SeedSequence([_as_entropy(key) for key in keys]).generate_state(1, dtype=np.uint64)
    return int(state[0]) >> 1


def keyed_generator(*keys: int | str) -> torch.Generator:
    """A CPU `torch.Generator` seeded with `derive_seed(*keys)`."""
    return torch.Generator().manual_seed(derive_seed(*keys))


__all__ = ["derive_seed", "keyed_generator"]

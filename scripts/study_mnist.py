"""The MNIST study behind docs/results.md: MAGE, MAGE-C, MAE and I-JEPA pretrained on the same digits through the
package's one training loop, probed against raw pixels and their own random initialisation, and MAGE's
masking-ratio ablation scored on both representation and generation.

    python scripts/study_mnist.py                  # the whole study (resumable: rerun the same command)
    python scripts/study_mnist.py --quick --work-dir /tmp/q --docs-dir /tmp/q/docs   # CI: tiny budget, same path
    python scripts/study_mnist.py --report-only    # re-render docs/results.md from what has finished

Phases, in this order, every result cached under `--work-dir` (default out/study/) so that a rerun skips what is
done and resumes an interrupted training run from its newest checkpoint:
1. raw-pixel probes;
2. the sweep (seed 0, `sweep_steps`): learning rate for every method, plus MAE's mask ratio and I-JEPA's EMA
   momentum and target-block scale; each method keeps the point with the best linear probe on a validation split
   held out of the training digits (never the test digits);
3. per seed: each method's random initialisation probed, the chosen configuration trained for `steps` and probed
   at half and full budget, and MAGE's two other masking distributions (the ablation) trained and probed; every
   MAGE run's samples are scored (Inception FID / KID / precision / recall, the MNIST judge's score and FD);
4. the report: docs/results.md, docs/results.json and the plots docs/images/results_*.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


@dataclass(frozen=True)
class Budget:
    """Steps, batch, seeds and evaluation sizes of one study (the defaults: the CPU run behind docs/results.md)."""

    steps: int = 320
    sweep_steps: int = 80
    batch_size: int = 64  # images per step; MAGE-C takes half as many images, two views each
    seeds: tuple[int, ...] = (0, 1, 2)
    learning_rates: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    centre_learning_rate: float = 1e-3  # where MAE's and I-JEPA's other sweep axes are tried
    extra_sweeps: bool = True  # MAE mask ratio, I-JEPA EMA and target scale
    max_train_samples: int | None = None  # pretraining on the first N training digits (quick runs)
    probe_per_class: int | None = None  # probe sets: the first N digits of every class (quick runs)
    probe_test_per_class: int | None = None
    shots: tuple[int, ...] = (1, 5, 10)
    shot_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    samples: int = 200  # generated digits per MAGE run
    sample_batch_size: int = 100
    sample_steps: int = 12
    choice_temperature: float = 4.5
    logging_steps: int = 50
    judge_iterations: int | None = None  # None: the package's MNIST judge; N: a quick one fitted on the probe set


QUICK = Budget(steps=2, sweep_steps=2, batch_size=8, seeds=(0,), learning_rates=(1e-3, 3e-3), extra_sweeps=False,
               max_train_samples=64, probe_per_class=10, probe_test_per_class=2, shots=(1, 5), shot_seeds=(0,),
               samples=4, sample_batch_size=4, sample_steps=2, logging_steps=1, judge_iterations=20)

# The shared recipe of every run (MAGE's pretraining optimizer; one crop scale and no flips for digits).
RECIPE = {"--weight-decay": "0.05", "--adam-beta1": "0.9", "--adam-beta2": "0.95", "--max-grad-norm": "3.0",
          "--min-crop-scale": "0.6"}
WARMUP_FRACTION = 0.1
CHECKPOINTS_PER_RUN = 4  # resumable every quarter; probed at half and full budget
VALIDATION_FRACTION = 0.25  # of every class of the training digits, for the sweep's choice
SWEEP_SEED = 0
# MAGE-C's projection head, narrowed from SimCLR's 2048 -> 256 to the width of these encoders.
MAGE_C_HEAD = ["--contrastive-hidden-size", "512", "--contrastive-projection-dim", "128"]
MAGE_SIZES = {"num_class_slots": 1, "hidden_size": 128, "num_hidden_layers": 6, "num_attention_heads": 4,
              "mlp_ratio": 4.0, "decoder_hidden_size": 128, "decoder_num_hidden_layers": 3,
              "decoder_num_attention_heads": 4}
# MAGE's masking-ratio distributions (ablation): truncated normal (mu, std) on [min, max]; min = max is fixed.
MASKINGS = {
    "truncnorm": {"label": "truncated normal 50-100 % (MAGE's)", "mask_ratio_min": 0.5, "mask_ratio_max": 1.0,
                  "mask_ratio_mu": 0.55, "mask_ratio_std": 0.25},
    "fixed75": {"label": "fixed 75 %", "mask_ratio_min": 0.75, "mask_ratio_max": 0.75, "mask_ratio_mu": 0.75,
                "mask_ratio_std": 0.25},
    "fixed90": {"label": "fixed 90 %", "mask_ratio_min": 0.9, "mask_ratio_max": 0.9, "mask_ratio_mu": 0.9,
                "mask_ratio_std": 0.25},
}
DEFAULT_HYPER = {"mae": {"mask_ratio": 0.75}, "ijepa": {"ema": 0.996, "target_scale": (0.15, 0.2)},
                 "mage": {"masking": "truncnorm"}, "mage-c": {"masking": "truncnorm"}}
METHODS = ("mage", "mage-c", "mae", "ijepa")


@dataclass(frozen=True)
class Run:
    """One training run of the study."""

    group: str  # sweep | main | ablation
    method: str
    seed: int
    steps: int
    hyper: dict = field(hash=False)

    @property
    def name(self) -> str:
        parts = [f"{k}{'-'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in sorted(self.hyper.items())]
        return f"{self.group}/{self.method}-{'-'.join(parts)}-s{self.seed}".replace("_", "")

    @property
    def probe_steps(self) -> list[int]:
        return [self.steps] if self.group == "sweep" else [self.steps // 2, self.steps]


class Study:
    def __init__(self, budget: Budget, work_dir: Path, tokenizer: str | None = None, log=print):
        from mage_hf import DEFAULT_PIPELINE
        from mage_hf.comparison.harness import CONTENDERS

        self.budget, self.work_dir, self.log = budget, work_dir, log
        self.tokenizer = _shown(tokenizer or DEFAULT_PIPELINE)
        self.contenders = CONTENDERS
        self.dataset = work_dir / "mnist"
        self._data = self._scorer = None

    # ------------------------------------------------------------------------------------------------------------
    # Flags
    # ------------------------------------------------------------------------------------------------------------

    def flags(self, run: Run) -> list[str]:
        """The training command's flags for `run` (the same recipe for every method)."""
        b = self.budget
        batch = b.batch_size // 2 if run.method == "mage-c" else b.batch_size
        flags = ["--dataset-name", _shown(self.dataset), "--output-dir", _shown(self.run_dir(run)),
                 "--train-batch-size", str(batch), "--max-train-steps", str(run.steps),
                 "--warmup-steps", str(max(1, round(WARMUP_FRACTION * run.steps))),
                 "--learning-rate", f"{run.hyper['lr']:g}", *[x for kv in RECIPE.items() for x in kv],
                 "--no-horizontal-flip", "--checkpointing-steps", str(max(1, run.steps // CHECKPOINTS_PER_RUN)),
                 "--seed", str(run.seed), "--logging-steps", str(b.logging_steps), "--resume-from-checkpoint", "latest"]
        if b.max_train_samples is not None:
            flags += ["--max-train-samples", str(b.max_train_samples)]
        hyper = run.hyper
        if run.method in ("mage", "mage-c"):
            flags += ["--model-config", _shown(self.mage_config(hyper["masking"])), "--tokenizer", self.tokenizer]
            if run.method == "mage-c":
                flags += MAGE_C_HEAD
        elif run.method == "mae":
            flags += ["--model-config", "mnist", "--mask-ratio", f"{hyper['mask_ratio']:g}"]
        else:
            low, high = hyper["target_scale"]
            flags += ["--model-config", "mnist", "--ema-momentum", f"{hyper['ema']:g}", "1",
                      "--target-scale", f"{low:g}", f"{high:g}"]
        return flags

    def mage_config(self, masking: str) -> Path:
        """A `--model-config` file: the matched sizes, the shipped tokenizer's codebook, one masking distribution."""
        path = self.work_dir / "configs" / f"mage-{masking}.json"
        if not path.exists():
            from mage_hf import DEFAULT_MODEL

            shipped = json.loads((Path(DEFAULT_MODEL) / "config.json").read_text())
            fields = {k: v for k, v in MASKINGS[masking].items() if k != "label"}
            config = {"model_type": "mage", "image_size": shipped["image_size"],
                      "codebook_size": shipped["codebook_size"], "fake_class_id": shipped["codebook_size"],
                      "max_position_embeddings": 1 + (shipped["image_size"] // 4) ** 2,
                      "vq_config": shipped["vq_config"], **MAGE_SIZES, **fields}
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(config, indent=2))
        return path

    def run_dir(self, run: Run) -> Path:
        return self.work_dir / "runs" / run.name

    # ------------------------------------------------------------------------------------------------------------
    # The plan
    # ------------------------------------------------------------------------------------------------------------

    def sweep_runs(self) -> list[Run]:
        b = self.budget
        runs = []
        for method in METHODS:
            for lr in b.learning_rates:
                runs.append(Run("sweep", method, SWEEP_SEED, b.sweep_steps, {"lr": lr, **DEFAULT_HYPER[method]}))
        if b.extra_sweeps:
            centre = b.centre_learning_rate
            runs += [Run("sweep", "mae", SWEEP_SEED, b.sweep_steps, {"lr": centre, "mask_ratio": m}) for m in (0.5, 0.9)]
            runs += [Run("sweep", "ijepa", SWEEP_SEED, b.sweep_steps,
                         {"lr": centre, "ema": ema, "target_scale": scale})
                     for ema, scale in ((0.98, (0.15, 0.2)), (0.996, (0.1, 0.15)))]
        return runs

    def chosen(self, method: str) -> dict:
        """The sweep point of `method` with the best validation linear probe (ties: the first)."""
        best = None
        for run in self.sweep_runs():
            if run.method != method:
                continue
            record = self.record(run)
            result = record.get("probes", {}).get(str(run.steps), {}).get("validation", {})
            accuracy = result.get("linear", {}).get("accuracy", -1.0)
            if best is None or accuracy > best[0]:
                best = (accuracy, run.hyper)
        return dict(best[1])

    def main_runs(self, seed: int) -> list[Run]:
        return [Run("main", method, seed, self.budget.steps, self.chosen(method)) for method in METHODS]

    def ablation_runs(self, seed: int) -> list[Run]:
        lr = self.chosen("mage")["lr"]
        return [Run("ablation", "mage", seed, self.budget.steps, {"lr": lr, "masking": masking})
                for masking in MASKINGS if masking != "truncnorm"]

    # ------------------------------------------------------------------------------------------------------------
    # Records and data
    # ------------------------------------------------------------------------------------------------------------

    def record_path(self, run: Run) -> Path:
        return self.run_dir(run) / "study_run.json"

    def record(self, run: Run) -> dict:
        path = self.record_path(run)
        return json.loads(path.read_text()) if path.exists() else {}

    def save_record(self, run: Run, record: dict) -> None:
        from mage_hf.atomic_files import write_json_atomically

        write_json_atomically(self.record_path(run), record)

    @property
    def data(self):
        if self._data is None:
            from mage_hf.comparison.harness import ProbeData

            b = self.budget
            self._data = ProbeData.from_saved_dataset(self.dataset, max_per_class=b.probe_per_class,
                                                      max_test_per_class=b.probe_test_per_class)
        return self._data

    def prepare(self) -> None:
        from mage_hf.mnist import save_mnist

        if not (self.dataset / "dataset_dict.json").exists():
            self.log(f"writing the digits to {self.dataset}")
            save_mnist(self.dataset)

    # ------------------------------------------------------------------------------------------------------------
    # Phases
    # ------------------------------------------------------------------------------------------------------------

    def raw_pixels(self) -> dict:
        path = self.work_dir / "raw_pixels.json"
        if path.exists():
            return json.loads(path.read_text())
        from mage_hf.comparison.harness import probe_features, raw_pixel_features
        from mage_hf.atomic_files import write_json_atomically

        b, data = self.budget, self.data
        train_x, test_x = raw_pixel_features(data.train_images), raw_pixel_features(data.test_images)
        results = probe_features(train_x, data.train_labels, test_x, data.test_labels, shots=b.shots,
                                 seeds=b.shot_seeds)
        fit, held = data.validation_indices(VALIDATION_FRACTION)
        results["validation"] = probe_features(train_x[fit], data.train_labels[fit], train_x[held],
                                               data.train_labels[held], probes=("linear",))
        write_json_atomically(path, results)
        self.log(f"raw pixels: linear {results['linear']['accuracy']:.3f} k-NN {results['knn']['accuracy']:.3f}")
        return results

    def shipped_probes(self) -> dict:
        """The shipped mage-mnist's encoder, probed the same way: a reference for a longer budget (120 epochs on a
        GPU, class-conditional, so its pretraining saw the labels)."""
        path = self.work_dir / "shipped_probes.json"
        if path.exists():
            return json.loads(path.read_text())
        from mage_hf import DEFAULT_MODEL, MageForMaskedImageModeling
        from mage_hf.atomic_files import write_json_atomically
        from mage_hf.comparison.harness import probe_encoder

        model = MageForMaskedImageModeling.from_pretrained(DEFAULT_MODEL)
        results = probe_encoder(*self.contenders["mage"].evaluation_encoder(model), self.data,
                                shots=self.budget.shots, seeds=self.budget.shot_seeds)
        write_json_atomically(path, results)
        self.log(f"shipped mage-mnist: {_summary(results)}")
        return results

    def train(self, run: Run) -> None:
        """Train `run` unless its final folder exists (an interrupted run resumes from its newest checkpoint)."""
        contender = self.contenders[run.method]
        flags = self.flags(run)
        record = self.record(run)
        command = contender.command_line(flags)
        if record and record["command"] != command:
            raise ValueError(f"{self.run_dir(run)} was made by another command; use a new `--work-dir`.\n"
                             f"  recorded: {record['command']}\n  now:      {command}")
        record.setdefault("command", command)
        record.update(name=run.name, group=run.group, method=run.method, seed=run.seed, steps=run.steps,
                      hyper={k: list(v) if isinstance(v, tuple) else v for k, v in run.hyper.items()})
        run_dir = self.run_dir(run)
        if (run_dir / "training_summary.json").exists() and (run_dir / "config.json").exists():
            return
        self.save_record(run, record)
        self.log(f"training {run.name}: {command}")
        start = time.perf_counter()
        contender.train(flags)
        record["train_seconds"] = record.get("train_seconds", 0.0) + time.perf_counter() - start
        self.save_record(run, record)
        self.log(f"trained {run.name} in {record['train_seconds'] / 60:.1f} min")

    def probe(self, run: Run) -> None:
        """Probe the checkpoints of `run` at its probe steps (few-shot at the last; the sweep's also on the
        validation split)."""
        from mage_hf.comparison.harness import load_checkpoint, probe_encoder

        record = self.record(run)
        probes = record.setdefault("probes", {})
        todo = [step for step in run.probe_steps if str(step) not in probes]
        if not todo:
            return
        contender, b = self.contenders[run.method], self.budget
        module = contender.initial_module(self.flags(run))
        for step in todo:
            load_checkpoint(module, self.run_dir(run) / f"checkpoint-{step}")
            final = step == run.steps
            probes[str(step)] = probe_encoder(
                *contender.evaluation_encoder(module), self.data,
                probes=("linear", "knn", "few-shot") if final else ("linear", "knn"), shots=b.shots,
                seeds=b.shot_seeds, validation_fraction=VALIDATION_FRACTION if run.group == "sweep" else None,
            )
            self.save_record(run, record)
            self.log(f"{run.name} step {step}: {_summary(probes[str(step)])}")

    def probe_initialisation(self, run: Run) -> dict:
        """The encoder `run` starts from (its step 0), probed like the trained one (seed 0, the sweep's seed: also on
        the validation split); shared by runs whose initial weights are the same (method and seed: the masking
        distribution changes no weight)."""
        from mage_hf.atomic_files import write_json_atomically
        from mage_hf.comparison.harness import probe_encoder

        path = self.init_path(run)
        cached = json.loads(path.read_text()) if path.exists() else {}
        if cached and (run.seed != SWEEP_SEED or "validation" in cached):
            return cached
        contender, b = self.contenders[run.method], self.budget
        module = contender.initial_module(self.flags(run))
        results = probe_encoder(*contender.evaluation_encoder(module), self.data, shots=b.shots, seeds=b.shot_seeds,
                                validation_fraction=VALIDATION_FRACTION if run.seed == SWEEP_SEED else None)
        results["trainable_parameters"] = contender.trainable_parameters(module)
        write_json_atomically(path, {**cached, **results})
        self.log(f"{run.method} seed {run.seed} at initialisation: {_summary(results)}")
        return results

    def init_path(self, run: Run) -> Path:
        return self.work_dir / "init" / f"{run.method}-s{run.seed}.json"

    def score_initial_samples(self, run: Run) -> None:
        """Samples of the MAGE `run` starts from, scored like the trained ones (the generation baseline)."""
        from mage_hf.atomic_files import write_json_atomically

        path = self.init_path(run)
        cached = json.loads(path.read_text())
        if "generation" not in cached:
            cached["generation"] = self.sample_and_score(self.contenders[run.method].initial_module(self.flags(run)))
            write_json_atomically(path, cached)
            self.log(f"{run.method} seed {run.seed} at initialisation, samples: FID {cached['generation']['fid']:.1f}")

    @property
    def scorer(self):
        if self._scorer is None:
            import numpy as np

            from mage_hf.comparison.harness import GenerationScorer
            from mage_hf.evaluation.inception import InceptionFeatureExtractor
            inception = InceptionFeatureExtractor(batch_size=100)
            cache = self.work_dir / "real_inception_features.npy"
            real = self.data.test_images
            features = np.load(cache) if cache.exists() else None
            self._scorer = GenerationScorer(real, self.judge(), inception, features)
            if features is None:
                np.save(cache, self._scorer.real.features)
        return self._scorer

    def judge(self):
        """The MNIST judge (`train_mnist_judge`), or with `judge_iterations` a quick one: the same MLP fitted for
        that many iterations on the probe-train digits (quick runs check the pipeline, not the numbers)."""
        from mage_hf.evaluation.mnist_judge import MnistJudge, train_mnist_judge

        if self.budget.judge_iterations is None:
            return train_mnist_judge(0)
        from sklearn.neural_network import MLPClassifier

        data = self.data
        classifier = MLPClassifier(hidden_layer_sizes=(256,), max_iter=self.budget.judge_iterations, random_state=0)
        classifier.fit(MnistJudge.to_flat(data.train_images), data.train_labels.numpy())
        accuracy = float((classifier.predict(MnistJudge.to_flat(data.test_images)) == data.test_labels.numpy()).mean())
        return MnistJudge(classifier, accuracy)

    def sample_and_score(self, model) -> dict:
        """`samples` unconditional samples of a `MageForMaskedImageModeling`, scored; with the sampling time."""
        from mage_hf.comparison.harness import sample_images

        b = self.budget
        start = time.perf_counter()
        images = sample_images(model, b.samples, b.sample_batch_size, seed=0, num_inference_steps=b.sample_steps,
                               choice_temperature=b.choice_temperature)
        return {**self.scorer.score(images), "sample_seconds": time.perf_counter() - start}

    def score_samples(self, run: Run) -> None:
        record = self.record(run)
        if "generation" in record:
            return
        from mage_hf import MageForMaskedImageModeling

        record["generation"] = self.sample_and_score(MageForMaskedImageModeling.from_pretrained(self.run_dir(run)))
        self.save_record(run, record)
        self.log(f"{run.name} samples: FID {record['generation']['fid']:.1f}, judge score "
                 f"{record['generation']['judge_score']:.2f}")

    def generation_references(self) -> dict:
        """The floor (as many real training digits) and the shipped mage-mnist, scored like the runs."""
        path = self.work_dir / "generation_references.json"
        if path.exists():
            return json.loads(path.read_text())
        import torch

        from mage_hf import DEFAULT_MODEL, MageForMaskedImageModeling
        from mage_hf.atomic_files import write_json_atomically

        pick = torch.randperm(len(self.data.train_images), generator=torch.Generator().manual_seed(0))
        results = {"real_train_digits": self.scorer.score(self.data.train_images[pick[: self.budget.samples]]),
                   "shipped_mage_mnist": self.sample_and_score(MageForMaskedImageModeling.from_pretrained(DEFAULT_MODEL)),
                   "judge_heldout_accuracy": self.scorer.judge.heldout_accuracy}
        write_json_atomically(path, results)
        return results

    def run_all(self, seeds: tuple[int, ...] | None = None) -> None:
        """Every phase; `seeds` limits the per-seed phase (processes sharing one work dir take one seed each)."""
        self.prepare()
        self.raw_pixels()
        self.log("raw pixels done")
        for run in self.sweep_runs():
            self.train(run)
            self.probe(run)
        self.log("sweep done")
        self.generation_references()
        self.shipped_probes()
        self.log("references done")
        for seed in self.budget.seeds if seeds is None else seeds:
            for run in self.main_runs(seed) + self.ablation_runs(seed):
                self.probe_initialisation(run)
                self.train(run)
                self.probe(run)
                if run.method == "mage":
                    self.score_samples(run)
                    if run.group == "main":
                        self.score_initial_samples(run)

    # ------------------------------------------------------------------------------------------------------------
    # Results
    # ------------------------------------------------------------------------------------------------------------

    def results(self) -> dict:
        """Everything finished so far, as one JSON-able dict (what the report renders)."""
        from mage_hf.comparison.harness import CONTENDERS

        def finished(runs):
            return [self.record(run) for run in runs if str(run.steps) in self.record(run).get("probes", {})]

        def initialisations(runs):
            out = {}
            for run in runs:
                path = self.work_dir / "init" / f"{run.method}-s{run.seed}.json"
                if path.exists():
                    out[f"{run.method}-s{run.seed}"] = json.loads(path.read_text())
            return out

        main = [run for seed in self.budget.seeds for run in self.main_runs(seed)] if self._sweep_done() else []
        ablation = [run for seed in self.budget.seeds for run in self.ablation_runs(seed)] if main else []
        references = self.work_dir / "generation_references.json"
        shipped = self.work_dir / "shipped_probes.json"
        return {
            "budget": dataclasses.asdict(self.budget),
            "recipe": RECIPE,
            "warmup_fraction": WARMUP_FRACTION,
            "validation_fraction": VALIDATION_FRACTION,
            "maskings": MASKINGS,
            "methods": {key: CONTENDERS[key].name for key in METHODS},
            "chosen": json.loads(json.dumps({m: self.chosen(m) for m in METHODS})) if self._sweep_done() else {},
            "raw_pixels": json.loads((self.work_dir / "raw_pixels.json").read_text())
            if (self.work_dir / "raw_pixels.json").exists() else None,
            "sweep": finished(self.sweep_runs()),
            "main": finished(main),
            "ablation": finished(ablation),
            "initialisation": initialisations(main),
            "generation_references": json.loads(references.read_text()) if references.exists() else None,
            "shipped_probes": json.loads(shipped.read_text()) if shipped.exists() else None,
            "planned_runs": len(self.sweep_runs()) + len(main) + len(ablation),
        }

    def _sweep_done(self) -> bool:
        return all(str(run.steps) in self.record(run).get("probes", {}) for run in self.sweep_runs())


def _shown(path) -> str:
    """`path` relative to the working directory when it lies inside it (commands that read well in the docs)."""
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative


def preload() -> None:
    """Import every module the study uses now, so that edits to the working tree during a long run cannot change
    or break it halfway."""
    import importlib

    for name in ("mage_hf.comparison.harness", "mage_hf.comparison.tasks", "mage_hf.training.pretrain",
                 "mage_hf.training.loop", "mage_hf.pipeline_mage", "mage_hf.sampling", "mage_hf.evaluation.metrics",
                 "mage_hf.evaluation.generation", "mage_hf.evaluation.inception", "mage_hf.evaluation.mnist_judge",
                 "mage_hf.evaluation.representation", "mage_hf.atomic_files", "mage_hf.mnist", "study_report",
                 "matplotlib.pyplot", "safetensors.torch", "sklearn.linear_model", "sklearn.neural_network"):
        importlib.import_module(name)


def _summary(results: dict) -> str:
    if results.get("diverged"):
        return "diverged (non-finite features)"
    return f"linear {results['linear']['accuracy']:.3f}, k-NN {results['knn']['accuracy']:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny budget: checks the pipeline, not the numbers")
    parser.add_argument("--work-dir", default=str(REPO_ROOT / "out" / "study"), help="runs and caches (resumable)")
    parser.add_argument("--docs-dir", default=str(REPO_ROOT / "docs"), help="where results.md, results.json and "
                        "images/results_*.png go")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and BLAS threads (default 1: on a shared 2-core machine 2 threads ran slower)")
    parser.add_argument("--report-only", action="store_true", help="render the docs from what has finished")
    parser.add_argument("--tokenizer", help="MAGE's frozen VQGAN (default: the shipped mage-mnist pipeline folder)")
    parser.add_argument("--only-seeds", type=int, nargs="+", metavar="SEED",
                        help="run the per-seed phase for these seeds only (e.g. one seed per process on one work dir)")
    args = parser.parse_args(argv)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    preload()
    from study_report import write_report

    started = time.perf_counter()
    work_dir = Path(args.work_dir)
    def log(message: str) -> None:
        print(f"[study {time.perf_counter() - started:7.0f} s] {message}", flush=True)

    study = Study(QUICK if args.quick else Budget(), work_dir, args.tokenizer, log=log)
    if args.only_seeds and not set(args.only_seeds) <= set(study.budget.seeds):
        parser.error(f"--only-seeds: expected seeds among {list(study.budget.seeds)}, got {args.only_seeds}")
    timing_path = work_dir / "wall_seconds.json"
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {"sessions": []}
    if not args.report_only:
        study.run_all(tuple(args.only_seeds) if args.only_seeds else None)
        timing["sessions"].append(time.perf_counter() - started)
        timing_path.write_text(json.dumps(timing))
    results = study.results()
    results["wall_seconds"] = sum(timing["sessions"])
    results["machine"] = (f"{platform.machine()} CPU, {os.cpu_count()} cores (shared), {args.threads} torch "
                          f"thread(s), torch {torch.__version__}")
    command = "python scripts/study_mnist.py" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:])
                                                        if a not in ("--report-only",))
    print(f"wrote {write_report(results, Path(args.docs_dir), command)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

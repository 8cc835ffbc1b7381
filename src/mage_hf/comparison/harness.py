"""The comparison harness: MAGE, MAGE-C, MAE and I-JEPA trained through the package's one training loop
(`mage_hf.training.loop`) and measured the same way.

- `CONTENDERS`: each method as a command of the loop. MAGE and MAGE-C are `mage-hf pretrain` (`PretrainingTask`,
  MAGE-C with `--contrastive`); MAE and I-JEPA are `python -m mage_hf.comparison mae|ijepa`
  (`mage_hf.comparison.tasks`). `Contender.train(flags)` runs the command in this process;
  `Contender.initial_module(flags)` builds the module exactly as the loop builds it before its first step (the
  random-initialisation baseline).
- `load_checkpoint`: a `checkpoint-N` of the loop holds `accelerator.save_state` files (weights, optimizer, RNG
  states), not a `save_pretrained` folder; this puts its weights into a module built as above.
- `ProbeData` and `probe_encoder`: the frozen encoder's features (`mage_hf.evaluation.representation`) probed on a
  labelled train / test split (linear, k-NN, few-shot) and, for choosing hyperparameters without the test split,
  on a validation split held out of the training images. `raw_pixel_features` is the same input for the
  raw-pixel baseline.
- `GenerationScorer`: FID, KID, precision / recall on the offline Inception (`mage_hf.evaluation`), plus the MNIST
  judge's classifier score and Fréchet distance, of samples drawn with `sample_images`.

    contender = CONTENDERS["mae"]
    flags = ["--dataset-name", "mnist/", "--output-dir", "out/mae", "--max-train-steps", "400"]
    contender.train(flags)
    module = contender.initial_module(flags)
    load_checkpoint(module, "out/mae/checkpoint-400")
    encoder, processor = contender.evaluation_encoder(module)
    results = probe_encoder(encoder, processor, ProbeData.from_saved_dataset("mnist/"))
"""

from __future__ import annotations

import argparse
import importlib
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

CHECKPOINT_WEIGHTS = "model.safetensors"  # the weights file of `accelerator.save_state`
FEATURE_BATCH_SIZE = 250


@dataclass(frozen=True)
class Contender:
    """A pretraining method as a command of the training loop.

    `module` defines the command's flags (`add_arguments(parser)`, named by `add_arguments`) and its `TrainingTask`
    (named by `task`); `runner` ("module:function") trains with `(args, task_class)` (the loop's `run_training`, or
    `mage_hf.comparison.tasks.run_comparison_task`, which also writes the folder's model card); `extra_flags` are
    always passed (MAGE-C's `--contrastive`); `encoder_attribute` names the part of the trained module whose
    features are probed.
    """

    key: str
    name: str
    command: str
    module: str
    add_arguments: str
    task: str
    runner: str
    encoder_attribute: str
    extra_flags: tuple[str, ...] = ()

    @property
    def task_class(self):
        return getattr(importlib.import_module(self.module), self.task)

    def parse(self, flags: Sequence[str]) -> argparse.Namespace:
        parser = argparse.ArgumentParser(prog=self.command)
        getattr(importlib.import_module(self.module), self.add_arguments)(parser)
        return parser.parse_args([*self.extra_flags, *flags])

    def command_line(self, flags: Sequence[str]) -> str:
        """The shell command that trains this contender with `flags`."""
        return " ".join([self.command, *map(shlex.quote, [*self.extra_flags, *flags])])

    def train(self, flags: Sequence[str]) -> int:
        """Run the training command in this process (what `command_line(flags)` runs)."""
        module_name, _, function = self.runner.partition(":")
        return getattr(importlib.import_module(module_name), function)(self.parse(flags), self.task_class)

    def initial_module(self, flags: Sequence[str]) -> nn.Module:
        """The trained module as `run_training` builds it before the first step: flags checked, data loaded, the
        global seed set to `--seed`, then the task's `build_model` (so the weights are the run's step 0)."""
        from accelerate.utils import set_seed

        from ..training.arguments import validate_training_arguments
        from ..training.data import load_image_data

        args = self.parse(flags)
        task_class = self.task_class
        validate_training_arguments(args)
        task_class.validate_arguments(args)
        data = load_image_data(args, use_labels=task_class.uses_labels(args), want_eval=task_class.wants_eval)
        set_seed(args.seed)
        return task_class(args, data).model

    def evaluation_encoder(self, module: nn.Module):
        """(encoder to probe, its image processor) of a trained module: MAGE's `MageModel`, MAE's `ViTMAEModel`,
        I-JEPA's EMA target `IJepaModel`."""
        encoder = getattr(module, self.encoder_attribute)
        if self.encoder_attribute == "mage":
            from ..image_processing_mage import MageImageProcessor

            return encoder, MageImageProcessor.for_image_size(encoder.config.image_size)
        from .tasks import vit_image_processor

        return encoder, vit_image_processor(encoder.config.image_size)

    @staticmethod
    def trainable_parameters(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters() if p.requires_grad)


_MAGE = ("mage-hf pretrain", "mage_hf.training.pretrain", "add_arguments", "PretrainingTask",
         "mage_hf.training.loop:run_training", "mage")
_TASKS, _RUN_TASK = "mage_hf.comparison.tasks", "mage_hf.comparison.tasks:run_comparison_task"
CONTENDERS = {
    "mage": Contender("mage", "MAGE", *_MAGE),
    "mage-c": Contender("mage-c", "MAGE-C", *_MAGE, ("--contrastive",)),
    "mae": Contender("mae", "MAE", "python -m mage_hf.comparison mae", _TASKS, "add_mae_arguments", "MaeTask",
                     _RUN_TASK, "vit"),
    "ijepa": Contender("ijepa", "I-JEPA", "python -m mage_hf.comparison ijepa", _TASKS, "add_ijepa_arguments",
                       "IJepaTask", _RUN_TASK, "target_encoder"),
}


def load_checkpoint(module: nn.Module, checkpoint_dir: str | Path) -> nn.Module:
    """Load the weights of a loop checkpoint (`checkpoint-N/model.safetensors`) into `module`, in place.

    accelerate drops one name of each tied pair when it saves; such a name may be missing if a tensor it shares
    storage with was loaded. Any other missing or unexpected name is an error."""
    from safetensors.torch import load_file

    path = Path(checkpoint_dir) / CHECKPOINT_WEIGHTS
    if not path.is_file():
        raise ValueError(f"`checkpoint_dir` {str(checkpoint_dir)!r} holds no {CHECKPOINT_WEIGHTS}")
    state = load_file(str(path))
    missing, unexpected = module.load_state_dict(state, strict=False)
    own = module.state_dict(keep_vars=True)
    loaded_storage = {own[name].data_ptr() for name in state if name in own}
    untied = [name for name in missing if own[name].data_ptr() not in loaded_storage]
    if unexpected or untied:
        raise ValueError(f"{path} does not fit the module: {len(untied)} names missing (first: {untied[:3]}), "
                         f"{len(unexpected)} unexpected (first: {unexpected[:3]})")
    return module


# ----------------------------------------------------------------------------------------------------------------
# Probes
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ProbeData:
    """Labelled images of a probe-train and a test split: uint8 (N, 3, H, W) tensors and int64 labels.

    `validation_indices()` holds out the last `fraction` of every class of the training images (for choosing
    hyperparameters without looking at the test split)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    @classmethod
    def from_saved_dataset(cls, path: str | Path, train_split: str = "train", test_split: str = "test",
                           image_column: str = "image", label_column: str = "label",
                           max_per_class: int | None = None, max_test_per_class: int | None = None) -> ProbeData:
        """A `save_to_disk` folder (e.g. `mage_hf.mnist.save_mnist`); `max_*per_class` keep the first N of each
        class (small smoke runs)."""
        from datasets import load_from_disk

        splits = load_from_disk(str(path))
        train = _split_arrays(splits[train_split], image_column, label_column, max_per_class)
        test = _split_arrays(splits[test_split], image_column, label_column, max_test_per_class)
        return cls(*train, *test)

    def validation_indices(self, fraction: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
        """(fit, held-out) indices into the training images: the last `fraction` of every class is held out."""
        labels = self.train_labels.numpy()
        fit, held = [], []
        for c in np.unique(labels):
            indices = np.flatnonzero(labels == c)
            cut = len(indices) - max(1, round(fraction * len(indices)))
            fit.append(indices[:cut])
            held.append(indices[cut:])
        return (torch.from_numpy(np.sort(np.concatenate(fit))), torch.from_numpy(np.sort(np.concatenate(held))))


def _split_arrays(dataset, image_column: str, label_column: str, max_per_class: int | None):
    from ..training.data import to_rgb_image

    labels = np.asarray(dataset[label_column], dtype=np.int64)
    keep = np.arange(len(labels))
    if max_per_class is not None:
        keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:max_per_class] for c in np.unique(labels)]))
    images = [np.asarray(to_rgb_image(dataset[int(i)][image_column], image_column)) for i in keep]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels[keep])


def _to_pil(images: torch.Tensor) -> list:
    import PIL.Image

    return [PIL.Image.fromarray(image) for image in images.permute(0, 2, 3, 1).numpy()]


def raw_pixel_features(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> (N, C * H * W) float pixels in [0, 1]: the raw-pixel baseline's features."""
    return images.flatten(1).float().div(255.0)


def probe_features(train_x, train_y, test_x, test_y, probes: Sequence[str] = ("linear", "knn", "few-shot"),
                   shots: Sequence[int] = (1, 5, 10), seeds: Sequence[int] = (0, 1, 2, 3, 4)) -> dict:
    """`evaluate_features`, or `{"diverged": True}` when the features are not finite (a diverged run)."""
    from ..evaluation.representation import evaluate_features

    if not (torch.isfinite(train_x).all() and torch.isfinite(test_x).all()):
        return {"diverged": True}
    return evaluate_features(train_x, train_y, test_x, test_y, probes=probes, shots=shots, seeds=seeds)


def probe_encoder(encoder: nn.Module, processor, data: ProbeData, probes: Sequence[str] = ("linear", "knn", "few-shot"),
                  shots: Sequence[int] = (1, 5, 10), seeds: Sequence[int] = (0, 1, 2, 3, 4),
                  validation_fraction: float | None = None) -> dict:
    """Probe the frozen `encoder` (`FeatureExtractor`, pooling "auto") on `data`. With `validation_fraction`, also
    the linear probe fitted on the rest of the training images and scored on that held-out part of every class
    (`data.validation_indices`), under `"validation"`."""
    from ..evaluation.representation import FeatureExtractor

    extractor = FeatureExtractor(encoder, processor, pooling="auto", batch_size=FEATURE_BATCH_SIZE)
    train_x, test_x = extractor(_to_pil(data.train_images)), extractor(_to_pil(data.test_images))
    results = probe_features(train_x, data.train_labels, test_x, data.test_labels, probes, shots, seeds)
    results["pooling"] = extractor.pooling_used
    if validation_fraction is not None:
        fit, held = data.validation_indices(validation_fraction)
        results["validation"] = probe_features(train_x[fit], data.train_labels[fit], train_x[held],
                                               data.train_labels[held], probes=("linear",))
    return results


# ----------------------------------------------------------------------------------------------------------------
# Samples
# ----------------------------------------------------------------------------------------------------------------


def sample_images(model, num_images: int, batch_size: int, seed: int = 0, num_inference_steps: int = 12,
                  choice_temperature: float = 4.5) -> torch.Tensor:
    """Unconditional samples of a `MageForMaskedImageModeling` (image i seeded `seed + i`): uint8 (N, 3, H, W)."""
    from ..pipeline_mage import MagePipeline
    from ..sampling import sample_uint8_batches

    pipe = MagePipeline.from_masked_image_model(model.eval())
    pipe.set_progress_bar_config(disable=True)
    return torch.cat(list(sample_uint8_batches(pipe, range(num_images), batch_size, seed=seed,
                                               num_inference_steps=num_inference_steps,
                                               choice_temperature=choice_temperature)))


class GenerationScorer:
    """Scores sets of generated digits against a fixed set of real ones.

    `real_images`: uint8 (N, 3, H, W); `judge`: a `MnistJudge`; `inception`: an `InceptionFeatureExtractor`.
    `score(images)` -> FID, KID, precision / recall (k = 3) on Inception features, `judge_score` (the Inception
    Score formula with the judge's probabilities, at most 10) and `judge_fd` (Fréchet distance in the judge's
    hidden-layer features)."""

    def __init__(self, real_images: torch.Tensor, judge, inception, real_inception_features: np.ndarray | None = None):
        from ..evaluation.generation import ImageSetFeatures
        from ..evaluation.metrics import FeatureStatistics

        self.judge, self.inception = judge, inception
        features = real_inception_features if real_inception_features is not None else inception(real_images).numpy()
        self.real = ImageSetFeatures(features, None, tuple(real_images.shape[-2:]))
        self.real_judge = FeatureStatistics.from_features(judge.features(real_images))

    def score(self, images: torch.Tensor) -> dict:
        from ..evaluation.generation import ImageSetFeatures, generation_metrics
        from ..evaluation.metrics import FeatureStatistics, frechet_distance

        fake = ImageSetFeatures(self.inception(images).numpy(), self.judge.probabilities(images),
                                tuple(images.shape[-2:]))
        metrics = generation_metrics(self.real, fake, is_splits=1)
        metrics["judge_score"] = metrics.pop("inception_score")
        metrics.pop("inception_score_std", None)
        metrics["judge_fd"] = frechet_distance(self.real_judge, FeatureStatistics.from_features(
            self.judge.features(images)))
        return metrics


__all__ = [
    "CONTENDERS",
    "Contender",
    "GenerationScorer",
    "ProbeData",
    "load_checkpoint",
    "probe_encoder",
    "probe_features",
    "raw_pixel_features",
    "sample_images",
]

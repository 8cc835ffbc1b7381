"""MAGE, MAE and I-JEPA pretrained on the same MNIST digits with the same budget, then measured the same way.

Each contender is a small ViT encoder of the same shape (6 layers, width 128, 4 heads, MLP 512) on 32x32 digits
with 64 patches / tokens, plus its own 3-layer, 128-wide decoder or predictor, so the trained parameter counts
match (within 2 %). All three see the same images in the same order, with the same optimizer (AdamW, warm-up +
cosine), batch size, steps and initial seed; only the objective differs:

- MAGE: `MageForMaskedImageModeling` on the tokens of the frozen mage-mnist VQGAN (its own pretraining is not
  counted), mask ratio 50-100 %, cross entropy on masked tokens;
- MAE: transformers' `ViTMAEForPreTraining`, 75 % of the patches masked, pixel MSE on the masked patches;
- I-JEPA: `mage_hf.comparison.ijepa` around transformers' `IJepaModel`, multi-block masks, EMA target encoder.

Every `eval_every` steps the encoders are probed (`mage_hf.evaluation.representation`: logistic-regression linear
probe and k-NN; few-shot at the end); at the end MAGE's samples are scored (`mage_hf.evaluation`: FID, KID,
precision/recall on the offline Inception; the MNIST judge's classifier score) over sampling steps and choice
temperatures. `write_report` turns the results into `docs/results.md` with plots.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

MNIST_ENCODER = {"hidden_size": 128, "num_hidden_layers": 6, "num_attention_heads": 4, "intermediate_size": 512}
MNIST_DECODER = {"hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 512}
CONTENDERS = ("mage", "mae", "ijepa")


@dataclass
class HarnessConfig:
    """The shared budget and the evaluation grid (the defaults produced docs/results.md)."""

    steps: int = 480
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    eval_every: int = 160
    seed: int = 0
    contenders: tuple[str, ...] = CONTENDERS
    fid_images: int = 300
    fid_batch_size: int = 100
    fid_steps: tuple[int, ...] = (4, 8, 12, 20)
    fid_temperatures: tuple[float, ...] = (2.0, 4.5, 6.0, 9.0)
    default_steps: int = 12
    default_temperature: float = 4.5
    shots: tuple[int, ...] = (1, 5, 10)
    shot_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    max_train_images: int | None = None  # a class-balanced subset of the 4,000 training digits (smoke tests)
    max_test_images: int | None = None  # a class-balanced subset of the 1,000 held-out digits

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_every", "fid_images", "fid_batch_size", "default_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        unknown = set(self.contenders) - set(CONTENDERS)
        if unknown or not self.contenders:
            raise ValueError(f"`contenders` must be a non-empty subset of {CONTENDERS}, got {self.contenders}")


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class MnistSplits:
    """uint8 digits (N, 3, 32, 32) and int64 labels (N,) of the training and held-out splits of `mage_hf.mnist`."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    @classmethod
    def load(cls, max_train: int | None = None, max_test: int | None = None) -> MnistSplits:
        from ..mnist import load_mnist_arrays, split_indices

        digits, labels = load_mnist_arrays()
        train, test = split_indices(labels)
        train, test = _balanced_subset(train, labels, max_train), _balanced_subset(test, labels, max_test)
        rgb = torch.from_numpy(digits)[:, None].expand(-1, 3, -1, -1).contiguous()
        labels = torch.from_numpy(labels)
        return cls(rgb[train], labels[train], rgb[test], labels[test])

    def pil(self, split: str) -> list:
        import PIL.Image

        images = self.train_images if split == "train" else self.test_images
        return [PIL.Image.fromarray(image) for image in images.permute(0, 2, 3, 1).numpy()]


def _balanced_subset(indices: np.ndarray, labels: np.ndarray, limit: int | None) -> np.ndarray:
    """The first `limit // 10` indices of every class (all of them when `limit` is None)."""
    if limit is None:
        return indices
    per_class = max(1, limit // 10)
    return np.sort(np.concatenate([indices[labels[indices] == c][:per_class] for c in range(10)]))


def batch_order(num_examples: int, batch_size: int, steps: int, seed: int) -> list[torch.Tensor]:
    """Index batches for `steps` steps: one seeded permutation per epoch, incomplete last batches dropped."""
    per_epoch = num_examples // batch_size
    if per_epoch == 0:
        raise ValueError(f"`batch_size` {batch_size} is larger than the {num_examples} training images")
    batches = []
    for epoch in range(math.ceil(steps / per_epoch)):
        order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        batches.extend(order[: per_epoch * batch_size].view(per_epoch, batch_size))
    return batches[:steps]


# ----------------------------------------------------------------------------------------------------------------
# Contenders: a trained module, its loss on a batch of uint8 images, and a feature extractor for the probes
# ----------------------------------------------------------------------------------------------------------------


def _half_normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [-1, 1] (mean 0.5, std 0.5): the input of the MAE and I-JEPA encoders."""
    return images.float().div(255.0).sub(0.5).div(0.5)


def _vit_image_processor():
    from transformers import ViTImageProcessor

    return ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


class Contender:
    """A pretraining objective under the shared loop."""

    name = ""

    def __init__(self, config: HarnessConfig, data: MnistSplits):
        self.config = config
        self.module = self.build(data)

    def build(self, data: MnistSplits) -> nn.Module:
        raise NotImplementedError

    def loss(self, indices: torch.Tensor, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Called after each optimizer step (e.g. the EMA update)."""

    def feature_extractor(self):
        raise NotImplementedError

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)


class MageContender(Contender):
    name = "MAGE"

    def build(self, data: MnistSplits) -> nn.Module:
        from .. import MageConfig, MageForMaskedImageModeling
        from ..default_model import DEFAULT_MODEL

        shipped = MageForMaskedImageModeling.from_pretrained(DEFAULT_MODEL)
        vq_config = shipped.config.vq_config
        config = MageConfig(
            image_size=32, codebook_size=shipped.config.codebook_size, num_class_slots=1,
            hidden_size=MNIST_ENCODER["hidden_size"], num_hidden_layers=MNIST_ENCODER["num_hidden_layers"],
            num_attention_heads=MNIST_ENCODER["num_attention_heads"],
            mlp_ratio=MNIST_ENCODER["intermediate_size"] / MNIST_ENCODER["hidden_size"],
            decoder_hidden_size=MNIST_DECODER["hidden_size"],
            decoder_num_hidden_layers=MNIST_DECODER["num_hidden_layers"],
            decoder_num_attention_heads=MNIST_DECODER["num_attention_heads"],
            max_position_embeddings=65, vq_config=vq_config,
        )
        model = MageForMaskedImageModeling(config)
        model.mage.vqgan.load_state_dict(shipped.mage.vqgan.state_dict())
        model.mage.vqgan.requires_grad_(False).eval()
        with torch.inference_mode():  # the tokenizer is frozen and there is no augmentation: tokenize once
            pixels = data.train_images.float().div(255.0)
            self.train_tokens = torch.cat([model.mage.tokenize(chunk) for chunk in pixels.split(500)]).clone()
        return model

    def loss(self, indices, images, generator):
        model = self.module
        model.mage.vqgan.eval()
        tokens = self.train_tokens[indices]
        masked, dropped = model.sample_masks(len(tokens), generator, tokens.device)
        output = model(input_ids=model.mage.build_input_ids(tokens), bool_masked_pos=masked,
                       bool_dropped_pos=dropped, labels=tokens)
        return output.loss

    def feature_extractor(self):
        from ..evaluation.representation import FeatureExtractor
        from ..image_processing_mage import MageImageProcessor

        return FeatureExtractor(self.module.mage, MageImageProcessor.for_image_size(32), pooling="auto")

    def pipeline(self):
        from ..pipeline_mage import MagePipeline

        pipe = MagePipeline.from_masked_image_model(copy.deepcopy(self.module).eval())
        pipe.set_progress_bar_config(disable=True)
        return pipe


class MaeContender(Contender):
    name = "MAE"

    def build(self, data: MnistSplits) -> nn.Module:
        from transformers import ViTMAEConfig, ViTMAEForPreTraining

        config = ViTMAEConfig(
            # plain pixel MSE: per-patch normalisation (norm_pix_loss) divides the many all-black MNIST patches by
            # ~0 and, in our first run, left the loss flat at the predict-the-mean level
            image_size=32, patch_size=4, num_channels=3, mask_ratio=0.75, norm_pix_loss=False, **MNIST_ENCODER,
            decoder_hidden_size=MNIST_DECODER["hidden_size"],
            decoder_num_hidden_layers=MNIST_DECODER["num_hidden_layers"],
            decoder_num_attention_heads=MNIST_DECODER["num_attention_heads"],
            decoder_intermediate_size=MNIST_DECODER["intermediate_size"],
        )
        return ViTMAEForPreTraining(config)

    def loss(self, indices, images, generator):
        config = self.module.config
        noise = torch.rand(len(images), (config.image_size // config.patch_size) ** 2, generator=generator)
        return self.module(pixel_values=_half_normalise(images), noise=noise).loss

    def feature_extractor(self):
        from ..evaluation.representation import FeatureExtractor

        return FeatureExtractor(self.module.vit, _vit_image_processor(), pooling="auto")


class IJepaContender(Contender):
    name = "I-JEPA"

    def build(self, data: MnistSplits) -> nn.Module:
        from .ijepa import ijepa_for_mnist

        return ijepa_for_mnist(
            hidden_size=MNIST_ENCODER["hidden_size"], num_layers=MNIST_ENCODER["num_hidden_layers"],
            num_heads=MNIST_ENCODER["num_attention_heads"], predictor_hidden_size=MNIST_DECODER["hidden_size"],
            predictor_num_layers=MNIST_DECODER["num_hidden_layers"],
            predictor_num_heads=MNIST_DECODER["num_attention_heads"],
        )

    def loss(self, indices, images, generator):
        return self.module(_half_normalise(images), generator=generator)

    def after_step(self, step: int) -> None:
        from .ijepa import ema_momentum

        self.module.update_target_encoder(ema_momentum(step, self.config.steps))

    def feature_extractor(self):
        from ..evaluation.representation import FeatureExtractor

        return FeatureExtractor(self.module.encoder_for_evaluation(), _vit_image_processor(), pooling="auto")


CONTENDER_CLASSES = {"mage": MageContender, "mae": MaeContender, "ijepa": IJepaContender}


# ----------------------------------------------------------------------------------------------------------------
# The shared loop and the probes
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ContenderResult:
    name: str
    trainable_parameters: int
    train_seconds: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)
    probes: list[dict] = field(default_factory=list)  # per evaluation step: {"step", "linear", "knn"}
    final: dict = field(default_factory=dict)  # evaluate_features of the last step (with few-shot)


def probe(contender: Contender, data: MnistSplits, config: HarnessConfig, step: int, final: bool) -> dict:
    """Linear probe and k-NN (and few-shot when `final`) on the frozen encoder's features."""
    from ..evaluation.representation import evaluate_features

    contender.module.eval()
    extractor = contender.feature_extractor()
    train_x, test_x = extractor(data.pil("train")), extractor(data.pil("test"))
    probes = ("linear", "knn", "few-shot") if final else ("linear", "knn")
    results = evaluate_features(train_x, data.train_labels, test_x, data.test_labels, probes=probes,
                                shots=config.shots, seeds=config.shot_seeds, seed=config.seed)
    results["step"] = step
    results["pooling"] = extractor.pooling_used
    return results


def pretrain(contender: Contender, data: MnistSplits, config: HarnessConfig, log=print) -> ContenderResult:
    """Train with the shared recipe, probing at step 0, every `eval_every` steps and at the end."""
    from transformers import get_cosine_schedule_with_warmup

    from ..training.loop import weight_decay_groups

    result = ContenderResult(contender.name, contender.trainable_parameters())
    module = contender.module
    optimizer = torch.optim.AdamW(weight_decay_groups(module, config.weight_decay), lr=config.learning_rate,
                                  betas=(0.9, 0.95))
    schedule = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    batches = batch_order(len(data.train_images), config.batch_size, config.steps, config.seed)
    result.probes.append(probe(contender, data, config, 0, final=False))
    start, window = time.perf_counter(), []
    for step, indices in enumerate(batches, start=1):
        module.train()
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        loss = contender.loss(indices, data.train_images[indices], generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 3.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        contender.after_step(step)
        window.append(loss.item())
        if step % 50 == 0 or step == config.steps:
            result.losses.append((step, float(np.mean(window))))
            log(f"{contender.name} step {step}/{config.steps} loss {np.mean(window):.4f} "
                f"({time.perf_counter() - start:.0f} s)")
            window = []
        if step % config.eval_every == 0 or step == config.steps:
            result.train_seconds += time.perf_counter() - start
            final = step == config.steps
            probes = probe(contender, data, config, step, final)
            result.probes.append(probes)
            if final:
                result.final = probes
            log(f"{contender.name} step {step}: linear {probes['linear']['accuracy']:.3f} "
                f"k-NN {probes['knn']['accuracy']:.3f}")
            start = time.perf_counter()
    return result


# ----------------------------------------------------------------------------------------------------------------
# MAGE's samples
# ----------------------------------------------------------------------------------------------------------------


def generation_grid(config: HarnessConfig) -> list[tuple[int, float]]:
    """(steps, temperature) settings: the steps sweep at the default temperature, then the temperature sweep."""
    grid = [(steps, config.default_temperature) for steps in config.fid_steps]
    grid += [(config.default_steps, t) for t in config.fid_temperatures if (config.default_steps, t) not in grid]
    return grid


def score_samples(pipe, settings, config: HarnessConfig, real_features, judge, extractor, log=print) -> list[dict]:
    """FID / KID / precision / recall (Inception) and the judge's score of `fid_images` samples per setting."""
    from ..evaluation.generation import sample_batches
    from ..evaluation.metrics import (
        FeatureStatistics,
        frechet_distance,
        inception_score,
        kernel_distance,
        precision_recall,
    )

    real_stats = FeatureStatistics.from_features(real_features)
    rows = []
    for steps, temperature in settings:
        start = time.perf_counter()
        images = torch.cat(list(sample_batches(
            pipe, config.fid_images, config.fid_batch_size, seed=config.seed,
            num_inference_steps=steps, choice_temperature=temperature,
        )))
        sample_seconds = time.perf_counter() - start
        features = extractor(images).numpy()
        precision, recall = precision_recall(real_features, features)
        kid, _ = kernel_distance(real_features, features, subset_size=min(len(features), 1000))
        score, _ = inception_score(judge.probabilities(images), splits=1)
        rows.append({
            "num_inference_steps": steps, "choice_temperature": temperature,
            "fid": frechet_distance(real_stats, FeatureStatistics.from_features(features)), "kid": kid,
            "precision": precision, "recall": recall, "judge_score": score,
            "sample_seconds": sample_seconds,
        })
        log(f"MAGE samples, {steps} steps, temperature {temperature}: FID {rows[-1]['fid']:.1f} "
            f"precision {precision:.2f} recall {recall:.2f} judge score {score:.2f}")
    return rows


# ----------------------------------------------------------------------------------------------------------------
# The whole comparison
# ----------------------------------------------------------------------------------------------------------------


def run_comparison(config: HarnessConfig, log=print) -> dict:
    """Train and probe every contender, score MAGE's samples; returns a JSON-able dict."""
    from .. import MagePipeline
    from ..default_model import DEFAULT_PIPELINE
    from ..evaluation.inception import InceptionFeatureExtractor
    from ..evaluation.mnist_judge import train_mnist_judge

    started = time.perf_counter()
    data = MnistSplits.load(config.max_train_images, config.max_test_images)
    results = {"config": asdict(config), "torch_threads": torch.get_num_threads(), "contenders": {}}
    mage = None
    for key in config.contenders:
        torch.manual_seed(config.seed)  # the same initialisation seed for every contender
        contender = CONTENDER_CLASSES[key](config, data)
        results["contenders"][key] = asdict(pretrain(contender, data, config, log))
        if key == "mage":
            mage = contender

    if mage is not None:
        extractor = InceptionFeatureExtractor(batch_size=100)
        judge = train_mnist_judge(config.seed)
        real_features = extractor(data.test_images).numpy()
        results["judge_heldout_accuracy"] = judge.heldout_accuracy
        results["generation"] = score_samples(mage.pipeline(), generation_grid(config), config, real_features,
                                              judge, extractor, log)
        shipped = MagePipeline.from_pretrained(DEFAULT_PIPELINE)
        shipped.set_progress_bar_config(disable=True)
        results["shipped_mage_mnist"] = score_samples(
            shipped, [(config.default_steps, config.default_temperature)], config, real_features, judge, extractor,
            log,
        )[0]
        # the floor: as many real training digits (a seeded random draw, all classes) against the held-out ones
        pick = torch.randperm(len(data.train_images), generator=torch.Generator().manual_seed(config.seed))
        real_rows = data.train_images[pick[: config.fid_images]]
        results["real_train_digits"] = _score_real(real_rows, real_features, judge, extractor)
    results["total_seconds"] = time.perf_counter() - started
    return results


def _score_real(images, real_features, judge, extractor) -> dict:
    from ..evaluation.metrics import FeatureStatistics, frechet_distance, inception_score, precision_recall

    features = extractor(images).numpy()
    precision, recall = precision_recall(real_features, features)
    return {
        "fid": frechet_distance(FeatureStatistics.from_features(real_features),
                                FeatureStatistics.from_features(features)),
        "precision": precision, "recall": recall,
        "judge_score": inception_score(judge.probabilities(images), splits=1)[0],
    }


__all__ = [
    "CONTENDERS",
    "ContenderResult",
    "HarnessConfig",
    "MnistSplits",
    "batch_order",
    "generation_grid",
    "pretrain",
    "probe",
    "run_comparison",
    "score_samples",
]

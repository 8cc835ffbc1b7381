"""`mage-hf pretrain`: MAGE masked-token pretraining, optionally class-conditional.

The recipe (the paper's ViT-B/L run): AdamW betas (0.9, 0.95), weight decay 0.05, base lr 1.5e-4 per 256
images, 1600 epochs with 40 warm-up epochs then cosine decay, gradient-norm clip 3.0, RandomResizedCrop(scale
0.2-1) + flip; the VQGAN tokenizer is frozen (and kept in eval mode). The model samples the original masks itself.

`--tokenized-dataset DIR` trains on the token grids `mage-hf tokenize-dataset` made (K fixed augmented views per image)
instead of images: no VQGAN in the training step (the model trains without it, and the final folder gets back the
tokenizer that made the tokens, checked by the SHA-256 of its weights).

`--contrastive` trains MAGE-C: two views of each image (crop, flip and SimCLR's colour jitter / greyscale / blur),
both masked and reconstructed as above in one forward, plus `contrastive_loss_weight` times SimCLR's InfoNCE loss
between the projected mean encoder outputs of the two views, negatives gathered from every process.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn

from ..configuration_mage import MageConfig
from ..modeling_mage import MageForMaskedImageModeling, MageModel
from ..modeling_vqgan import MageVQModel
from .arguments import RecipeDefaults, add_training_arguments
from .contrastive import info_nce_loss
from .data import ColorAugment, ImageCollator, add_data_arguments
from .loop import StepContext, StepOutput, TrainingTask, save_image_processor
from .seeding import keyed_generator
from .tokenized import BATCH_TOKENS, TokenViewTransform, check_tokens_fit, load_tokenized_data

logger = logging.getLogger(__name__)

PRETRAIN_RECIPE = RecipeDefaults(
    base_learning_rate=1.5e-4,
    weight_decay=0.05,
    adam_beta1=0.9,
    adam_beta2=0.95,
    num_train_epochs=1600,
    warmup_epochs=40,
    max_grad_norm=3.0,
    min_crop_scale=0.2,
)
DEFAULT_MODEL_CONFIG = "vit-b"
# MAGE-C's head and loss, as we read the paper: a 2-layer MLP on the mean encoder output, InfoNCE weight 0.1 and
# temperature 0.2 (SimCLR's loss). The projection width follows SimCLR's 2048 -> 256 head.
CONTRASTIVE_DEFAULTS = {
    "contrastive_projection_dim": 256,
    "contrastive_hidden_size": 2048,
    "contrastive_loss_weight": 0.1,
    "contrastive_temperature": 0.2,
}
# `--contrastive-*` flag -> config field.
CONTRASTIVE_FLAGS = {
    "contrastive_weight": "contrastive_loss_weight",
    "contrastive_temperature": "contrastive_temperature",
    "contrastive_projection_dim": "contrastive_projection_dim",
    "contrastive_hidden_size": "contrastive_hidden_size",
}
# Keys of a saved MageVQModel config that are bookkeeping, not constructor arguments.
_VQ_PRIVATE_PREFIX = "_"
# Where the tokenizer's weights live in a MageForMaskedImageModeling state dict.
TOKENIZER_PREFIX = "mage.vqgan."
# Image-data flags that `--tokenized-dataset` replaces.
IMAGE_DATA_FLAGS = ("dataset_name", "dataset_config", "train_dir", "validation_dir", "validation_split")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, PRETRAIN_RECIPE)
    add_data_arguments(parser, labels="optional")
    group = parser.add_argument_group("pretraining")
    group.add_argument("--tokenizer", help="trained MageVQModel folder (or a MAGE / pipeline folder) to tokenize with")
    group.add_argument("--tokenized-dataset",
                       help="a `mage-hf tokenize-dataset` folder: train on its token grids (no VQGAN in the step) "
                            "instead of images")
    group.add_argument("--class-conditional", action="store_true",
                       help="condition on `--label-column` (one condition token per class)")
    group.add_argument("--condition-dropout-prob", type=float,
                       help="probability of dropping the class in training (default: the config's, 0.1)")
    contrastive = parser.add_argument_group("MAGE-C (contrastive co-training)")
    contrastive.add_argument("--contrastive", action="store_true",
                             help="add MAGE-C's InfoNCE loss between two augmented views of each image")
    contrastive.add_argument("--contrastive-weight", type=float,
                             help=f"weight of the InfoNCE loss (default: the config's, {CONTRASTIVE_DEFAULTS['contrastive_loss_weight']})")
    contrastive.add_argument("--contrastive-temperature", type=float,
                             help=f"InfoNCE temperature (default: the config's, {CONTRASTIVE_DEFAULTS['contrastive_temperature']})")
    contrastive.add_argument("--contrastive-projection-dim", type=int,
                             help=f"output width of the projection head (a new head: {CONTRASTIVE_DEFAULTS['contrastive_projection_dim']})")
    contrastive.add_argument("--contrastive-hidden-size", type=int,
                             help=f"hidden width of the projection head (a new head: {CONTRASTIVE_DEFAULTS['contrastive_hidden_size']})")
    augment = ColorAugment()
    contrastive.add_argument("--color-jitter", type=float, default=augment.jitter,
                             help="brightness / contrast / saturation jitter strength of the views (hue: a quarter)")
    contrastive.add_argument("--color-jitter-prob", type=float, default=augment.jitter_prob)
    contrastive.add_argument("--grayscale-prob", type=float, default=augment.grayscale_prob)
    contrastive.add_argument("--blur-prob", type=float, default=augment.blur_prob)



def load_config(name_or_path: str, **overrides) -> MageConfig:
    """A size preset name (tiny | vit-b | vit-l) or a config file / folder -> `MageConfig`."""
    if Path(name_or_path).exists():
        return MageConfig.from_pretrained(name_or_path, **overrides)
    try:
        return MageConfig.from_preset(name_or_path, **overrides)
    except ValueError as error:
        raise ValueError(f"`--model-config` {name_or_path!r}: not a file or folder, and {error}") from error


def load_tokenizer(path: str, flag: str = "--tokenizer") -> MageVQModel:
    """A MageVQModel folder, a pipeline folder (its `vqvae/`), or a MAGE model folder (its tokenizer)."""
    root = Path(path)
    if (root / "vqvae" / "config.json").is_file():
        return MageVQModel.from_pretrained(path, subfolder="vqvae")
    if not (root / "config.json").is_file():
        raise ValueError(f"`{flag}` {path!r} is not a model folder (no config.json)")
    if json.loads((root / "config.json").read_text()).get("model_type") == "mage":
        tokenizer = MageModel.from_pretrained(path).vqgan
        if tokenizer is None:
            raise ValueError(f"`{flag}` {path!r} is a MAGE model without a tokenizer")
        return tokenizer
    return MageVQModel.from_pretrained(path)


def vq_kwargs(tokenizer: MageVQModel) -> dict:
    return {k: v for k, v in dict(tokenizer.config).items() if not k.startswith(_VQ_PRIVATE_PREFIX)}


class PretrainingTask(TrainingTask):
    command = "pretrain"
    card_kind = "pretraining"
    # With `--tokenized-dataset`: the frozen VQGAN, out of the trained model, put back for saving.
    tokenizer: MageVQModel | None = None

    @classmethod
    def validate_arguments(cls, args: argparse.Namespace) -> None:
        if args.tokenized_dataset is not None:
            for flag in IMAGE_DATA_FLAGS:
                if getattr(args, flag) is not None:
                    flag = flag.replace("_", "-")
                    raise ValueError(f"`--tokenized-dataset` replaces the image data: drop `--{flag}`")
            if args.streaming:
                raise ValueError("`--tokenized-dataset` replaces the image data: drop `--streaming`")
            if args.contrastive:
                raise ValueError("`--contrastive` (MAGE-C) needs images for its colour-augmented views: it cannot "
                                 "train on `--tokenized-dataset`")
        p = args.condition_dropout_prob
        if p is not None and not 0.0 <= p <= 1.0:
            raise ValueError(f"`--condition-dropout-prob` must be in [0, 1], got {p}")
        if p is not None and not args.class_conditional:
            raise ValueError("`--condition-dropout-prob` needs `--class-conditional`")
        given = [flag for flag in CONTRASTIVE_FLAGS if getattr(args, flag) is not None]
        if given and not args.contrastive:
            raise ValueError(f"`--{given[0].replace('_', '-')}` needs `--contrastive`")
        for flag, low, inclusive in (("contrastive_weight", 0.0, True), ("contrastive_temperature", 0.0, False),
                                     ("contrastive_projection_dim", 1, True), ("contrastive_hidden_size", 1, True)):
            value = getattr(args, flag)
            if value is not None and not (value >= low if inclusive else value > low):
                raise ValueError(f"`--{flag.replace('_', '-')}` must be {'>=' if inclusive else '>'} {low}, got {value}")
        for flag in ("color_jitter", "color_jitter_prob", "grayscale_prob", "blur_prob"):
            value = getattr(args, flag)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`--{flag.replace('_', '-')}` must be in [0, 1], got {value}")

    @classmethod
    def uses_labels(cls, args: argparse.Namespace) -> bool:
        return args.class_conditional

    @classmethod
    def load_data(cls, args: argparse.Namespace):
        if args.tokenized_dataset is None:
            return super().load_data(args)
        data = load_tokenized_data(args.tokenized_dataset, use_labels=cls.uses_labels(args),
                                   max_samples=args.max_train_samples)
        made = data.manifest["augmentation"]
        if (args.min_crop_scale, not args.no_horizontal_flip) != (made["random_resized_crop_scale"][0],
                                                                 made["horizontal_flip"]):
            logger.warning("`--min-crop-scale` / `--no-horizontal-flip` have no effect on `--tokenized-dataset`: its "
                           "views were made with crop scale %s and horizontal flip %s",
                           made["random_resized_crop_scale"], made["horizontal_flip"])
        return data

    @property
    def tokenized(self) -> bool:
        return self.args.tokenized_dataset is not None

    def build_model(self) -> MageForMaskedImageModeling:
        args = self.args
        overrides = {**self._condition_overrides(), **self._contrastive_overrides()}
        tokenizer = self._given_tokenizer()
        if args.model is not None:
            self._check_conditioning(MageConfig.from_pretrained(args.model))
            model = MageForMaskedImageModeling.from_pretrained(args.model, **overrides)
        else:
            if tokenizer is not None:  # the tokenizer decides codebook and image size
                tokenizer_config = tokenizer.config
                overrides.update(vq_config=vq_kwargs(tokenizer), codebook_size=tokenizer_config.num_vq_embeddings,
                                 image_size=tokenizer_config.sample_size)
            model = MageForMaskedImageModeling(load_config(args.model_config or DEFAULT_MODEL_CONFIG, **overrides))
        if tokenizer is not None:
            self._load_tokenizer_weights(model, tokenizer)
        elif args.model is None:
            logger.warning("no `--tokenizer` and no `--model`: pretraining on the tokens of a RANDOM VQGAN")
        model.mage.vqgan.requires_grad_(False)
        if self.tokenized:
            self.tokenizer = self._detach_tokenizer(model)
        return model

    def _given_tokenizer(self) -> MageVQModel | None:
        """`--tokenizer`; with `--tokenized-dataset` and neither `--tokenizer` nor `--model`, the one that made the
        tokens (its folder in the manifest)."""
        args = self.args
        if args.tokenizer:
            return load_tokenizer(args.tokenizer)
        if not self.tokenized or args.model is not None:
            return None
        folder = self.data.manifest["tokenizer"]
        if not Path(folder).exists():
            raise ValueError(f"the tokenizer that made `--tokenized-dataset` {args.tokenized_dataset!r}, "
                             f"{folder!r}, is not there any more: pass it as `--tokenizer`")
        return load_tokenizer(folder, flag="--tokenized-dataset")

    def _detach_tokenizer(self, model: MageForMaskedImageModeling) -> MageVQModel:
        """Check that the model's tokenizer made the tokens, and take it out of the model (not on the hot path)."""
        args = self.args
        source = f"`--tokenizer` {args.tokenizer!r}" if args.tokenizer else (
            f"`--model` {args.model!r}" if args.model else f"the manifest ({self.data.manifest['tokenizer']!r})")
        check_tokens_fit(self.data.manifest, model.config, model.mage.vqgan, source)
        tokenizer = model.mage.vqgan
        model.mage.vqgan = None
        model.config.include_vq_tokenizer = False
        return tokenizer

    def _condition_overrides(self) -> dict:
        args = self.args
        if not args.class_conditional:
            return {}
        overrides = {"num_condition_classes": self.data.num_labels,
                     "id2label": dict(enumerate(self.data.label_names))}
        if args.condition_dropout_prob is not None:
            overrides["condition_dropout_prob"] = args.condition_dropout_prob
        return overrides

    def _contrastive_overrides(self) -> dict:
        """Config fields for MAGE-C: the flags given; a model without a head gets the default head."""
        args = self.args
        if not args.contrastive:
            return {}
        overrides = {field: getattr(args, flag) for flag, field in CONTRASTIVE_FLAGS.items() if getattr(args, flag) is not None}
        existing = MageConfig.from_pretrained(args.model) if args.model is not None else None
        if existing is None or existing.contrastive_projection_dim == 0:
            overrides = {**CONTRASTIVE_DEFAULTS, **overrides}
        return overrides

    def train_transform(self):
        if not self.tokenized:
            return super().train_transform()
        return TokenViewTransform(self.data.manifest["num_views"], self.args.seed, self.data.label_column)

    def collator(self):
        if not self.tokenized:
            return super().collator()
        return ImageCollator(self.data.num_labels, self.data.label_column, inputs=BATCH_TOKENS)

    def train_transform_kwargs(self) -> dict:
        args = self.args
        if not args.contrastive:
            return {}
        augment = ColorAugment(args.color_jitter, args.color_jitter_prob, args.grayscale_prob, args.blur_prob)
        return {"views": 2, "color_augment": augment}

    def _check_conditioning(self, config: MageConfig) -> None:
        """An unconditional model may become class-conditional; a conditional one keeps its class count."""
        classes = config.num_condition_classes
        if self.args.class_conditional and classes not in (0, self.data.num_labels):
            raise ValueError(
                f"`--model` {self.args.model!r} was trained with {classes} condition classes, `--label-column` "
                f"{self.args.label_column!r} has {self.data.num_labels}"
            )

    def _load_tokenizer_weights(self, model: MageForMaskedImageModeling, tokenizer: MageVQModel) -> None:
        try:
            model.mage.vqgan.load_state_dict(tokenizer.state_dict())
        except RuntimeError as error:
            raise ValueError(
                f"`--tokenizer` {self.args.tokenizer!r} does not fit the model's `vq_config` "
                f"{model.config.vq_config}: {error}"
            ) from error

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    def train_mode(self, model: nn.Module) -> None:
        model.train()
        vqgan = extract_model_from_parallel(model).mage.vqgan
        if vqgan is not None:
            vqgan.eval()  # the frozen tokenizer never trains

    def training_step(self, model, batch, step: StepContext) -> StepOutput:
        if BATCH_TOKENS in batch:  # `--tokenized-dataset`
            return self._token_step(model, batch, step)
        pixel_values, labels = batch["pixel_values"], batch.get("labels")
        if not self.args.contrastive:
            output = model(pixel_values=pixel_values, class_labels=labels, generator=step.generator)
            return StepOutput(output.loss)
        # (B, 2, C, H, W) -> one forward over both views, view 0 of every image first.
        views = pixel_values.transpose(0, 1).flatten(0, 1)
        output = model(
            pixel_values=views, class_labels=None if labels is None else labels.repeat(2), generator=step.generator
        )
        config = extract_model_from_parallel(model).config
        first, second = output.contrastive_embeds.chunk(2)
        contrastive = info_nce_loss(first, second, config.contrastive_temperature)
        loss = output.loss + config.contrastive_loss_weight * contrastive
        return StepOutput(loss, {"token_loss": output.loss.detach(), "contrastive_loss": contrastive.detach()})

    def _token_step(self, model, batch, step: StepContext) -> StepOutput:
        """A batch of (B, N) tokens: the masks the model samples from pixels, drawn here (static shapes)."""
        tokens = batch[BATCH_TOKENS]
        inner = extract_model_from_parallel(model)
        masked, dropped = inner.sample_masks(tokens.shape[0], step.generator, tokens.device)
        output = model(
            input_ids=inner.mage.build_input_ids(tokens), bool_masked_pos=masked, bool_dropped_pos=dropped,
            num_dropped_tokens=inner.config.num_dropped_tokens, labels=tokens, class_labels=batch.get("labels"),
            generator=step.generator,
        )
        return StepOutput(output.loss)

    @torch.no_grad()
    def evaluate(self, model, dataloader, accelerator) -> dict[str, float]:
        """Masked-token loss and accuracy over the evaluation data, with masks keyed on the batch."""
        model.eval()
        inner = extract_model_from_parallel(model)
        losses, accuracies = [], []
        for index, batch in enumerate(dataloader):
            generator = keyed_generator(self.args.seed, "eval", accelerator.process_index, index)
            out = model(pixel_values=batch["pixel_values"], class_labels=batch.get("labels"), generator=generator)
            per_example = torch.stack([
                inner.masked_token_loss(out.logits[i : i + 1], out.labels[i : i + 1], out.bool_masked_pos[i : i + 1])
                for i in range(out.logits.shape[0])
            ])
            correct = out.logits[:, 1:, : inner.config.codebook_size].argmax(-1) == out.labels
            masked = out.bool_masked_pos.float()
            accuracy = (correct.float() * masked).sum(1) / masked.sum(1).clamp_min(1.0)
            loss, accuracy = accelerator.gather_for_metrics((per_example, accuracy))
            losses.append(loss)
            accuracies.append(accuracy)
        return {"loss": torch.cat(losses).mean().item(), "masked_token_accuracy": torch.cat(accuracies).mean().item()}

    def export_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """With `--tokenized-dataset`: the trained weights plus the tokenizer's (a complete MAGE)."""
        if self.tokenizer is None:
            return state_dict
        return {**state_dict, **{TOKENIZER_PREFIX + k: v for k, v in self.tokenizer.state_dict().items()}}

    def save_pretrained(self, model, state_dict, save_dir: Path) -> None:
        if self.tokenizer is not None:  # the tokenizer goes back in: the folder loads with `from_pretrained`, pipelines
            model.mage.vqgan = self.tokenizer
            model.config.include_vq_tokenizer = True
        model.save_pretrained(save_dir, state_dict=state_dict)
        save_image_processor(model.config.image_size, save_dir)


__all__ = ["CONTRASTIVE_DEFAULTS", "PRETRAIN_RECIPE", "PretrainingTask", "add_arguments", "load_config", "load_tokenizer"]

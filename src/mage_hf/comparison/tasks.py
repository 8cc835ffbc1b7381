"""MAE and I-JEPA as `TrainingTask`s of the package's one training loop (`mage_hf.training.loop`).

They train with the same accelerate loop, flags, data pipeline, checkpoints and resuming as `mage-hf pretrain`,
so a comparison with MAGE differs only in the objective:

    python -m mage_hf.comparison mae --dataset-name mnist/ --output-dir out/mae --max-train-steps 1000
    python -m mage_hf.comparison ijepa --dataset-name mnist/ --output-dir out/ijepa --max-train-steps 1000

- `MaeTask`: transformers' `ViTMAEForPreTraining` and its own loss (pixel MSE on the masked patches), masking
  `config.mask_ratio` of the patches with noise drawn from the step's keyed generator.
- `IJepaTask`: `IJepaForPretraining` (`mage_hf.comparison.ijepa`); the EMA target encoder is updated after every
  optimizer step (`after_optimizer_step`) and is what the final folder holds (`IJepaModel`, as the paper
  evaluates it).

The training images come from the loop's data pipeline in [0, 1]; both encoders take them normalised with mean and
std 0.5 (to [-1, 1]), and the saved `ViTImageProcessorPil` does the same at inference. Final folders load with
`AutoModel` / `AutoImageProcessor` (`ViTMAEModel`, `IJepaModel`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import extract_model_from_parallel
from torch import nn
from transformers import IJepaConfig, IJepaModel, ViTMAEConfig, ViTMAEForPreTraining

from ..training.arguments import RecipeDefaults, add_training_arguments
from ..training.data import add_data_arguments
from ..training.loop import SUMMARY_FILE, StepContext, StepOutput, TrainingTask, run_training
from .ijepa import IJepaForPretraining, MultiBlockMaskSampler, ema_momentum

# MAE's ImageNet pretraining (He et al. 2022, Table 8): AdamW betas (0.9, 0.95), weight decay 0.05, base lr 1.5e-4
# per 256 images, 40 warm-up epochs, 800 epochs, RandomResizedCrop(0.2-1) + flip, no gradient clipping.
MAE_RECIPE = RecipeDefaults(
    base_learning_rate=1.5e-4, weight_decay=0.05, adam_beta1=0.9, adam_beta2=0.95, num_train_epochs=800,
    warmup_epochs=40, max_grad_norm=0.0, min_crop_scale=0.2,
)
# I-JEPA's ViT-H/14 run (Assran et al. 2023, appendix): AdamW, peak lr 1e-3 at batch 2048 (1.25e-4 per 256),
# 15 warm-up epochs, 300 epochs, RandomResizedCrop(0.3-1), no clipping. The paper's weight decay grows from 0.04 to
# 0.4; the loop has one constant weight decay, the starting value.
IJEPA_RECIPE = RecipeDefaults(
    base_learning_rate=1.25e-4, weight_decay=0.04, adam_beta1=0.9, adam_beta2=0.999, num_train_epochs=300,
    warmup_epochs=15, max_grad_norm=0.0, min_crop_scale=0.3,
)
# The `--model-config mnist` preset: the encoder of the MNIST comparison (ViT, 6 layers, width 128, 4 heads, MLP
# 512, patch 4 on 32x32 digits = 64 patches) and a 3-layer, 128-wide decoder / predictor.
MNIST_ENCODER = {"image_size": 32, "patch_size": 4, "num_channels": 3, "hidden_size": 128, "num_hidden_layers": 6,
                 "num_attention_heads": 4, "intermediate_size": 512}
MNIST_DECODER = {"hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 512}
MNIST_PRESET = "mnist"
# ViT normalisation of MAE / I-JEPA inputs: (x - 0.5) / 0.5.
PIXEL_MEAN = PIXEL_STD = 0.5
IJEPA_PREFIX = "target_encoder."


def vit_image_processor(image_size: int):
    """The inference preprocessing of the saved MAE / I-JEPA folders: resize to the model size, mean / std 0.5."""
    from transformers import ViTImageProcessorPil

    return ViTImageProcessorPil(size={"height": image_size, "width": image_size}, image_mean=[PIXEL_MEAN] * 3,
                                image_std=[PIXEL_STD] * 3)


def normalize_pixels(pixel_values: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels (the loop's data) -> the encoders' input, what `vit_image_processor` gives."""
    return (pixel_values - PIXEL_MEAN) / PIXEL_STD


def load_vit_config(config_class, name_or_path: str, preset: dict, **overrides):
    """`--model-config`: the `mnist` preset or a config file / folder of `config_class`, with `overrides`."""
    if name_or_path == MNIST_PRESET:
        return config_class(**{**preset, **overrides})
    if not Path(name_or_path).exists():
        raise ValueError(f"`--model-config` {name_or_path!r} is neither {MNIST_PRESET!r} nor a file or folder")
    return config_class.from_pretrained(name_or_path, **overrides)


def _add_common_arguments(parser: argparse.ArgumentParser, recipe: RecipeDefaults) -> None:
    add_training_arguments(parser, recipe)
    add_data_arguments(parser, labels="none")


def run_comparison_task(args: argparse.Namespace, task_class: type[ComparisonTask]) -> int:
    """`run_training`, then the folder's own model card in place of the loop's MAGE-worded one."""
    status = run_training(args, task_class)
    if PartialState().is_main_process:
        task_class.write_model_card(Path(args.output_dir))
    return status


class ComparisonTask(TrainingTask):
    """A baseline's task: its final folder loads with `AutoModel` (`loads`) and holds `holds`."""

    holds = ""
    loads = ""

    @classmethod
    def write_model_card(cls, output_dir: Path) -> None:
        summary = json.loads((output_dir / SUMMARY_FILE).read_text())
        name = output_dir.resolve().name
        (output_dir / "README.md").write_text(
            f"---\nlibrary_name: transformers\npipeline_tag: image-feature-extraction\ntags:\n- {cls.command}\n"
            f"- mage_hf\n---\n\n# {name}\n\n{cls.holds}, trained with `python -m mage_hf.comparison {cls.command}` "
            f"(mage_hf): {summary['global_step']} optimizer steps at global batch {summary['global_batch_size']}, "
            f"peak learning rate {summary['learning_rate']:.3g}.\n\n```python\n"
            "from transformers import AutoImageProcessor, AutoModel\n"
            f'model = AutoModel.from_pretrained("{name}")  # {cls.loads}\n'
            f'processor = AutoImageProcessor.from_pretrained("{name}")\n```\n'
        )


# ----------------------------------------------------------------------------------------------------------------
# MAE
# ----------------------------------------------------------------------------------------------------------------


class MaeTask(ComparisonTask):
    """MAE pretraining: `ViTMAEForPreTraining` with its own masking and loss."""

    command = "mae"
    holds = "A ViTMAE (`ViTMAEForPreTraining`: encoder and decoder)"
    loads = "ViTMAEModel, the encoder"

    def build_model(self) -> ViTMAEForPreTraining:
        args = self.args
        overrides = {}
        if args.mask_ratio is not None:
            overrides["mask_ratio"] = args.mask_ratio
        if args.norm_pix_loss is not None:
            overrides["norm_pix_loss"] = args.norm_pix_loss
        if args.model is not None:
            return ViTMAEForPreTraining.from_pretrained(args.model, **overrides)
        preset = {**MNIST_ENCODER, **{f"decoder_{k}": v for k, v in MNIST_DECODER.items()},
                  "mask_ratio": 0.75, "norm_pix_loss": False}
        return ViTMAEForPreTraining(load_vit_config(ViTMAEConfig, args.model_config or MNIST_PRESET, preset,
                                                    **overrides))

    @classmethod
    def validate_arguments(cls, args: argparse.Namespace) -> None:
        if args.mask_ratio is not None and not 0.0 < args.mask_ratio < 1.0:
            raise ValueError(f"`--mask-ratio` must be in (0, 1), got {args.mask_ratio}")

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    def training_step(self, model, batch, step: StepContext) -> StepOutput:
        pixel_values = normalize_pixels(batch["pixel_values"])
        config = extract_model_from_parallel(model).config
        num_patches = (config.image_size // config.patch_size) ** 2
        noise = torch.rand(len(pixel_values), num_patches, generator=step.generator).to(pixel_values.device)
        return StepOutput(model(pixel_values=pixel_values, noise=noise).loss)

    def save_pretrained(self, model, state_dict, save_dir: Path) -> None:
        model.save_pretrained(save_dir, state_dict=state_dict)
        vit_image_processor(model.config.image_size).save_pretrained(save_dir)


def add_mae_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common_arguments(parser, MAE_RECIPE)
    group = parser.add_argument_group("MAE")
    group.add_argument("--mask-ratio", type=float, help="fraction of patches masked (default: the config's, 0.75)")
    group.add_argument("--norm-pix-loss", action=argparse.BooleanOptionalAction,
                       help="per-patch normalised pixel targets (default: the config's; off in the mnist preset)")


# ----------------------------------------------------------------------------------------------------------------
# I-JEPA
# ----------------------------------------------------------------------------------------------------------------


class IJepaTask(ComparisonTask):
    """I-JEPA pretraining: context encoder + predictor trained, EMA target encoder updated after each step."""

    command = "ijepa"
    holds = "The EMA target encoder of an I-JEPA run (`IJepaModel`)"
    loads = "IJepaModel"

    def build_model(self) -> IJepaForPretraining:
        args = self.args
        if args.model is not None:
            encoder = IJepaModel.from_pretrained(args.model, add_pooling_layer=False)
            config = encoder.config
        else:
            preset = {**MNIST_ENCODER, "layer_norm_eps": 1e-6}
            config = load_vit_config(IJepaConfig, args.model_config or MNIST_PRESET, preset)
        grid = config.image_size // config.patch_size
        sampler = MultiBlockMaskSampler(grid, num_targets=args.num_targets, target_scale=args.target_scale,
                                        context_scale=args.context_scale)
        model = IJepaForPretraining(
            config, predictor_hidden_size=args.predictor_hidden_size, predictor_num_layers=args.predictor_num_layers,
            predictor_num_heads=args.predictor_num_heads, mask_sampler=sampler, loss_type=args.ijepa_loss,
        )
        if args.model is not None:
            for copy in (model.context_encoder, model.target_encoder):
                copy.load_state_dict(encoder.state_dict())
        return model

    @classmethod
    def validate_arguments(cls, args: argparse.Namespace) -> None:
        start, end = args.ema_momentum
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"`--ema-momentum` must be START END with 0 <= START <= END <= 1, got {args.ema_momentum}")

    @property
    def image_size(self) -> int:
        return self.model.context_encoder.config.image_size

    def training_step(self, model, batch, step: StepContext) -> StepOutput:
        return StepOutput(model(normalize_pixels(batch["pixel_values"]), generator=step.generator))

    def after_optimizer_step(self, model: nn.Module, global_step: int, max_steps: int) -> None:
        start, end = self.args.ema_momentum
        momentum = ema_momentum(global_step, max_steps, start=start, end=end)
        extract_model_from_parallel(model).update_target_encoder(momentum)

    def export_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Only the EMA target encoder is saved (what the paper evaluates)."""
        return {k.removeprefix(IJEPA_PREFIX): v for k, v in state_dict.items() if k.startswith(IJEPA_PREFIX)}

    def save_pretrained(self, model, state_dict, save_dir: Path) -> None:
        model.target_encoder.save_pretrained(save_dir, state_dict=state_dict)
        vit_image_processor(model.target_encoder.config.image_size).save_pretrained(save_dir)


def add_ijepa_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common_arguments(parser, IJEPA_RECIPE)
    group = parser.add_argument_group("I-JEPA")
    group.add_argument("--ema-momentum", type=float, nargs=2, default=(0.996, 1.0), metavar=("START", "END"),
                       help="target-encoder EMA momentum, linear from START to END over the run (paper: 0.996 1)")
    group.add_argument("--num-targets", type=int, default=4, help="target blocks per image (paper: 4)")
    group.add_argument("--target-scale", type=float, nargs=2, default=(0.15, 0.2), metavar=("LOW", "HIGH"),
                       help="area fraction of each target block (paper: 0.15 0.2)")
    group.add_argument("--context-scale", type=float, nargs=2, default=(0.85, 1.0), metavar=("LOW", "HIGH"),
                       help="area fraction of the context block before the targets are removed (paper: 0.85 1)")
    group.add_argument("--predictor-hidden-size", type=int, default=MNIST_DECODER["hidden_size"])
    group.add_argument("--predictor-num-layers", type=int, default=MNIST_DECODER["num_hidden_layers"])
    group.add_argument("--predictor-num-heads", type=int, default=MNIST_DECODER["num_attention_heads"])
    group.add_argument("--ijepa-loss", choices=("l2", "smooth_l1"), default="l2",
                       help="l2 (the paper) or smooth_l1 (the authors' code)")


# command -> (add_arguments, task class)
COMMANDS = {"mae": (add_mae_arguments, MaeTask), "ijepa": (add_ijepa_arguments, IJepaTask)}

__all__ = [
    "COMMANDS",
    "IJEPA_RECIPE",
    "MAE_RECIPE",
    "MNIST_DECODER",
    "MNIST_ENCODER",
    "ComparisonTask",
    "IJepaTask",
    "MaeTask",
    "add_ijepa_arguments",
    "add_mae_arguments",
    "normalize_pixels",
    "run_comparison_task",
    "vit_image_processor",
]

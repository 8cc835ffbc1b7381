"""`mage-hf finetune`: fine-tune a pretrained MAGE encoder end to end for image classification.

Recipe (the original README's ViT-B command for its `main_finetune.py`, built on MAE's fine-tuning code): AdamW,
base lr 2.5e-4 per 256 images, layer-wise lr decay 0.65, weight decay 0.05, 100 epochs with 5 warm-up epochs then
cosine, drop path 0.1, label smoothing 0.1, no gradient clipping. Not as in that command: RandomResizedCrop(scale
0.08-1, MAE's; the original crops with 0.2-1) + flip, mixup off by default (the command: 0.8); its RandAugment and
CutMix are not implemented (its random erasing is off). Top-1 / top-5 accuracy is measured after every epoch.
"""

from __future__ import annotations

import argparse
import re

from torch import nn

from .arguments import RecipeDefaults, add_training_arguments
from .classification import ClassificationTask
from .data import add_data_arguments
from .loop import is_decayed

FINETUNE_RECIPE = RecipeDefaults(
    base_learning_rate=2.5e-4,
    weight_decay=0.05,
    adam_beta1=0.9,
    adam_beta2=0.999,
    num_train_epochs=100,
    warmup_epochs=5,
    max_grad_norm=0.0,
    min_crop_scale=0.08,
)
FINETUNE_HEAD_INIT_STD = 2e-5  # MAE's main_finetune: trunc_normal_(head.weight, std=2e-5)
_LAYER_PATTERN = re.compile(r"^mage\.layers\.(\d+)\.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, FINETUNE_RECIPE)
    add_data_arguments(parser, labels="required")
    group = parser.add_argument_group("fine-tuning")
    group.add_argument("--layer-decay", type=float, default=0.65, help="layer-wise lr decay (1: off)")
    group.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate of the encoder")
    group.add_argument("--label-smoothing", type=float, default=0.1)
    group.add_argument("--mixup", type=float, default=0.0, help="mixup Beta(alpha, alpha) parameter (0: off)")



def layer_id(name: str, num_layers: int) -> int:
    """0 for the embeddings, i + 1 for encoder layer i, num_layers + 1 for the head (MAE's `get_layer_id_for_vit`)."""
    if name.startswith("mage.embeddings."):
        return 0
    match = _LAYER_PATTERN.match(name)
    return int(match.group(1)) + 1 if match else num_layers + 1


def layer_decay_groups(model: nn.Module, weight_decay: float, layer_decay: float, num_layers: int) -> list[dict]:
    """Optimizer groups per (layer, decayed or not); layer l's lr is scaled by layer_decay ** (num_layers + 1 - l)."""
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = layer_id(name, num_layers)
        decayed = is_decayed(name, param)
        group = groups.setdefault((layer, decayed), {
            "params": [], "weight_decay": weight_decay if decayed else 0.0,
            "lr_scale": layer_decay ** (num_layers + 1 - layer),
        })
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


class FinetuneTask(ClassificationTask):
    command = "finetune"
    head_init_std = FINETUNE_HEAD_INIT_STD

    @classmethod
    def validate_arguments(cls, args: argparse.Namespace) -> None:
        if not 0.0 < args.layer_decay <= 1.0:
            raise ValueError(f"`--layer-decay` must be in (0, 1], got {args.layer_decay}")
        if not 0.0 <= args.drop_path < 1.0:
            raise ValueError(f"`--drop-path` must be in [0, 1), got {args.drop_path}")
        if not 0.0 <= args.label_smoothing < 1.0:
            raise ValueError(f"`--label-smoothing` must be in [0, 1), got {args.label_smoothing}")
        if args.mixup < 0:
            raise ValueError(f"`--mixup` must be >= 0 (0: off), got {args.mixup}")

    def __init__(self, args, data):
        self.label_smoothing = args.label_smoothing
        self.mixup_alpha = args.mixup
        super().__init__(args, data)

    def config_overrides(self) -> dict:
        return {"drop_path_rate": self.args.drop_path}

    def parameter_groups(self, model: nn.Module) -> list[dict]:
        return layer_decay_groups(
            model, self.args.weight_decay, self.args.layer_decay, model.config.num_hidden_layers
        )


__all__ = ["FINETUNE_RECIPE", "FinetuneTask", "add_arguments", "layer_decay_groups", "layer_id"]

"""`mage-hf linprobe`: linear probing of a frozen pretrained MAGE encoder.

The head is the original's: mean-pooled encoder features -> LayerNorm (`fc_norm`, frozen) -> BatchNorm1d without
affine parameters -> Linear; only the BatchNorm statistics and the Linear layer train, and the encoder stays in
eval mode (no dropout), so the features are fixed. The original optimizer is LARS (base lr 0.1, 90 epochs, 10
warm-up; its README's command: global batch 4096); LARS is not implemented here: the default is SGD with momentum
0.9 at the same base lr, and `--optimizer adamw` (base lr 1e-3 unless given) is the alternative. The default crop
scale is 0.08-1 (the original linear probe's is 0.2-1).
"""

from __future__ import annotations

import argparse

import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn

from .arguments import RecipeDefaults, add_training_arguments
from .classification import ClassificationTask
from .data import add_data_arguments


LINPROBE_RECIPE = RecipeDefaults(
    base_learning_rate=0.1,
    weight_decay=0.0,
    adam_beta1=0.9,
    adam_beta2=0.999,
    num_train_epochs=90,
    warmup_epochs=10,
    max_grad_norm=0.0,
    min_crop_scale=0.08,
)
LINPROBE_ADAMW_BASE_LR = 1e-3  # our choice for `--optimizer adamw` (0.1 is an SGD/LARS learning rate)
LINPROBE_HEAD_INIT_STD = 0.01  # MAE's main_linprobe: trunc_normal_(head.weight, std=0.01)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, LINPROBE_RECIPE)
    add_data_arguments(parser, labels="required")
    group = parser.add_argument_group("linear probe")
    group.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                       help="SGD with momentum (default) or AdamW; the original's LARS is not implemented")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")


class LinearProbeTask(ClassificationTask):
    command = "linprobe"
    use_linear_probe_bn = True
    head_init_std = LINPROBE_HEAD_INIT_STD

    @classmethod
    def validate_arguments(cls, args: argparse.Namespace) -> None:
        if args.model is None:
            raise ValueError("`--model` is required: the pretrained MAGE folder whose encoder is probed")
        if not 0.0 <= args.momentum < 1.0:
            raise ValueError(f"`--momentum` must be in [0, 1), got {args.momentum}")
        if args.optimizer == "adamw" and args.learning_rate is None and args.base_learning_rate is None:
            args.base_learning_rate = LINPROBE_ADAMW_BASE_LR  # the recipe's base lr is SGD's

    def build_model(self):
        model = super().build_model()
        model.requires_grad_(False)
        model.head.requires_grad_(True)
        return model

    def train_mode(self, model: nn.Module) -> None:
        model.eval()  # frozen features: no dropout in the encoder
        bare = extract_model_from_parallel(model)
        bare.head_norm.train()
        bare.head.train()

    def create_optimizer(self, groups: list[dict], learning_rate: float) -> torch.optim.Optimizer:
        if self.args.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=learning_rate, momentum=self.args.momentum)
        return super().create_optimizer(groups, learning_rate)


__all__ = ["LINPROBE_RECIPE", "LinearProbeTask", "add_arguments"]

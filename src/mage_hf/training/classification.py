"""What `finetune` and `linprobe` share: a `MageForImageClassification` built from a pretrained MAGE folder, the
(soft-target) cross-entropy step with optional label smoothing and mixup, and top-1 / top-5 evaluation."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from torch import nn

from ..modeling_mage import MageForImageClassification
from .loop import StepContext, StepOutput, TrainingTask, save_image_processor
from .pretrain import DEFAULT_MODEL_CONFIG, load_config

logger = logging.getLogger(__name__)

TOP_K = 5


def soft_targets(labels: torch.LongTensor, num_labels: int, smoothing: float) -> torch.Tensor:
    """(B,) class ids -> (B, K) targets: 1 - smoothing + smoothing / K on the class, smoothing / K elsewhere."""
    off = smoothing / num_labels
    return F.one_hot(labels, num_labels).float() * (1.0 - smoothing) + off


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum(targets * log_softmax(logits))."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def mixup(pixel_values: torch.Tensor, targets: torch.Tensor, alpha: float, seed: int):
    """Mix each image (and target) with the batch's reversed order, weight lam ~ Beta(alpha, alpha) (timm's
    batch mixup); `seed` keys the draw."""
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    return (
        lam * pixel_values + (1.0 - lam) * pixel_values.flip(0),
        lam * targets + (1.0 - lam) * targets.flip(0),
    )


class ClassificationTask(TrainingTask):
    """A classifier on the MAGE encoder: mean-pooled features -> fc_norm -> (BatchNorm) -> head."""

    card_kind = "classification"
    wants_eval = True
    use_linear_probe_bn = False
    head_init_std = 0.01  # std of the truncated-normal init of a new head
    label_smoothing = 0.0
    mixup_alpha = 0.0

    @classmethod
    def uses_labels(cls, args: argparse.Namespace) -> bool:
        return True

    def config_overrides(self) -> dict:
        """Config fields the command sets (e.g. drop path)."""
        return {}

    def build_model(self) -> MageForImageClassification:
        args, data = self.args, self.data
        overrides = {
            "num_labels": data.num_labels,
            "id2label": dict(enumerate(data.label_names)),
            "label2id": {name: i for i, name in enumerate(data.label_names)},
            "use_linear_probe_bn": self.use_linear_probe_bn,
            **self.config_overrides(),
        }
        if args.model is not None:
            model, info = MageForImageClassification.from_pretrained(
                args.model, output_loading_info=True, ignore_mismatched_sizes=True, **overrides
            )
            reloaded = {str(key[0] if isinstance(key, tuple) else key) for key in info.get("mismatched_keys", [])}
            new_head = any(key.startswith("head.") for key in set(info.get("missing_keys", [])) | reloaded)
        else:
            logger.warning("no `--model`: training a classifier from random weights (and a random tokenizer)")
            model = MageForImageClassification(load_config(args.model_config or DEFAULT_MODEL_CONFIG, **overrides))
            new_head = True
        if new_head:
            nn.init.trunc_normal_(model.head.weight, std=self.head_init_std)
            nn.init.zeros_(model.head.bias)
            if isinstance(model.head_norm, nn.BatchNorm1d):
                # from_pretrained leaves the statistics of a new BatchNorm uninitialised (not reset by _init_weights)
                model.head_norm.reset_running_stats()
        model.mage.vqgan.requires_grad_(False)
        return model

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    def train_mode(self, model: nn.Module) -> None:
        model.train()
        extract_model_from_parallel(model).mage.vqgan.eval()

    def training_step(self, model, batch, step: StepContext) -> StepOutput:
        pixel_values = batch["pixel_values"]
        targets = soft_targets(batch["labels"], self.data.num_labels, self.label_smoothing)
        if self.mixup_alpha > 0:
            pixel_values, targets = mixup(pixel_values, targets, self.mixup_alpha, step.generator.initial_seed())
        logits = model(pixel_values=pixel_values).logits
        return StepOutput(soft_target_cross_entropy(logits, targets))

    @torch.no_grad()
    def evaluate(self, model, dataloader, accelerator) -> dict[str, float]:
        """Top-1 / top-k accuracy (k = 5, or the class count if smaller) and cross entropy, over every example."""
        model.eval()
        k = min(TOP_K, self.data.num_labels)
        top1, topk, losses = [], [], []
        for batch in dataloader:
            logits, labels = model(pixel_values=batch["pixel_values"]).logits, batch["labels"]
            ranked = logits.topk(k, dim=-1).indices
            gathered = accelerator.gather_for_metrics((
                ranked[:, 0] == labels,
                (ranked == labels[:, None]).any(-1),
                F.cross_entropy(logits.float(), labels, reduction="none"),
            ))
            for store, value in zip((top1, topk, losses), gathered):
                store.append(value.float())
        return {
            "top1_accuracy": torch.cat(top1).mean().item(),
            f"top{k}_accuracy": torch.cat(topk).mean().item(),
            "loss": torch.cat(losses).mean().item(),
        }

    def save_pretrained(self, model, state_dict, save_dir: Path) -> None:
        model.save_pretrained(save_dir, state_dict=state_dict)
        save_image_processor(model.config.image_size, save_dir)


__all__ = ["ClassificationTask", "mixup", "soft_target_cross_entropy", "soft_targets"]

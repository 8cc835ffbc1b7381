"""`mage-hf train-tokenizer`: train MAGE's VQGAN tokenizer (`MageVQModel`) from scratch or continue one.

Loss: L1 (or L2) reconstruction + the model's codebook/commitment loss, plus, from `--disc-start` steps on, a hinge
PatchGAN loss (a small discriminator trained in the same step: its own hinge loss on detached reconstructions, and
the generator term through a detached copy of its weights). There is no perceptual (LPIPS) loss: its VGG weights
cannot be downloaded here. Codebook usage (fraction of codes used over the last `--codebook-usage-window` batches,
and perplexity) is logged and reported at the end.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import deque
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import extract_model_from_parallel
from torch import nn
from torch.func import functional_call

from ..modeling_vqgan import MageVQModel
from .arguments import RecipeDefaults, add_training_arguments
from .data import add_data_arguments
from .loop import StepContext, StepOutput, TrainingTask, save_image_processor
from .pretrain import DEFAULT_MODEL_CONFIG, load_config, load_tokenizer

# Adam betas (0.5, 0.9) as taming-transformers' VQGAN (MAGE's tokenizer code base); lr 1e-4 at batch 256.
TOKENIZER_RECIPE = RecipeDefaults(
    base_learning_rate=1e-4,
    weight_decay=0.0,
    adam_beta1=0.5,
    adam_beta2=0.9,
    num_train_epochs=100,
    warmup_epochs=0,
    max_grad_norm=0.0,
    min_crop_scale=0.2,
)
LEAKY_RELU_SLOPE = 0.2  # pix2pix PatchGAN
MAX_CHANNEL_MULTIPLIER = 8
GROUP_NORM_GROUPS = 32
VQ_PREFIX = "vqgan."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, TOKENIZER_RECIPE)
    add_data_arguments(parser, labels="none")
    group = parser.add_argument_group("tokenizer")
    group.add_argument("--vq-config", help="JSON file of MageVQModel arguments (or its saved config.json)")
    group.add_argument("--reconstruction-loss", choices=("l1", "l2"), default="l1")
    group.add_argument("--disc-start", type=int, help="add the PatchGAN loss from this optimizer step (default: never)")
    group.add_argument("--disc-weight", type=float, default=0.1, help="weight of the generator's adversarial loss")
    group.add_argument("--disc-channels", type=int, default=64, help="width of the discriminator's first layer")
    group.add_argument("--disc-layers", type=int, default=3, help="stride-2 layers of the discriminator")
    group.add_argument("--codebook-usage-window", type=int, default=100, help="batches behind the usage statistics")



class PatchDiscriminator(nn.Module):
    """pix2pix / taming PatchGAN with GroupNorm: 4x4 convs, `num_layers` of stride 2, then two of stride 1.
    (B, C, H, W) images -> (B, 1, h, w) real-vs-fake logits, one per patch."""

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3):
        super().__init__()
        widths = [channels * min(2**i, MAX_CHANNEL_MULTIPLIER) for i in range(num_layers + 1)]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 4, 2, 1), nn.LeakyReLU(LEAKY_RELU_SLOPE)]
        for i in range(1, num_layers + 1):
            stride = 2 if i < num_layers else 1
            layers += [
                nn.Conv2d(widths[i - 1], widths[i], 4, stride, 1, bias=False),
                nn.GroupNorm(math.gcd(GROUP_NORM_GROUPS, widths[i]), widths[i]),
                nn.LeakyReLU(LEAKY_RELU_SLOPE),
            ]
        layers.append(nn.Conv2d(widths[-1], 1, 4, 1, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


class VQGANTrainingModule(nn.Module):
    """The tokenizer and its optional discriminator as one module, so one optimizer and one DDP wrapper serve both.

    `forward(pixel_values, adversarial)` returns a dict: `loss` (total), its parts and `indices` (B, N)."""

    def __init__(self, vqgan: MageVQModel, discriminator: PatchDiscriminator | None, reconstruction_loss: str,
                 disc_weight: float):
        super().__init__()
        self.vqgan = vqgan
        self.discriminator = discriminator
        self.reconstruction_loss = reconstruction_loss
        self.disc_weight = disc_weight

    def forward(self, pixel_values: torch.Tensor, adversarial: bool = False) -> dict[str, torch.Tensor]:
        out = self.vqgan(pixel_values)
        reconstruction = out.sample
        distance = F.l1_loss if self.reconstruction_loss == "l1" else F.mse_loss
        rec_loss = distance(reconstruction, pixel_values)
        result = {"reconstruction_loss": rec_loss, "commit_loss": out.commit_loss, "indices": out.indices}
        loss = rec_loss + out.commit_loss
        if adversarial and self.discriminator is not None:
            # Generator term through detached discriminator weights: it moves the tokenizer only.
            frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
            generator_loss = -functional_call(self.discriminator, frozen, (reconstruction,)).mean()
            discriminator_loss = (
                F.relu(1.0 - self.discriminator(pixel_values)).mean()
                + F.relu(1.0 + self.discriminator(reconstruction.detach())).mean()
            )
            loss = loss + self.disc_weight * generator_loss + discriminator_loss
            result.update(generator_loss=generator_loss, discriminator_loss=discriminator_loss)
        result["loss"] = loss
        return result


def codebook_statistics(counts: torch.Tensor) -> dict[str, float]:
    """(K,) code counts -> fraction of codes used and perplexity exp(H(p)) of the code distribution."""
    total = counts.sum().clamp_min(1)
    probs = counts.double() / total
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
    return {"codebook_usage": float((counts > 0).double().mean()), "codebook_perplexity": float(entropy.exp())}


class TokenizerTask(TrainingTask):
    command = "train-tokenizer"
    card_kind = "vqgan"

    @classmethod
    def validate_arguments(cls, args: argparse.Namespace) -> None:
        given = [flag for flag, value in (("--model", args.model), ("--model-config", args.model_config),
                                          ("--vq-config", args.vq_config)) if value is not None]
        if len(given) > 1:
            raise ValueError(f"pass at most one of `--model`, `--model-config` and `--vq-config`, got {given}")
        if args.disc_start is not None and args.disc_start < 0:
            raise ValueError(f"`--disc-start` must be >= 0, got {args.disc_start}")
        if args.disc_weight < 0:
            raise ValueError(f"`--disc-weight` must be >= 0, got {args.disc_weight}")
        if args.disc_layers < 1 or args.disc_channels < 1:
            raise ValueError("`--disc-layers` and `--disc-channels` must be >= 1")
        if args.codebook_usage_window < 1:
            raise ValueError(f"`--codebook-usage-window` must be >= 1, got {args.codebook_usage_window}")

    @classmethod
    def find_unused_parameters(cls, args: argparse.Namespace) -> bool:
        return args.disc_start is not None  # the discriminator has no gradients before it starts

    def __init__(self, args, data):
        super().__init__(args, data)
        self.recent_counts: deque[torch.Tensor] = deque(maxlen=args.codebook_usage_window)

    def build_model(self) -> VQGANTrainingModule:
        args = self.args
        if args.model is not None:
            vqgan = load_tokenizer(args.model, flag="--model")
        elif args.vq_config is not None:
            path = Path(args.vq_config)
            if not path.is_file():
                raise ValueError(f"`--vq-config` {args.vq_config!r} is not a file")
            vqgan = MageVQModel.from_config(json.loads(path.read_text()))
        else:
            vqgan = MageVQModel(**load_config(args.model_config or DEFAULT_MODEL_CONFIG).vq_config)
        vqgan.requires_grad_(True)
        discriminator = None
        if args.disc_start is not None:
            discriminator = PatchDiscriminator(vqgan.config.out_channels, args.disc_channels, args.disc_layers)
        return VQGANTrainingModule(vqgan, discriminator, args.reconstruction_loss, args.disc_weight)

    @property
    def image_size(self) -> int:
        return self.model.vqgan.config.sample_size

    @property
    def codebook_size(self) -> int:
        return self.model.vqgan.config.num_vq_embeddings

    def training_step(self, model, batch, step: StepContext) -> StepOutput:
        adversarial = self.args.disc_start is not None and step.global_step >= self.args.disc_start
        out = model(pixel_values=batch["pixel_values"], adversarial=adversarial)
        self.recent_counts.append(torch.bincount(out["indices"].flatten(), minlength=self.codebook_size))
        logs = {k: v.detach() for k, v in out.items() if k not in ("loss", "indices")}
        return StepOutput(out["loss"], logs)

    def window_metrics(self, accelerator: Accelerator) -> dict[str, float]:
        if not self.recent_counts:
            return {}
        counts = accelerator.reduce(torch.stack(list(self.recent_counts)).sum(0), reduction="sum")
        return codebook_statistics(counts)

    @torch.no_grad()
    def evaluate(self, model, dataloader, accelerator) -> dict[str, float]:
        """Reconstruction L1 and codebook statistics over the evaluation data."""
        model.eval()
        vqgan = extract_model_from_parallel(model).vqgan
        errors, counts = [], torch.zeros(self.codebook_size, dtype=torch.long, device=accelerator.device)
        for batch in dataloader:
            out = vqgan(batch["pixel_values"])
            error = (out.sample - batch["pixel_values"]).abs().flatten(1).mean(1)
            error, indices = accelerator.gather_for_metrics((error, out.indices))
            errors.append(error)
            counts += torch.bincount(indices.flatten(), minlength=self.codebook_size)
        return {"reconstruction_l1": torch.cat(errors).mean().item(), **codebook_statistics(counts)}

    def export_state_dict(self, state_dict):
        return {k[len(VQ_PREFIX):]: v for k, v in state_dict.items() if k.startswith(VQ_PREFIX)}

    def save_pretrained(self, model, state_dict, save_dir: Path) -> None:
        vqgan = MageVQModel.from_config(model.vqgan.config)
        vqgan.load_state_dict(state_dict)
        vqgan.save_pretrained(save_dir)
        save_image_processor(vqgan.config.sample_size, save_dir)


__all__ = [
    "TOKENIZER_RECIPE",
    "PatchDiscriminator",
    "TokenizerTask",
    "VQGANTrainingModule",
    "add_arguments",
    "codebook_statistics",
]

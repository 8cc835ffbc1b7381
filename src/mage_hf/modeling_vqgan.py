"""MAGE's VQGAN tokenizer (MaskGIT's VQGAN, converted by the MAGE authors) as a diffusers model.

It differs from diffusers' `VQModel`: bias-free 3x3 convs in the residual blocks, 2x2 average-pool downsampling,
no attention, no `quant_conv`, and a residual shortcut that (in the original, kept here) projects the block's
output rather than its input when the channel count changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import AutoencoderMixin, DecoderOutput
from diffusers.models.autoencoders.vq_model import VQEncoderOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn

from .configuration_mage import vq_downsample_factor
from .input_checks import check_id_range

# The convs run in NHWC ("channels_last"): oneDNN's fastest CPU layout (measured in docs/performance.md), also good on
# GPU.
CONV_MEMORY_FORMAT = torch.channels_last


class MageVQGroupNormSiLU(nn.GroupNorm):
    """GroupNorm followed by SiLU (swish), the pre-activation of every VQGAN conv."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # In place without autograd (one fewer full-size tensor; see docs/performance.md); SiLU's backward needs its
        # input.
        return F.silu(super().forward(hidden_states), inplace=not torch.is_grad_enabled())


class MageVQResnetBlock(nn.Module):
    """GN -> SiLU -> conv3x3 -> GN -> SiLU -> conv3x3 (no biases), plus the original's shortcut."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int, eps: float):
        super().__init__()
        self.norm1 = MageVQGroupNormSiLU(num_groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = MageVQGroupNormSiLU(num_groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        # Original quirk: the 1x1 shortcut maps out->out channels and is applied to the block output `h`.
        self.nin_shortcut = (
            nn.Conv2d(out_channels, out_channels, 1, bias=False) if in_channels != out_channels else None
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        h = self.conv2(self.norm2(self.conv1(self.norm1(hidden_states))))
        if self.nin_shortcut is None:
            return hidden_states + h
        return self.nin_shortcut(h) + h


def _resnet_stack(in_channels: int, out_channels: int, depth: int, num_groups: int, eps: float) -> nn.ModuleList:
    """`depth` residual blocks, the first mapping `in_channels` to `out_channels`."""
    return nn.ModuleList(
        MageVQResnetBlock(in_channels if i == 0 else out_channels, out_channels, num_groups, eps) for i in range(depth)
    )


class MageVQEncoder(nn.Module):
    """(B, C, H, W) pixels in [0, 1] -> (B, latent_channels, H / f, W / f) pre-quantisation latents."""

    def __init__(self, in_channels, block_out_channels, layers_per_block, latent_channels, norm_num_groups, norm_eps):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1, bias=False)
        self.down_blocks = nn.ModuleList()
        channels = block_out_channels[0]
        for out_channels in block_out_channels:
            self.down_blocks.append(_resnet_stack(channels, out_channels, layers_per_block, norm_num_groups, norm_eps))
            channels = out_channels
        self.mid_blocks = _resnet_stack(channels, channels, 2, norm_num_groups, norm_eps)
        self.norm_out = MageVQGroupNormSiLU(norm_num_groups, channels, eps=norm_eps)
        self.conv_out = nn.Conv2d(channels, latent_channels, 1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv_in(pixel_values.contiguous(memory_format=CONV_MEMORY_FORMAT))
        last_level = len(self.down_blocks) - 1
        for level, blocks in enumerate(self.down_blocks):
            for block in blocks:
                hidden_states = block(hidden_states)
            if level != last_level:
                hidden_states = F.avg_pool2d(hidden_states, kernel_size=2, stride=2)
        for block in self.mid_blocks:
            hidden_states = block(hidden_states)
        return self.conv_out(self.norm_out(hidden_states)).contiguous()


class MageVQUpsample(nn.Module):
    """Nearest-neighbour x2 followed by a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(hidden_states, scale_factor=2.0, mode="nearest"))


class MageVQDecoder(nn.Module):
    """(B, vq_embed_dim, h, w) latents -> (B, out_channels, h * f, w * f) images (not clipped)."""

    def __init__(self, out_channels, block_out_channels, layers_per_block, latent_channels, norm_num_groups, norm_eps):
        super().__init__()
        channels = block_out_channels[-1]
        self.conv_in = nn.Conv2d(latent_channels, channels, 3, padding=1)
        self.mid_blocks = _resnet_stack(channels, channels, 2, norm_num_groups, norm_eps)
        # up_blocks[i] works at the resolution of encoder level len - 1 - i (deepest first).
        self.up_blocks = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for i, level_channels in enumerate(reversed(block_out_channels)):
            self.up_blocks.append(_resnet_stack(channels, level_channels, layers_per_block, norm_num_groups, norm_eps))
            channels = level_channels
            if i != len(block_out_channels) - 1:
                self.upsamplers.append(MageVQUpsample(channels))
        self.norm_out = MageVQGroupNormSiLU(norm_num_groups, channels, eps=norm_eps)
        self.conv_out = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv_in(latents.contiguous(memory_format=CONV_MEMORY_FORMAT))
        for block in self.mid_blocks:
            hidden_states = block(hidden_states)
        for i, blocks in enumerate(self.up_blocks):
            for block in blocks:
                hidden_states = block(hidden_states)
            if i < len(self.upsamplers):
                hidden_states = self.upsamplers[i](hidden_states)
        return self.conv_out(self.norm_out(hidden_states)).contiguous()


class MageVQCodebook(nn.Embedding):
    """The VQ codebook, weight (num_vq_embeddings, vq_embed_dim). Both of its uses go through `forward`, so
    offloading and layerwise-casting hooks see the weight: integer ids (...) -> (..., D) code vectors (a lookup);
    float vectors (M, D) -> (M,) ids of the nearest codes by squared L2 (`|z|^2 + |e|^2 - 2 z.e`, argmin)."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not inputs.is_floating_point():
            return super().forward(inputs)
        codebook = self.weight
        distances = inputs.pow(2).sum(dim=1, keepdim=True) + codebook.pow(2).sum(dim=1) - 2.0 * inputs @ codebook.t()
        return distances.argmin(dim=1)


class MageVectorQuantizer(nn.Module):
    """Nearest-codebook-entry quantiser (squared L2), straight-through gradients."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.embedding = MageVQCodebook(num_embeddings, embedding_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / num_embeddings, 1.0 / num_embeddings)

    def forward(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.LongTensor]:
        """(B, D, h, w) latents -> quantised (B, D, h, w) and row-major indices (B, h * w)."""
        batch, dim, height, width = latents.shape
        indices = self.embedding(latents.permute(0, 2, 3, 1).reshape(-1, dim)).view(batch, height * width)
        quantized = self.lookup(indices, height, width)
        return latents + (quantized - latents).detach(), indices

    def lookup(self, indices: torch.LongTensor, height: int, width: int) -> torch.Tensor:
        """(B, h * w) indices -> (B, D, h, w) codebook vectors."""
        return self.embedding(indices).view(indices.shape[0], height, width, -1).permute(0, 3, 1, 2).contiguous()


@dataclass
class MageVQOutput(BaseOutput):
    """
    Output of `MageVQModel.forward`.

    Args:
        sample: (B, C, H, W) reconstruction (not clipped).
        commit_loss: scalar codebook loss + `commitment_beta` (0.25) * commitment loss (the VQGAN training terms).
        indices: (B, N) token ids of the input.
    """

    sample: torch.Tensor = None
    commit_loss: torch.Tensor | None = None
    indices: torch.LongTensor | None = None


class MageVQModel(ModelMixin, AutoencoderMixin, ConfigMixin):
    r"""
    MAGE's VQGAN tokenizer. Pixels are RGB in **[0, 1]** (no mean/std normalisation).

    Same method names as diffusers' `VQModel` (`encode(x).latents`, `decode(z, force_not_quantize).sample`), plus
    token-level helpers: `tokenize` (B, C, H, W) -> (B, N) and `decode_indices` (B, N) -> (B, C, H, W), with
    N = (H / f) * (W / f), f = 2 ** (len(block_out_channels) - 1) (16 for the release: 256 px -> 16x16 tokens).

    Memory and speed: `enable_slicing()` (diffusers' `AutoencoderMixin`) encodes and decodes a batch one image at a
    time, so peak memory does not grow with the batch; `compile_convs(**kwargs)` `torch.compile`s the encoder and
    decoder (GroupNorm + SiLU + conv fused by inductor). The convs run channels-last; load with `dtype=bfloat16`
    for bf16 convs.

    Example:
    ```python
    >>> import torch
    >>> from mage_hf import MageVQModel
    >>> vq = MageVQModel(block_out_channels=(32, 32, 64), layers_per_block=1, latent_channels=32,
    ...                  num_vq_embeddings=64, vq_embed_dim=32, sample_size=32)
    >>> ids = vq.tokenize(torch.rand(2, 3, 32, 32))  # (2, 64)
    >>> images = vq.decode_indices(ids)  # (2, 3, 32, 32)
    ```
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (128, 128, 256, 256, 512),
        layers_per_block: int = 2,
        latent_channels: int = 256,
        num_vq_embeddings: int = 1024,
        vq_embed_dim: int | None = None,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        sample_size: int = 256,
        commitment_beta: float = 0.25,
    ):
        super().__init__()
        vq_embed_dim = latent_channels if vq_embed_dim is None else vq_embed_dim
        if vq_embed_dim != latent_channels:
            raise ValueError(
                f"`vq_embed_dim` ({vq_embed_dim}) must equal `latent_channels` ({latent_channels}): MAGE's VQGAN "
                "has no quant_conv"
            )
        for channels in block_out_channels:
            if channels % norm_num_groups:
                raise ValueError(
                    f"every entry of `block_out_channels` {tuple(block_out_channels)} must be divisible by "
                    f"`norm_num_groups` ({norm_num_groups})"
                )
        block_out_channels = tuple(block_out_channels)
        self.encoder = MageVQEncoder(
            in_channels, block_out_channels, layers_per_block, latent_channels, norm_num_groups, norm_eps
        )
        self.decoder = MageVQDecoder(
            out_channels, block_out_channels, layers_per_block, latent_channels, norm_num_groups, norm_eps
        )
        self.quantizer = MageVectorQuantizer(num_vq_embeddings, vq_embed_dim)
        self.use_slicing = False

    def compile_convs(self, **compile_kwargs) -> "MageVQModel":
        """`torch.compile` the encoder and decoder in place (`nn.Module.compile`: names and saving unchanged)."""
        self.encoder.compile(**compile_kwargs)
        self.decoder.compile(**compile_kwargs)
        return self

    def _sliced(self, module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """`module(inputs)`, one image at a time when slicing is enabled."""
        if not self.use_slicing or inputs.shape[0] <= 1:
            return module(inputs)
        return torch.cat([module(chunk) for chunk in inputs.split(1)])

    @property
    def downsample_factor(self) -> int:
        """Pixels per token side."""
        return vq_downsample_factor(self.config.block_out_channels)

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"`pixel_values` must be a torch.Tensor, got {type(pixel_values).__name__}")
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.in_channels:
            raise ValueError(
                f"`pixel_values` must have shape (batch, {self.config.in_channels}, height, width), "
                f"got {tuple(pixel_values.shape)}"
            )
        factor = self.downsample_factor
        if pixel_values.shape[2] % factor or pixel_values.shape[3] % factor:
            raise ValueError(
                f"`pixel_values` height and width must be multiples of {factor}, got {tuple(pixel_values.shape[2:])}"
            )
        if not pixel_values.is_floating_point():
            raise TypeError(f"`pixel_values` must be a float tensor in [0, 1], got dtype {pixel_values.dtype}")

    @apply_forward_hook
    def encode(self, x: torch.Tensor, return_dict: bool = True) -> VQEncoderOutput | tuple[torch.Tensor]:
        """(B, C, H, W) pixels in [0, 1] -> `latents` (B, latent_channels, H / f, W / f), before quantisation."""
        self._check_pixel_values(x)
        latents = self._sliced(self.encoder, x.to(self.dtype))
        return VQEncoderOutput(latents=latents) if return_dict else (latents,)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.LongTensor]:
        """(B, D, h, w) latents -> quantised latents (B, D, h, w) and row-major token ids (B, h * w)."""
        return self.quantizer(z)

    @apply_forward_hook
    def decode(
        self, z: torch.Tensor, force_not_quantize: bool = False, return_dict: bool = True
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """(B, D, h, w) latents -> `sample` (B, C, h * f, w * f); quantises `z` first unless `force_not_quantize`."""
        if z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"`z` must have shape (batch, {self.config.latent_channels}, h, w), got {tuple(z.shape)}"
            )
        if not force_not_quantize:
            z, _ = self.quantizer(z)
        sample = self._sliced(self.decoder, z)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    @apply_forward_hook
    def tokenize(self, pixel_values: torch.Tensor) -> torch.LongTensor:
        """(B, C, H, W) pixels in [0, 1] -> (B, N) token ids, row-major over the (H / f, W / f) grid."""
        _, indices = self.quantizer(self.encode(pixel_values).latents)
        return indices

    @apply_forward_hook
    def decode_indices(self, ids: torch.LongTensor, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, N) or (B, h, w) token ids -> (B, C, h * f, w * f) images (not clipped); square grid by default.

        Like `encode`, `decode` and `tokenize`, it fires the accelerate hook of `enable_model_cpu_offload`."""
        if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int32, torch.int64):
            raise TypeError("`ids` must be an integer torch.Tensor of codebook indices")
        if ids.ndim == 3:
            grid_size = tuple(ids.shape[1:])
            ids = ids.flatten(1)
        if ids.ndim != 2:
            raise ValueError(f"`ids` must have shape (batch, N) or (batch, h, w), got {tuple(ids.shape)}")
        if grid_size is None:
            side = math.isqrt(ids.shape[1])
            if side * side != ids.shape[1]:
                raise ValueError(f"`ids` has {ids.shape[1]} tokens, not a square grid: pass `grid_size=(h, w)`")
            grid_size = (side, side)
        if grid_size[0] * grid_size[1] != ids.shape[1]:
            raise ValueError(f"`grid_size` {tuple(grid_size)} does not hold {ids.shape[1]} tokens")
        check_id_range("ids", ids, 0, self.config.num_vq_embeddings, "num_vq_embeddings")
        latents = self.quantizer.lookup(ids.long(), *grid_size)
        return self._sliced(self.decoder, latents)

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> MageVQOutput | tuple:
        """Encode, quantise and decode (B, C, H, W) pixels; returns the reconstruction and the VQ loss."""
        latents = self.encode(sample).latents
        _, indices = self.quantizer(latents)
        codes = self.quantizer.lookup(indices, *latents.shape[2:])
        # Codebook term pulls the codes, the beta-weighted commitment term pulls the encoder.
        commit_loss = F.mse_loss(codes, latents.detach()) + self.config.commitment_beta * F.mse_loss(
            latents, codes.detach()
        )
        quantized = latents + (codes - latents).detach()
        reconstruction = self.decoder(quantized)
        if not return_dict:
            return reconstruction, commit_loss, indices
        return MageVQOutput(sample=reconstruction, commit_loss=commit_loss, indices=indices)


__all__ = ["MageVQCodebook", "MageVQModel", "MageVQOutput", "MageVectorQuantizer"]

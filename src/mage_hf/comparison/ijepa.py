"""I-JEPA pretraining around transformers' `IJepaModel`.

I-JEPA (Assran et al., "Self-Supervised Learning from Images with a Joint-Embedding Predictive Architecture",
CVPR 2023) trains a ViT *context encoder* that sees one large block of an image; a narrow ViT *predictor* predicts,
from the context features and the positions of a few *target blocks*, the features an EMA *target encoder* gives
those blocks when it sees the whole image. transformers ships `IJepaModel` for inference only; this module adds
the objective, written from the paper:

- `MultiBlockMaskSampler`: the paper's multi-block masking (4 target blocks, scale (0.15, 0.2), aspect ratio
  (0.75, 1.5); one context block, scale (0.85, 1.0), aspect ratio 1, with every target patch removed).
- `IJepaPredictor`: Linear(hidden -> predictor_hidden), fixed 2-D sin-cos positions, a learned mask token,
  `IJepaLayer` blocks, LayerNorm, Linear(predictor_hidden -> hidden).
- `IJepaForPretraining`: context encoder (`IJepaModel`, trained), target encoder (its EMA copy), predictor;
  `forward(pixel_values) -> loss`.
- `ijepa_for_mnist()`: the configuration used to compare with MAGE and MAE on the 32x32 MNIST digits.

Patches are indexed in raster order (`row * grid_width + column`), the order of `IJepaModel`'s patch sequence.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import IJepaConfig, IJepaModel
from transformers.models.ijepa.modeling_ijepa import IJepaLayer

__all__ = [
    "IJepaForPretraining",
    "IJepaPredictor",
    "MultiBlockMaskSampler",
    "MultiBlockMasks",
    "ema_momentum",
    "ijepa_for_mnist",
    "sincos_2d_position_embeddings",
]

_EPS = 1e-9


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {value!r}")
    return pair  # type: ignore[return-value]


def _check_range(value: Sequence[float], name: str, upper: float | None) -> tuple[float, float]:
    low, high = (float(v) for v in value)
    if not 0.0 < low <= high or (upper is not None and high > upper):
        bound = f"(0, {upper}]" if upper is not None else "(0, inf)"
        raise ValueError(f"{name} must be (low, high) with low <= high, both in {bound}; got {tuple(value)}")
    return low, high


def sincos_2d_position_embeddings(embed_dim: int, grid_size: int | Sequence[int]) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings, shape (grid_height * grid_width, embed_dim), raster order.

    The first half of the channels encodes the row, the second half the column; each half is
    [sin(pos * omega), cos(pos * omega)] with omega_i = 1 / 10000 ** (i / (embed_dim / 4)), i < embed_dim / 4.
    `embed_dim` must be divisible by 4.
    """
    height, width = _pair(grid_size, "grid_size")
    if embed_dim <= 0 or embed_dim % 4:
        raise ValueError(f"embed_dim must be a positive multiple of 4, got {embed_dim}")
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions.reshape(-1, 1) * omega  # (H*W, D/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (H*W, D/2)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


class MultiBlockMasks(NamedTuple):
    """Masks for one batch. Unpacks as `context_indices, target_indices`.

    context_indices: (batch_size, num_context) long, sorted patch indices the context encoder sees.
    target_indices: (num_targets, batch_size, num_target_patches) long, sorted patch indices of each target
        block (one full rectangle per block and image); disjoint from `context_indices`.
    """

    context_indices: torch.Tensor
    target_indices: torch.Tensor


class MultiBlockMaskSampler:
    """The paper's multi-block masking for a (grid_height, grid_width) patch grid.

    Per batch, one target block shape and one context block shape are drawn (so every image gets the same
    block sizes); per image, each of the `num_targets` target blocks and the context block get an independent
    uniform position, and the union of the target blocks is removed from the context block. If fewer than
    `min_context` context patches remain, that image's positions are drawn again (up to `max_tries` times).
    Context counts differ between images, so each image keeps a random subset of its context patches of the
    batch's smallest count (truncation to the batch minimum, as in the paper's collator, but of a random subset
    rather than the first patches in raster order).

    A block shape (h, w) is drawn by sampling a scale s ~ U(scale) and a log-uniform aspect ratio a = h / w in
    `aspect_ratio`, then taking the shape nearest (in log h, log w) to (sqrt(s N a), sqrt(s N / a)) among those
    that fit the grid and satisfy both bounds exactly: h * w / N in `scale` and h / w in `aspect_ratio`
    (N = grid_height * grid_width). On small grids this set is small (8x8, the defaults: targets are 3x4 or 4x3,
    the context is the whole grid; 16-52 context patches remain, median 31 per image, but the minimum of a batch
    of 128, kept for all, is 16-22); a ValueError is raised when it is empty (e.g. the default square context
    cannot cover 85 % of a non-square grid such as 10x12: widen `context_aspect_ratio` there).
    """

    def __init__(
        self,
        grid_size: int | Sequence[int],
        num_targets: int = 4,
        target_scale: Sequence[float] = (0.15, 0.2),
        target_aspect_ratio: Sequence[float] = (0.75, 1.5),
        context_scale: Sequence[float] = (0.85, 1.0),
        context_aspect_ratio: Sequence[float] = (1.0, 1.0),
        min_context: int = 4,
        max_tries: int = 100,
    ) -> None:
        self.grid_size = _pair(grid_size, "grid_size")
        if not isinstance(num_targets, int) or num_targets < 1:
            raise ValueError(f"num_targets must be a positive int, got {num_targets!r}")
        if not isinstance(min_context, int) or min_context < 1:
            raise ValueError(f"min_context must be a positive int, got {min_context!r}")
        if not isinstance(max_tries, int) or max_tries < 1:
            raise ValueError(f"max_tries must be a positive int, got {max_tries!r}")
        self.num_targets = num_targets
        self.target_scale = _check_range(target_scale, "target_scale", 1.0)
        self.target_aspect_ratio = _check_range(target_aspect_ratio, "target_aspect_ratio", None)
        self.context_scale = _check_range(context_scale, "context_scale", 1.0)
        self.context_aspect_ratio = _check_range(context_aspect_ratio, "context_aspect_ratio", None)
        self.min_context = min_context
        self.max_tries = max_tries
        self._target_shapes = self._valid_shapes(self.target_scale, self.target_aspect_ratio, "target")
        self._context_shapes = self._valid_shapes(self.context_scale, self.context_aspect_ratio, "context")
        largest_context = max(h * w for h, w in self._context_shapes)
        if min_context > largest_context:
            raise ValueError(
                f"min_context={min_context} exceeds the largest context block ({largest_context} patches) "
                f"on the {self.grid_size} grid"
            )

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def _valid_shapes(self, scale, aspect_ratio, name) -> list[tuple[int, int]]:
        height, width = self.grid_size
        shapes = [
            (h, w)
            for h in range(1, height + 1)
            for w in range(1, width + 1)
            if scale[0] - _EPS <= h * w / self.num_patches <= scale[1] + _EPS
            and aspect_ratio[0] - _EPS <= h / w <= aspect_ratio[1] + _EPS
        ]
        if not shapes:
            raise ValueError(
                f"no {name} block fits the {height}x{width} patch grid with scale {scale} and aspect ratio "
                f"{aspect_ratio} (grid too small for the blocks?)"
            )
        return shapes

    def _draw_shape(self, shapes, scale, aspect_ratio, generator) -> tuple[int, int]:
        u_scale, u_ratio = torch.rand(2, generator=generator).tolist()
        s = scale[0] + u_scale * (scale[1] - scale[0])
        log_a = math.log(aspect_ratio[0]) + u_ratio * (math.log(aspect_ratio[1]) - math.log(aspect_ratio[0]))
        log_h = 0.5 * (math.log(s * self.num_patches) + log_a)
        log_w = 0.5 * (math.log(s * self.num_patches) - log_a)
        return min(shapes, key=lambda hw: (math.log(hw[0]) - log_h) ** 2 + (math.log(hw[1]) - log_w) ** 2)

    def _place(self, shape, count, num_blocks, generator) -> torch.Tensor:
        """(count, num_blocks, H, W) bool: blocks of `shape` at uniform positions."""
        height, width = self.grid_size
        h, w = shape
        top = torch.randint(0, height - h + 1, (count, num_blocks, 1, 1), generator=generator)
        left = torch.randint(0, width - w + 1, (count, num_blocks, 1, 1), generator=generator)
        rows = torch.arange(height).view(1, 1, height, 1)
        cols = torch.arange(width).view(1, 1, 1, width)
        return (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)

    def __call__(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> MultiBlockMasks:
        """Sample masks for `batch_size` images; `generator` (a CPU `torch.Generator`) makes them reproducible.

        Returns `MultiBlockMasks(context_indices (B, Nc), target_indices (num_targets, B, Nt))`, long, on `device`.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        target_shape = self._draw_shape(
            self._target_shapes, self.target_scale, self.target_aspect_ratio, generator
        )
        context_shape = self._draw_shape(
            self._context_shapes, self.context_scale, self.context_aspect_ratio, generator
        )
        n = self.num_patches
        targets = torch.zeros(batch_size, self.num_targets, n, dtype=torch.bool)
        context = torch.zeros(batch_size, n, dtype=torch.bool)
        todo = torch.arange(batch_size)
        for _ in range(self.max_tries):
            new_targets = self._place(target_shape, len(todo), self.num_targets, generator).flatten(2)
            new_context = self._place(context_shape, len(todo), 1, generator).flatten(1)
            new_context &= ~new_targets.any(dim=1)
            targets[todo], context[todo] = new_targets, new_context
            todo = todo[new_context.sum(dim=1) < self.min_context]
            if len(todo) == 0:
                break
        else:
            raise RuntimeError(
                f"could not keep min_context={self.min_context} context patches in {self.max_tries} tries "
                f"(target blocks {target_shape}, context block {context_shape}, grid {self.grid_size})"
            )

        patch_ids = torch.arange(n).expand(batch_size, n)
        target_indices = torch.stack(
            [patch_ids[targets[:, k]].view(batch_size, -1) for k in range(self.num_targets)]
        )  # (K, B, h*w): boolean indexing keeps raster order within each row
        num_context = int(context.sum(dim=1).min())
        priority = torch.rand(batch_size, n, generator=generator).masked_fill(~context, 2.0)
        context_indices = priority.argsort(dim=1)[:, :num_context].sort(dim=1).values
        return MultiBlockMasks(context_indices.to(device), target_indices.to(device))


def _as_target_tensor(target_indices: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """(num_targets, B, Nt) long from a (K, B, Nt) / (B, Nt) tensor or a list of (B, Nt) tensors."""
    if not isinstance(target_indices, torch.Tensor):
        target_indices = torch.stack(list(target_indices))
    if target_indices.dim() == 2:
        target_indices = target_indices.unsqueeze(0)
    if target_indices.dim() != 3:
        raise ValueError(
            f"target_indices must be (num_targets, B, Nt), got shape {tuple(target_indices.shape)}"
        )
    return target_indices.long()


def _check_indices(indices: torch.Tensor, num_patches: int, name: str) -> None:
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= num_patches):
        raise ValueError(
            f"{name} must lie in [0, {num_patches}), got [{int(indices.min())}, {int(indices.max())}]"
        )


def _gather_tokens(tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """tokens (B, N, D), indices (B, M) -> (B, M, D)."""
    return torch.gather(tokens, 1, indices.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


class IJepaPredictor(nn.Module):
    """The I-JEPA predictor: a narrow ViT from context features to target-block features.

    For each target block, the sequence [Linear(context features) + pos(context), mask token + pos(target)] runs
    through `num_layers` `IJepaLayer` blocks and a LayerNorm; the target tokens are projected back to `hidden_size`.
    The blocks are batched along the batch dimension (the context is repeated once per block), so the blocks do
    not see each other. `pos` are fixed 2-D sin-cos embeddings of width `predictor_hidden_size`.
    """

    def __init__(
        self,
        hidden_size: int,
        grid_size: int | Sequence[int],
        predictor_hidden_size: int = 128,
        num_layers: int = 3,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        layer_norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
    ) -> None:
        super().__init__()
        if hidden_size < 1 or predictor_hidden_size < 1 or num_layers < 1 or num_heads < 1:
            raise ValueError("hidden_size, predictor_hidden_size, num_layers and num_heads must be positive")
        if predictor_hidden_size % num_heads:
            raise ValueError(
                f"predictor_hidden_size ({predictor_hidden_size}) must be divisible by num_heads ({num_heads})"
            )
        if predictor_hidden_size % 4:
            raise ValueError(
                f"predictor_hidden_size must be a multiple of 4 (sin-cos), got {predictor_hidden_size}"
            )
        self.grid_size = _pair(grid_size, "grid_size")
        self.hidden_size = hidden_size
        self.predictor_hidden_size = predictor_hidden_size
        layer_config = IJepaConfig(
            hidden_size=predictor_hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=int(predictor_hidden_size * mlp_ratio),
            layer_norm_eps=layer_norm_eps,
            attn_implementation="sdpa",
        )
        self.embed = nn.Linear(hidden_size, predictor_hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, predictor_hidden_size))
        self.register_buffer(
            "position_embeddings",
            sincos_2d_position_embeddings(predictor_hidden_size, self.grid_size),
            persistent=False,
        )  # (N, predictor_hidden_size)
        self.layers = nn.ModuleList([IJepaLayer(layer_config) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(predictor_hidden_size, eps=layer_norm_eps)
        self.proj = nn.Linear(predictor_hidden_size, hidden_size)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=initializer_range)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.mask_token, std=initializer_range)

    def forward(
        self,
        context_features: torch.Tensor,
        context_indices: torch.Tensor,
        target_indices: torch.Tensor | Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """context_features (B, Nc, hidden_size), context_indices (B, Nc), target_indices (K, B, Nt) (or a list
        of K (B, Nt)) -> predicted target features (K, B, Nt, hidden_size)."""
        target_indices = _as_target_tensor(target_indices)
        num_blocks, batch_size, num_target = target_indices.shape
        if context_features.shape[:2] != context_indices.shape or target_indices.shape[1] != batch_size:
            raise ValueError(
                f"shape mismatch: context_features {tuple(context_features.shape)}, context_indices "
                f"{tuple(context_indices.shape)}, target_indices {tuple(target_indices.shape)}"
            )
        num_patches = self.position_embeddings.shape[0]
        _check_indices(context_indices, num_patches, "context_indices")
        _check_indices(target_indices, num_patches, "target_indices")

        pos = self.position_embeddings.to(context_features.dtype)
        context = self.embed(context_features) + pos[context_indices]  # (B, Nc, P)
        context = context.repeat(num_blocks, 1, 1)  # (K*B, Nc, P), block-major
        queries = (
            self.mask_token + pos[target_indices.reshape(num_blocks * batch_size, num_target)]
        )  # (K*B, Nt, P)
        hidden = torch.cat([context, queries], dim=1)
        for layer in self.layers:
            hidden = layer(hidden, None)
        predictions = self.proj(self.norm(hidden[:, -num_target:]))  # (K*B, Nt, hidden_size)
        return predictions.view(num_blocks, batch_size, num_target, self.hidden_size)


def ema_momentum(step: int, total_steps: int, start: float = 0.996, end: float = 1.0) -> float:
    """EMA momentum at `step` of a linear schedule from `start` (step 0) to `end` (step >= total_steps)."""
    if total_steps < 1 or step < 0:
        raise ValueError(f"need total_steps >= 1 and step >= 0, got step={step}, total_steps={total_steps}")
    if not (0.0 <= start <= 1.0 and 0.0 <= end <= 1.0):
        raise ValueError(f"start and end must lie in [0, 1], got {start}, {end}")
    return start + (end - start) * min(step / total_steps, 1.0)


class IJepaForPretraining(nn.Module):
    """I-JEPA: context encoder + EMA target encoder (both `IJepaModel`) + `IJepaPredictor`.

    `forward(pixel_values)` returns the loss: the target encoder (no grad) encodes the full image, its final
    hidden states are layer-normalised over the feature dimension (`F.layer_norm`, as in the paper) and the target
    blocks are gathered; the context encoder encodes only the context patches (it never sees the others); the
    predictor predicts the target-block features; the loss compares both.

    Loss: `loss_type="l2"` (default) is the mean squared error over all target patches and features, i.e. the
    paper's average squared L2 distance per patch divided by `hidden_size`; `"smooth_l1"` is the mean smooth-L1
    (Huber, beta 1) error that the authors' released code uses.

    With `fixed_position_embeddings=True` (default) the encoders' position embeddings are set to 2-D sin-cos and
    frozen, as in the paper (`IJepaModel` itself has learned ones); they are then not trainable.

    The target encoder is what the paper evaluates: `encoder_for_evaluation()` / `save_evaluation_encoder()`.
    Call `update_target_encoder(ema_momentum(step, total_steps))` after each optimiser step.
    """

    def __init__(
        self,
        config: IJepaConfig,
        predictor_hidden_size: int = 128,
        predictor_num_layers: int = 3,
        predictor_num_heads: int = 4,
        mask_sampler: MultiBlockMaskSampler | None = None,
        loss_type: str = "l2",
        fixed_position_embeddings: bool = True,
    ) -> None:
        super().__init__()
        if loss_type not in ("l2", "smooth_l1"):
            raise ValueError(f"loss_type must be 'l2' or 'smooth_l1', got {loss_type!r}")
        image_size = _pair(config.image_size, "config.image_size")
        patch_size = _pair(config.patch_size, "config.patch_size")
        if image_size[0] % patch_size[0] or image_size[1] % patch_size[1]:
            raise ValueError(f"image_size {image_size} must be divisible by patch_size {patch_size}")
        self.grid_size = (image_size[0] // patch_size[0], image_size[1] // patch_size[1])
        self.loss_type = loss_type
        self.mask_sampler = (
            mask_sampler if mask_sampler is not None else MultiBlockMaskSampler(self.grid_size)
        )
        if tuple(self.mask_sampler.grid_size) != self.grid_size:
            raise ValueError(
                f"mask_sampler grid {self.mask_sampler.grid_size} != patch grid {self.grid_size}"
            )

        self.context_encoder = IJepaModel(config, add_pooling_layer=False)
        if fixed_position_embeddings:
            position_embeddings = self.context_encoder.embeddings.position_embeddings
            with torch.no_grad():
                position_embeddings.copy_(
                    sincos_2d_position_embeddings(config.hidden_size, self.grid_size)[None]
                )
            position_embeddings.requires_grad_(False)
        self.target_encoder = copy.deepcopy(self.context_encoder)
        self.target_encoder.requires_grad_(False)
        self.target_encoder.eval()
        self.predictor = IJepaPredictor(
            config.hidden_size,
            self.grid_size,
            predictor_hidden_size=predictor_hidden_size,
            num_layers=predictor_num_layers,
            num_heads=predictor_num_heads,
            layer_norm_eps=config.layer_norm_eps,
            initializer_range=config.initializer_range,
        )

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def train(self, mode: bool = True) -> IJepaForPretraining:
        """As `nn.Module.train`, but the target encoder always stays in eval mode."""
        super().train(mode)
        self.target_encoder.eval()
        return self

    def encode_context(self, pixel_values: torch.Tensor, context_indices: torch.Tensor) -> torch.Tensor:
        """pixel_values (B, C, H, W), context_indices (B, Nc) -> context features (B, Nc, hidden_size).

        Runs the context encoder's submodules on the context patches only: patch embedding (a per-patch
        projection) plus position embedding, gather, encoder layers, final LayerNorm. Other patches do not enter.
        """
        encoder = self.context_encoder
        _check_indices(context_indices, self.num_patches, "context_indices")
        pixel_values = pixel_values.to(encoder.embeddings.patch_embeddings.projection.weight.dtype)
        tokens = encoder.embeddings(pixel_values)  # (B, N, D), position embeddings added
        hidden = _gather_tokens(tokens, context_indices.to(tokens.device))
        for layer in encoder.layers:
            hidden = layer(hidden, None)
        return encoder.layernorm(hidden)

    @torch.no_grad()
    def encode_targets(
        self, pixel_values: torch.Tensor, target_indices: torch.Tensor | Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """pixel_values (B, C, H, W), target_indices (K, B, Nt) -> layer-normalised target-encoder features of the
        target blocks, (K, B, Nt, hidden_size), computed from the full image without gradients."""
        target_indices = _as_target_tensor(target_indices)
        _check_indices(target_indices, self.num_patches, "target_indices")
        hidden = self.target_encoder(pixel_values).last_hidden_state  # (B, N, D)
        hidden = F.layer_norm(hidden, (hidden.shape[-1],))
        return torch.stack([_gather_tokens(hidden, block.to(hidden.device)) for block in target_indices])

    def forward(
        self,
        pixel_values: torch.Tensor,
        generator: torch.Generator | None = None,
        masks: MultiBlockMasks | tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """pixel_values (B, C, H, W) -> scalar loss. Masks come from `self.mask_sampler(B, generator)` unless
        `masks = (context_indices (B, Nc), target_indices (K, B, Nt))` is given."""
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be (B, C, H, W), got shape {tuple(pixel_values.shape)}")
        if masks is None:
            masks = self.mask_sampler(pixel_values.shape[0], generator=generator)
        context_indices, target_indices = masks
        context_indices = context_indices.to(pixel_values.device)
        target_indices = _as_target_tensor(target_indices).to(pixel_values.device)
        targets = self.encode_targets(pixel_values, target_indices)
        context = self.encode_context(pixel_values, context_indices)
        predictions = self.predictor(context, context_indices, target_indices)
        if self.loss_type == "l2":
            return F.mse_loss(predictions, targets)
        return F.smooth_l1_loss(predictions, targets)

    @torch.no_grad()
    def update_target_encoder(self, momentum: float) -> None:
        """EMA step: target = momentum * target + (1 - momentum) * context, for parameters and buffers."""
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
        target_state = dict(self.target_encoder.named_parameters())
        target_state.update(self.target_encoder.named_buffers())
        context_state = dict(self.context_encoder.named_parameters())
        context_state.update(self.context_encoder.named_buffers())
        for name, target in target_state.items():
            source = context_state[name]
            if target.is_floating_point():
                target.lerp_(source, 1.0 - momentum)
            else:
                target.copy_(source)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The trained parameters: context encoder + predictor (requires_grad only; the target is not trained)."""
        modules = (self.context_encoder, self.predictor)
        return [p for module in modules for p in module.parameters() if p.requires_grad]

    def num_trainable_parameters(self) -> int:
        """Number of elements in `trainable_parameters()`."""
        return sum(p.numel() for p in self.trainable_parameters())

    def encoder_for_evaluation(self) -> IJepaModel:
        """The encoder the paper evaluates (linear probes etc.): the EMA target encoder."""
        return self.target_encoder

    def save_evaluation_encoder(self, path: str) -> None:
        """`encoder_for_evaluation().save_pretrained(path)`: the target encoder, loadable with `AutoModel`."""
        self.target_encoder.save_pretrained(path)

    def save_context_encoder(self, path: str) -> None:
        """`context_encoder.save_pretrained(path)`. Note: the paper evaluates the *target* encoder; use
        `save_evaluation_encoder` for the representation to compare."""
        self.context_encoder.save_pretrained(path)


def ijepa_for_mnist(
    hidden_size: int = 128,
    num_layers: int = 6,
    num_heads: int = 4,
    predictor_hidden_size: int = 128,
    predictor_num_layers: int = 3,
    predictor_num_heads: int = 4,
    image_size: int = 32,
    patch_size: int = 4,
    **kwargs,
) -> IJepaForPretraining:
    """I-JEPA for the 32x32 RGB MNIST digits (8x8 patch grid): ViT encoder `hidden_size` wide, MLP 4x,
    LayerNorm eps 1e-6; predictor 128 wide, 3 layers, 4 heads. With the defaults the trainable parameters
    (context encoder + predictor, 1,824,384) are within 1 % of an MAE with the same encoder and a 3-layer,
    128-wide decoder (1,814,192). Extra `kwargs` go to `IJepaForPretraining`."""
    config = IJepaConfig(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=3,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=4 * hidden_size,
        layer_norm_eps=1e-6,
    )
    return IJepaForPretraining(
        config,
        predictor_hidden_size=predictor_hidden_size,
        predictor_num_layers=predictor_num_layers,
        predictor_num_heads=predictor_num_heads,
        **kwargs,
    )

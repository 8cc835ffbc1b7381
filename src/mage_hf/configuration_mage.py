"""Configuration of MAGE (MAsked Generative Encoder, Li et al., CVPR 2023, arXiv 2211.09117)."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import PreTrainedConfig

from .input_checks import check_id_range

# The released VQGAN tokenizer (`vqgan_jax_strongaug.ckpt`): 256 px -> 16x16 tokens, codebook 1024 x 256.
RELEASED_VQ_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [128, 128, 256, 256, 512],
    "layers_per_block": 2,
    "latent_channels": 256,
    "num_vq_embeddings": 1024,
    "vq_embed_dim": 256,
    "norm_num_groups": 32,
    "norm_eps": 1e-6,
    "sample_size": 256,
}

def vq_downsample_factor(block_out_channels) -> int:
    """Pixels per token side of the VQGAN: it halves the resolution between consecutive levels."""
    return 2 ** (len(block_out_channels) - 1)


# The original code puts its "fake class" id at `codebook_size + 1100 - 1024`: class slot 76.
ORIGINAL_FAKE_CLASS_SLOT = 76


class MageConfig(PreTrainedConfig):
    r"""
    Configuration of a MAGE model: a VQGAN tokenizer, a ViT encoder over token embeddings and a ViT decoder
    with a masked-token (MLM) head. Defaults are the released MAGE ViT-B (`mage-vitb-1600.pth`).

    The token vocabulary is `codebook_size` image tokens, then `num_class_slots` condition slots, then one mask
    token: `vocab_size = codebook_size + num_class_slots + 1`, `mask_token_id = vocab_size - 1`. Position 0 of
    every sequence holds a condition token: `fake_class_id` for unconditional use (the original's choice,
    `codebook_size + 76`), or `codebook_size + c` for class `c` of a class-conditional model
    (`num_condition_classes > 0`). A class-conditional model must not use a class slot as its unconditional id:
    when `fake_class_id` is left `None` and the classes reach slot 76 (or there are no 77 slots), the last slot is
    used instead.

    Args:
        image_size: side of the square input image in pixels.
        num_channels: image channels.
        codebook_size: number of VQ codebook entries (image token ids `0 .. codebook_size - 1`).
        num_class_slots: condition-token slots after the codebook (1000 in the release).
        num_condition_classes: classes a class-conditional model was trained with (0: unconditional).
        fake_class_id: the unconditional condition id at position 0 (`None`: see above).
        hidden_size / num_hidden_layers / num_attention_heads: encoder width, depth and heads.
        decoder_hidden_size / decoder_num_hidden_layers / decoder_num_attention_heads: decoder sizes.
        mlp_ratio: MLP hidden width / model width in every block.
        hidden_act: MLP activation.
        hidden_dropout_prob: dropout on embeddings, attention output and MLP (0.1 in the release).
        attention_probs_dropout_prob: dropout on attention probabilities (0.1 in the release).
        drop_path_rate: stochastic depth rate of the encoder (fine-tuning; 0 in pretraining).
        layer_norm_eps: eps of every LayerNorm but the MLM head's.
        mlm_layer_norm_eps: eps of the MLM head's LayerNorm (1e-5 in the original, torch's default).
        max_position_embeddings: rows of the learned position table (257 in every release).
        qkv_bias: bias of the fused query/key/value projection.
        initializer_range: std of the normal init of embeddings.
        mask_ratio_min / mask_ratio_max / mask_ratio_mu / mask_ratio_std: truncated normal of the pretraining
            masking ratio; `mask_ratio_min` is also the fraction of tokens dropped from the encoder input.
        label_smoothing: label smoothing of the masked-token cross entropy.
        condition_dropout_prob: probability of replacing the class by the unconditional id when training a
            class-conditional model (for classifier-free guidance).
        use_linear_probe_bn: classification head is `BatchNorm1d(affine=False)` + Linear (linear probing).
        include_vq_tokenizer: the model owns a `MageVQModel` so it accepts `pixel_values`; a pipeline's
            transformer can leave it out and take token ids only.
        tie_word_embeddings: the MLM head's output projection is the encoder's word embedding matrix (the original;
            used detached in the head) rather than a separate trainable Linear.
        contrastive_projection_dim: output width of the MAGE-C contrastive head on the pooled encoder output (0: no
            head, plain MAGE). contrastive_hidden_size: its hidden width.
        contrastive_loss_weight / contrastive_temperature: weight of the InfoNCE loss added to the token loss, and
            its temperature (MAGE-C; used by `mage-hf pretrain --contrastive`).
        vq_config: keyword arguments of `MageVQModel` (defaults: the released VQGAN).

    Example:
    ```python
    >>> from mage_hf import MageConfig, MageModel
    >>> config = MageConfig()  # released ViT-B
    >>> large = MageConfig.from_preset("vit-l")
    >>> (config.vocab_size, config.mask_token_id, config.fake_class_id, config.num_image_tokens)
    (2025, 2024, 1100, 256)
    ```
    """

    model_type = "mage"

    image_size: int = 256
    num_channels: int = 3
    codebook_size: int = 1024
    num_class_slots: int = 1000
    num_condition_classes: int = 0
    fake_class_id: int | None = None
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    decoder_hidden_size: int = 768
    decoder_num_hidden_layers: int = 8
    decoder_num_attention_heads: int = 16
    mlp_ratio: float = 4.0
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    drop_path_rate: float = 0.0
    layer_norm_eps: float = 1e-6
    mlm_layer_norm_eps: float = 1e-5
    max_position_embeddings: int = 257
    qkv_bias: bool = True
    initializer_range: float = 0.02
    mask_ratio_min: float = 0.5
    mask_ratio_max: float = 1.0
    mask_ratio_mu: float = 0.55
    mask_ratio_std: float = 0.25
    label_smoothing: float = 0.1
    condition_dropout_prob: float = 0.1
    use_linear_probe_bn: bool = False
    include_vq_tokenizer: bool = True
    tie_word_embeddings: bool = True
    contrastive_projection_dim: int = 0
    contrastive_hidden_size: int = 2048
    contrastive_loss_weight: float = 0.1
    contrastive_temperature: float = 0.2
    vq_config: dict | None = None

    def __post_init__(self, **kwargs):
        vq_config = dict(RELEASED_VQ_CONFIG if self.vq_config is None else self.vq_config)
        vq_config.setdefault("num_vq_embeddings", self.codebook_size)
        vq_config.setdefault("sample_size", self.image_size)
        vq_config.setdefault("in_channels", self.num_channels)
        vq_config["block_out_channels"] = list(vq_config.get("block_out_channels", RELEASED_VQ_CONFIG["block_out_channels"]))
        self.vq_config = vq_config
        if self.fake_class_id is None:
            slot = ORIGINAL_FAKE_CLASS_SLOT
            if self.num_condition_classes > slot or slot >= self.num_class_slots:
                slot = self.num_class_slots - 1
            self.fake_class_id = self.codebook_size + slot
        super().__post_init__(**kwargs)
        self._validate_mage()

    def _validate_mage(self) -> None:
        checks = [
            (self.hidden_size % self.num_attention_heads == 0,
             f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` ({self.num_attention_heads})"),
            (self.decoder_hidden_size % self.decoder_num_attention_heads == 0,
             f"`decoder_hidden_size` ({self.decoder_hidden_size}) must be divisible by "
             f"`decoder_num_attention_heads` ({self.decoder_num_attention_heads})"),
            (self.vq_config["num_vq_embeddings"] == self.codebook_size,
             f"`vq_config['num_vq_embeddings']` ({self.vq_config['num_vq_embeddings']}) must equal "
             f"`codebook_size` ({self.codebook_size})"),
            (self.vq_config["sample_size"] == self.image_size,
             f"`vq_config['sample_size']` ({self.vq_config['sample_size']}) must equal `image_size` ({self.image_size})"),
            (self.image_size % self.downsample_factor == 0,
             f"`image_size` ({self.image_size}) must be divisible by the tokenizer's downsampling factor "
             f"({self.downsample_factor})"),
            (self.max_position_embeddings >= 1 + self.num_image_tokens,
             f"`max_position_embeddings` ({self.max_position_embeddings}) must be at least 1 + the number of image "
             f"tokens ({1 + self.num_image_tokens})"),
            (0 <= self.num_condition_classes <= self.num_class_slots,
             f"`num_condition_classes` ({self.num_condition_classes}) must be in [0, num_class_slots="
             f"{self.num_class_slots}]"),
            (self.codebook_size <= self.fake_class_id < self.codebook_size + self.num_class_slots,
             f"`fake_class_id` ({self.fake_class_id}) must be a class slot id in [{self.codebook_size}, "
             f"{self.codebook_size + self.num_class_slots})"),
            (not self.codebook_size <= self.fake_class_id < self.codebook_size + self.num_condition_classes,
             f"`fake_class_id` ({self.fake_class_id}) collides with the condition id of class "
             f"{self.fake_class_id - self.codebook_size}; use an id >= {self.codebook_size + self.num_condition_classes}"),
            (0.0 < self.mask_ratio_min <= self.mask_ratio_max <= 1.0,
             f"mask ratios must satisfy 0 < `mask_ratio_min` ({self.mask_ratio_min}) <= `mask_ratio_max` "
             f"({self.mask_ratio_max}) <= 1"),
            (self.contrastive_projection_dim >= 0 and self.contrastive_hidden_size > 0,
             f"`contrastive_projection_dim` ({self.contrastive_projection_dim}) must be >= 0 and "
             f"`contrastive_hidden_size` ({self.contrastive_hidden_size}) > 0"),
            (self.contrastive_temperature > 0 and self.contrastive_loss_weight >= 0,
             f"`contrastive_temperature` ({self.contrastive_temperature}) must be > 0 and `contrastive_loss_weight` "
             f"({self.contrastive_loss_weight}) >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def vocab_size(self) -> int:
        """Codebook + class slots + the mask token."""
        return self.codebook_size + self.num_class_slots + 1

    @property
    def mask_token_id(self) -> int:
        """Id of the mask token (the last vocabulary entry)."""
        return self.vocab_size - 1

    @property
    def downsample_factor(self) -> int:
        """Pixels per token side: 2 ** (number of VQGAN levels - 1)."""
        return vq_downsample_factor(self.vq_config["block_out_channels"])

    @property
    def token_grid_size(self) -> int:
        """Tokens per image side."""
        return self.image_size // self.downsample_factor

    @property
    def num_image_tokens(self) -> int:
        """Image tokens per sequence (N); sequences have 1 + N positions."""
        return self.token_grid_size**2

    @property
    def num_dropped_tokens(self) -> int:
        """Tokens removed from the encoder input in pretraining: ceil(N * mask_ratio_min)."""
        return math.ceil(self.num_image_tokens * self.mask_ratio_min)

    def condition_token_id(self, class_labels: int | torch.Tensor) -> int | torch.Tensor:
        """Vocabulary id(s) of the condition token of class(es) `class_labels` of a class-conditional model:
        `codebook_size + class`, range-checked (the one check of class labels: model forward and pipeline use it)."""
        if self.num_condition_classes == 0:
            raise ValueError("`class_labels` given to an unconditional model (num_condition_classes is 0)")
        labels = torch.as_tensor(class_labels)
        check_id_range("class_labels", labels, 0, self.num_condition_classes, "num_condition_classes")
        return class_labels + self.codebook_size

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> MageConfig:
        """A named size: `vit-b` / `mage-vit-b` (the release's ViT-B), `vit-l` / `mage-vit-l`, or `tiny`."""
        key = name.lower().removeprefix("mage-")
        if key not in MAGE_PRESETS:
            raise ValueError(f"`name` must be one of {sorted(MAGE_PRESETS)}, got {name!r}")
        return cls(**{**MAGE_PRESETS[key], **kwargs})


MAGE_PRESETS: dict[str, dict[str, Any]] = {
    "vit-b": {},
    "vit-l": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
              "decoder_hidden_size": 1024, "decoder_num_hidden_layers": 8, "decoder_num_attention_heads": 16},
    # A few-MB model for tests and 32x32 data: 8x8 tokens, codebook 64.
    "tiny": {
        "image_size": 32, "codebook_size": 64, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "decoder_hidden_size": 64, "decoder_num_hidden_layers": 2, "decoder_num_attention_heads": 4,
        "vq_config": {"block_out_channels": [32, 32, 64], "layers_per_block": 1, "latent_channels": 32,
                      "vq_embed_dim": 32, "norm_num_groups": 32},
    },
}

__all__ = ["MageConfig", "MAGE_PRESETS", "RELEASED_VQ_CONFIG", "vq_downsample_factor"]

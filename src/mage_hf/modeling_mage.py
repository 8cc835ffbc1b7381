"""MAGE (MAsked Generative Encoder) as transformers models.

A sequence is `[condition token, t_1 ... t_N]`: the condition token (the original's "fake class" id, or a class
id) at position 0 and the N VQGAN token ids of the image. The encoder is a pre-norm ViT over token embeddings; the
pretraining model adds a ViT decoder and an MLM head that predicts codebook ids at masked positions.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_mage import MageConfig
from .input_checks import check_bool_mask, check_id_range, check_integer_tensor, value_checks_enabled
from .masking import mask_lowest, rand_tensor, truncated_normal
from .modeling_vqgan import MageVQCodebook, MageVQModel


@dataclass
class MageMaskedImageModelingOutput(ModelOutput):
    r"""
    Output of `MageForMaskedImageModeling`.

    Args:
        loss: scalar label-smoothed cross entropy over the codebook logits of masked positions (when targets exist).
        logits: (B, 1 + N, vocab_size) MLM-head logits over the whole vocabulary; generation and the loss use
            `logits[:, 1:, :codebook_size]`.
        bool_masked_pos: (B, N) image tokens that were replaced by the mask token.
        bool_dropped_pos: (B, N) image tokens that were removed from the encoder input (a subset of the masked).
        labels: (B, N) target codebook ids (the image's own tokens unless given).
        encoder_last_hidden_state: (B, 1 + N - dropped, D) encoder output over the kept tokens, after its LayerNorm.
        contrastive_embeds: (B, contrastive_projection_dim) L2-normalised MAGE-C projections of the mean encoder
            output over the kept image tokens (models with a contrastive head only).
        hidden_states: encoder hidden states (embeddings + each layer), each (B, 1 + N - dropped, D).
        attentions: encoder attention maps, each (B, heads, L, L) (eager attention only).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    bool_masked_pos: torch.BoolTensor | None = None
    bool_dropped_pos: torch.BoolTensor | None = None
    labels: torch.LongTensor | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    contrastive_embeds: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MageImageClassifierOutput(ImageClassifierOutput):
    r"""
    Output of `MageForImageClassification`: `ImageClassifierOutput` plus the pooled features.

    Args:
        pooler_output: (B, D) mean of the encoder output over image tokens (before any final norm), after `fc_norm`.
    """

    pooler_output: torch.FloatTensor | None = None


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain attention with the softmax in float32; (B, H, L, d) inputs -> (B, L, H, d) output, (B, H, L, L) probs."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = F.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


class MageEmbeddings(nn.Module):
    """Token + learned position embeddings -> LayerNorm -> dropout (the original's BERT-style `token_emb`)."""

    def __init__(self, config: MageConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, D); position i gets row i of the position table."""
        positions = self.position_embeddings(torch.arange(input_ids.shape[1], device=input_ids.device))
        return self.dropout(self.LayerNorm(self.word_embeddings(input_ids) + positions))


def _stack_sizes(config: MageConfig, is_decoder: bool) -> tuple[int, int]:
    """(width, heads) of the encoder or decoder stack."""
    if is_decoder:
        return config.decoder_hidden_size, config.decoder_num_attention_heads
    return config.hidden_size, config.num_attention_heads


class MageAttention(nn.Module):
    """Multi-head self-attention with a fused query/key/value projection (encoder or decoder width)."""

    def __init__(self, config: MageConfig, is_decoder: bool = False):
        super().__init__()
        self.config = config
        width, self.num_heads = _stack_sizes(config, is_decoder)
        self.head_dim = width // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        self.is_causal = False
        self.qkv_proj = nn.Linear(width, 3 * width, bias=config.qkv_bias)
        self.out_proj = nn.Linear(width, width)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, L, D) -> (B, L, D) and the (B, heads, L, L) attention probabilities (None for SDPA)."""
        batch, length, _ = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            None,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = self.dropout(self.out_proj(attn_output.reshape(batch, length, -1)))
        return attn_output, attn_weights


class MageMLP(nn.Module):
    """fc1 -> activation -> dropout -> fc2 -> dropout."""

    def __init__(self, config: MageConfig, is_decoder: bool = False):
        super().__init__()
        width, _ = _stack_sizes(config, is_decoder)
        self.fc1 = nn.Linear(width, int(width * config.mlp_ratio))
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(int(width * config.mlp_ratio), width)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(self.activation_fn(self.fc1(hidden_states)))))


class MageDropPath(nn.Module):
    """Stochastic depth: zeroes a whole residual branch per sample with probability `drop_prob` in training."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return hidden_states
        keep = 1.0 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        return hidden_states * hidden_states.new_empty(shape).bernoulli_(keep).div_(keep)


class MageLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block, shared by encoder and decoder: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, config: MageConfig, is_decoder: bool = False, drop_path: float = 0.0):
        super().__init__()
        width, _ = _stack_sizes(config, is_decoder)
        self.layernorm_before = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.attention = MageAttention(config, is_decoder)
        self.layernorm_after = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.mlp = MageMLP(config, is_decoder)
        self.drop_path = MageDropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        attn_output, _ = self.attention(self.layernorm_before(hidden_states), **kwargs)
        hidden_states = hidden_states + self.drop_path(attn_output)
        return hidden_states + self.drop_path(self.mlp(self.layernorm_after(hidden_states)))


class MageDecoder(nn.Module):
    """Decoder: `decoder_embed` of the encoder output, dropped and masked positions refilled with the decoder
    embedding of the encoder's position-0 output (the original's `pad_with_cls_token`), learned positions added, the
    decoder blocks and its LayerNorm. (B, K, D) encoder output -> (B, 1 + N, decoder_hidden_size)."""

    def __init__(self, config: MageConfig):
        super().__init__()
        self.decoder_embed = nn.Linear(config.hidden_size, config.decoder_hidden_size)
        self.decoder_pos_embed_learned = nn.Parameter(
            torch.zeros(1, 1 + config.num_image_tokens, config.decoder_hidden_size)
        )
        self.layers = nn.ModuleList(MageLayer(config, is_decoder=True) for _ in range(config.decoder_num_hidden_layers))
        self.decoder_norm = nn.LayerNorm(config.decoder_hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, encoder_output: torch.Tensor, full_dropped: torch.BoolTensor | None, full_masked: torch.BoolTensor
    ) -> torch.Tensor:
        hidden_states = self.decoder_embed(encoder_output)
        batch, _, width = hidden_states.shape
        length = full_masked.shape[1]
        # Original (pad_with_cls_token=True): every missing or masked slot gets the decoded position-0 vector.
        filler = hidden_states[:, :1].expand(batch, length, width)
        if full_dropped is not None:
            hidden_states = filler.masked_scatter((~full_dropped).unsqueeze(-1), hidden_states)
        hidden_states = torch.where(full_masked.unsqueeze(-1), filler, hidden_states)
        hidden_states = hidden_states + self.decoder_pos_embed_learned
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return self.decoder_norm(hidden_states)


class MageMLMProjection(nn.Linear):
    """(B, L, D) -> (B, L, vocab_size) product with the token embeddings, without bias.

    Its `weight` is tied to the encoder's word embeddings (`config.tie_word_embeddings`). As in the original, the
    product uses the weight detached, so the masked-token loss does not train the embeddings through the head; an
    untied projection (`tie_word_embeddings=False`) is an ordinary trainable Linear. (Not named `decoder`: transformers'
    device-map planner matches tied names by substring and would confuse it with the top-level `decoder`.)
    """

    def __init__(self, config: MageConfig):
        super().__init__(config.hidden_size, config.vocab_size, bias=False)
        self.detach_weight = config.tie_word_embeddings

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.weight.detach() if self.detach_weight else self.weight
        return F.linear(hidden_states, weight)


class MageMLMHead(nn.Module):
    """Linear -> GELU -> LayerNorm (eps `mlm_layer_norm_eps`, 1e-5 as in the original) -> product with the token
    embeddings (`projection`) + bias."""

    def __init__(self, config: MageConfig):
        super().__init__()
        self.dense = nn.Linear(config.decoder_hidden_size, config.hidden_size)
        self.activation_fn = ACT2FN["gelu"]
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.mlm_layer_norm_eps)
        self.projection = MageMLMProjection(config)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, L, decoder_hidden_size) -> (B, L, vocab_size)."""
        hidden_states = self.layer_norm(self.activation_fn(self.dense(hidden_states)))
        logits = self.projection(hidden_states)
        return logits + self.bias.to(logits.dtype)  # keeps the product's dtype under autocast


class MageContrastiveHead(nn.Module):
    """MAGE-C's projection head (SimCLR's): Linear -> ReLU -> Linear on the pooled encoder output, (B, D) -> (B, P).
    No BatchNorm, so the loss does not depend on how the batch is split over processes."""

    def __init__(self, config: MageConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.contrastive_hidden_size)
        self.activation_fn = nn.ReLU()
        self.projection = nn.Linear(config.contrastive_hidden_size, config.contrastive_projection_dim)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.projection(self.activation_fn(self.dense(pooled)))


class MagePreTrainedModel(PreTrainedModel):
    config: MageConfig
    config_class = MageConfig
    base_model_prefix = "mage"
    _input_embed_layer = "word_embeddings"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["MageEmbeddings", "MageLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": MageLayer, "attentions": MageAttention}

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The original's initialisation: xavier-uniform Linear, N(0, 0.02) embeddings, unit norms."""
        if isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, MageVQCodebook):
            bound = 1.0 / module.num_embeddings
            init.uniform_(module.weight, -bound, bound)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=self.config.initializer_range)
        elif isinstance(module, nn.Conv2d):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d)):
            if module.weight is not None:
                init.ones_(module.weight)
                init.zeros_(module.bias)
            if isinstance(module, nn.BatchNorm1d):  # running statistics are buffers: start at N(0, 1)
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, MageDecoder):
            init.normal_(module.decoder_pos_embed_learned, std=self.config.initializer_range)
        elif isinstance(module, MageMLMHead):
            init.zeros_(module.bias)

    def resize_token_embeddings(self, *args, **kwargs):
        """Not supported: MAGE's vocabulary is `codebook_size` image tokens, `num_class_slots` condition slots and the
        mask token (the last id), each range meaningful to the VQGAN and the condition ids; set `codebook_size` /
        `num_class_slots` in the config and train instead."""
        raise NotImplementedError(
            "`resize_token_embeddings` is not supported by MAGE: the vocabulary is codebook_size + num_class_slots + "
            "1 (the mask token, last), fixed by the VQGAN codebook and the condition slots; build a model from a "
            "config with other `codebook_size` / `num_class_slots` instead"
        )


# Keys of a pretraining checkpoint (decoder, MLM head) that a feature or classification model leaves unused. Listed
# by their exact layout, so a truly unknown key is still reported.
_PRETRAINING_HEAD_KEYS = [
    r"^decoder\.(decoder_embed|decoder_norm)\.(weight|bias)$",
    r"^decoder\.decoder_pos_embed_learned$",
    r"^decoder\.layers\.\d+\.(layernorm_before|layernorm_after|attention\.qkv_proj|attention\.out_proj|mlp\.fc1|mlp\.fc2)"
    r"\.(weight|bias)$",
    r"^mlm_head\.(dense|layer_norm)\.(weight|bias)$",
    r"^mlm_head\.(bias|projection\.weight)$",
    r"^contrastive_head\.(dense|projection)\.(weight|bias)$",
]


@dataclass
class _TokenInputs:
    """Validated inputs of one forward: (B, 1 + N) ids and, when pixels were given, their (B, N) tokens."""

    input_ids: torch.LongTensor
    image_tokens: torch.LongTensor | None


class MageModel(MagePreTrainedModel):
    r"""
    The MAGE encoder: token embeddings -> ViT blocks -> LayerNorm. Gives image features.

    Takes `pixel_values` (B, 3, H, W) in [0, 1] (tokenized by the built-in VQGAN, condition token = the
    unconditional `fake_class_id`) or `input_ids` (B, 1 + N) full sequences including the position-0 condition
    token. Returns `last_hidden_state` (B, 1 + N, D) after the final LayerNorm, `pooler_output` (B, D) its mean
    over the image tokens, and optionally `hidden_states` (embeddings + each layer; the last one before the final
    LayerNorm) and `attentions`.

    Example:
    ```python
    >>> import torch
    >>> from mage_hf import MageConfig, MageModel
    >>> model = MageModel(MageConfig.from_preset("tiny")).eval()
    >>> out = model(pixel_values=torch.rand(1, 3, 32, 32))
    >>> out.last_hidden_state.shape, out.pooler_output.shape
    (torch.Size([1, 65, 64]), torch.Size([1, 64]))
    ```
    """

    _keys_to_ignore_on_load_unexpected = _PRETRAINING_HEAD_KEYS

    def __init__(self, config: MageConfig, add_final_layernorm: bool = True):
        super().__init__(config)
        self.vqgan = MageVQModel(**config.vq_config) if config.include_vq_tokenizer else None
        if self.vqgan is not None:
            self.vqgan.requires_grad_(False)
        self.embeddings = MageEmbeddings(config)
        depth = config.num_hidden_layers
        # Stochastic depth grows linearly from 0 to `drop_path_rate` over the layers (Python floats: no tensor is
        # made, so the model can be built on the meta device).
        rates = [config.drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.layers = nn.ModuleList(MageLayer(config, drop_path=rate) for rate in rates)
        self.layernorm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if add_final_layernorm else nn.Identity()
        )
        self.post_init()

    @torch.no_grad()
    def tokenize(self, pixel_values: torch.Tensor) -> torch.LongTensor:
        """(B, C, H, W) pixels in [0, 1] at the model's image size -> (B, N) codebook ids."""
        if self.vqgan is None:
            raise ValueError(
                "this model was built with `include_vq_tokenizer=False`: pass `input_ids`, not `pixel_values`"
            )
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"`pixel_values` must be a torch.Tensor, got {type(pixel_values).__name__}")
        expected = (self.config.num_channels, self.config.image_size, self.config.image_size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"`pixel_values` must have shape (batch, {expected[0]}, {expected[1]}, {expected[2]}), "
                f"got {tuple(pixel_values.shape)}; use MageImageProcessor to resize"
            )
        return self.vqgan.tokenize(pixel_values)

    def build_input_ids(
        self, image_tokens: torch.LongTensor, condition_ids: torch.LongTensor | None = None
    ) -> torch.LongTensor:
        """(B, N) image tokens -> (B, 1 + N) sequences with `condition_ids` (B,) (default `fake_class_id`) first."""
        if condition_ids is None:
            condition = image_tokens.new_full((image_tokens.shape[0], 1), self.config.fake_class_id)
        else:
            condition = condition_ids.to(image_tokens).view(-1, 1)
        return torch.cat([condition, image_tokens], dim=1)

    def prepare_inputs(
        self, pixel_values: torch.Tensor | None, input_ids: torch.LongTensor | None
    ) -> _TokenInputs:
        """Exactly one of pixels / ids -> validated (B, 1 + N) ids (pixels are tokenized, fake class first)."""
        if (pixel_values is None) == (input_ids is None):
            raise ValueError("pass exactly one of `pixel_values` and `input_ids`")
        if pixel_values is not None:
            tokens = self.tokenize(pixel_values)
            return _TokenInputs(self.build_input_ids(tokens), tokens)
        length = 1 + self.config.num_image_tokens
        check_integer_tensor("input_ids", input_ids, "(batch, 1 + num_image_tokens)")
        if input_ids.ndim != 2 or input_ids.shape[1] != length:
            raise ValueError(
                f"`input_ids` must have shape (batch, {length}) (condition token + {length - 1} image tokens), "
                f"got {tuple(input_ids.shape)}"
            )
        check_id_range("input_ids", input_ids, 0, self.config.vocab_size, "vocab_size")
        return _TokenInputs(input_ids.long(), None)

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.LongTensor | None = None,
        bool_dropped_pos: torch.BoolTensor | None = None,
        num_dropped_tokens: int | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        r"""
        pixel_values: (B, C, H, W) in [0, 1] at `config.image_size`.
        input_ids: (B, 1 + N) token ids, position 0 the condition token.
        bool_dropped_pos: (B, N) image tokens to remove from the encoder input (the same count in every row), as in
            pretraining; the outputs then have 1 + N - dropped positions.
        num_dropped_tokens: how many tokens `bool_dropped_pos` drops per row, when the caller knows it (the
            pretraining masks drop `config.num_dropped_tokens`): the output shape is then static, with no read-back
            of the mask (GPU sync, export, compile).
        """
        inputs = self.prepare_inputs(pixel_values, input_ids)
        hidden_states = self.embeddings(inputs.input_ids)
        if bool_dropped_pos is not None:
            hidden_states = self._drop_tokens(hidden_states, bool_dropped_pos, num_dropped_tokens)
        for layer in self.layers:
            hidden_states = layer(hidden_states, **kwargs)
        sequence_output = self.layernorm(hidden_states)
        return BaseModelOutputWithPooling(
            last_hidden_state=sequence_output, pooler_output=sequence_output[:, 1:].mean(dim=1)
        )

    @staticmethod
    def _drop_tokens(
        hidden_states: torch.Tensor, bool_dropped_pos: torch.BoolTensor, num_dropped: int | None = None
    ) -> torch.Tensor:
        """(B, 1 + N, D) -> (B, 1 + N - dropped, D), keeping order; position 0 is never dropped."""
        batch, length, width = hidden_states.shape
        dropped = check_bool_mask("bool_dropped_pos", bool_dropped_pos, batch, length - 1)
        if value_checks_enabled() and batch:
            counts = dropped.sum(dim=1)
            expected = counts[0] if num_dropped is None else num_dropped
            if bool((counts != expected).any()):
                raise ValueError(
                    f"`bool_dropped_pos` must drop the same number of tokens in every row"
                    f"{'' if num_dropped is None else f' ({num_dropped})'}, got {counts.tolist()}"
                )
        dropped = torch.cat([dropped.new_zeros(batch, 1), dropped], dim=1)
        if num_dropped is None:
            return hidden_states[~dropped].view(batch, -1, width)
        # Known count: the kept positions, in order, are the first `length - num_dropped` of a stable sort.
        kept = dropped.to(torch.int32).argsort(dim=1, stable=True)[:, : length - num_dropped]
        return hidden_states.gather(1, kept[..., None].expand(-1, -1, width))


class MageForMaskedImageModeling(MagePreTrainedModel):
    r"""
    MAGE encoder + decoder + MLM head: the pretraining and generation network.

    Masks are (B, N) booleans over image tokens; `bool_dropped_pos` (removed from the encoder input) must be a
    subset of `bool_masked_pos` (replaced by the mask token).
    - `pixel_values` and no masks: masks are sampled as in the original (one ratio per batch from a truncated
      normal on [mask_ratio_min, mask_ratio_max], `ceil(N * ratio)` masked, `ceil(N * mask_ratio_min)` dropped),
      from `generator` if given. `labels` default to the image's own tokens.
    - `input_ids` and no masks (generation): positions holding `mask_token_id` are masked, nothing is dropped.
    `class_labels` (B,) put class condition tokens at position 0 of a class-conditional model; in training each is
    replaced by the unconditional id with probability `condition_dropout_prob`.

    The MLM head's output projection is tied to the encoder's word embeddings (`tie_word_embeddings`, as in the
    original) and saved once. With `contrastive_projection_dim > 0` (MAGE-C) a contrastive head also returns
    `contrastive_embeds`; the InfoNCE loss over two views is `mage_hf.training.contrastive.info_nce_loss`.

    Example:
    ```python
    >>> import torch
    >>> from mage_hf import MageConfig, MageForMaskedImageModeling
    >>> model = MageForMaskedImageModeling(MageConfig.from_preset("tiny"))
    >>> out = model(pixel_values=torch.rand(2, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    >>> out.logits.shape, out.loss.ndim
    (torch.Size([2, 65, 1065]), 0)
    ```
    """

    _tied_weights_keys = {"mlm_head.projection.weight": "mage.embeddings.word_embeddings.weight"}

    def __init__(self, config: MageConfig):
        super().__init__(config)
        self.mage = MageModel(config)
        self.decoder = MageDecoder(config)
        self.mlm_head = MageMLMHead(config)
        self.contrastive_head = MageContrastiveHead(config) if config.contrastive_projection_dim > 0 else None
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.mlm_head.projection

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.mlm_head.projection = new_embeddings

    def sample_masks(
        self, batch_size: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> tuple[torch.BoolTensor, torch.BoolTensor]:
        """The original's pretraining masks: (B, N) masked and (B, N) dropped booleans, dropped ⊆ masked.

        One ratio r per batch ~ truncated normal(mask_ratio_mu, mask_ratio_std) on [mask_ratio_min,
        mask_ratio_max]; `ceil(N r)` tokens masked and `ceil(N mask_ratio_min)` dropped, the same random ranking.
        Drawn from `generator` (on its device) without reading anything back to the host.
        """
        config = self.config
        num_tokens = config.num_image_tokens
        uniform = rand_tensor((), generator, device, dtype=torch.float64)
        ratio = truncated_normal(
            uniform, config.mask_ratio_mu, config.mask_ratio_std, config.mask_ratio_min, config.mask_ratio_max
        )
        num_masked = torch.ceil(num_tokens * ratio).long()
        noise = rand_tensor((batch_size, num_tokens), generator, device)
        return mask_lowest(noise, num_masked), mask_lowest(noise, config.num_dropped_tokens)

    def _condition_ids(
        self, class_labels: torch.LongTensor, batch: int, generator: torch.Generator | None, device: torch.device
    ) -> torch.LongTensor:
        """(B,) class labels -> (B,) condition ids, with condition dropout to the unconditional id in training."""
        config = self.config
        class_labels = torch.as_tensor(class_labels).to(device=device, dtype=torch.long).view(-1)
        if class_labels.shape[0] != batch:
            raise ValueError(f"`class_labels` must have {batch} entries, got {class_labels.shape[0]}")
        condition_ids = config.condition_token_id(class_labels)
        if self.training and config.condition_dropout_prob > 0:
            drop = rand_tensor(tuple(class_labels.shape), generator, device) < config.condition_dropout_prob
            condition_ids = torch.where(drop, config.fake_class_id, condition_ids)
        return condition_ids

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.LongTensor | None = None,
        bool_masked_pos: torch.BoolTensor | None = None,
        bool_dropped_pos: torch.BoolTensor | None = None,
        labels: torch.LongTensor | None = None,
        class_labels: torch.LongTensor | None = None,
        generator: torch.Generator | None = None,
        num_dropped_tokens: int | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MageMaskedImageModelingOutput:
        r"""
        pixel_values: (B, C, H, W) images in [0, 1].
        input_ids: (B, 1 + N) sequences (condition token first), e.g. the current ids of a generation step.
        bool_masked_pos / bool_dropped_pos: (B, N) masks over image tokens (see the class docstring).
        labels: (B, N) target codebook ids.
        class_labels: (B,) classes of a class-conditional model (replace position 0).
        generator: torch.Generator for the sampled masks and the condition dropout.
        num_dropped_tokens: how many tokens `bool_dropped_pos` drops per row, when the caller knows it (masks from
            `sample_masks` drop `config.num_dropped_tokens`): passed to the encoder, whose output shape is then
            static (see `MageModel.forward`). Masks sampled here always use `config.num_dropped_tokens`.
        """
        config = self.config
        inputs = self.mage.prepare_inputs(pixel_values, input_ids)
        input_ids = inputs.input_ids
        batch, num_tokens = input_ids.shape[0], config.num_image_tokens
        if labels is None:
            labels = inputs.image_tokens
        if class_labels is not None:
            condition_ids = self._condition_ids(class_labels, batch, generator, input_ids.device)
            input_ids = torch.cat([condition_ids.view(-1, 1), input_ids[:, 1:]], dim=1)

        if bool_masked_pos is None and bool_dropped_pos is not None:
            raise ValueError("`bool_dropped_pos` needs `bool_masked_pos` (dropped tokens must be masked)")
        if bool_masked_pos is None:
            if inputs.image_tokens is not None:
                bool_masked_pos, bool_dropped_pos = self.sample_masks(batch, generator, input_ids.device)
                num_dropped_tokens = config.num_dropped_tokens
            else:
                bool_masked_pos = input_ids[:, 1:] == config.mask_token_id
        bool_masked_pos = check_bool_mask("bool_masked_pos", bool_masked_pos, batch, num_tokens).to(input_ids.device)
        if bool_dropped_pos is not None:
            bool_dropped_pos = check_bool_mask("bool_dropped_pos", bool_dropped_pos, batch, num_tokens)
            bool_dropped_pos = bool_dropped_pos.to(input_ids.device)
            if value_checks_enabled() and bool((bool_dropped_pos & ~bool_masked_pos).any()):
                raise ValueError("`bool_dropped_pos` must be a subset of `bool_masked_pos`")

        image_ids = input_ids[:, 1:].masked_fill(bool_masked_pos, config.mask_token_id)
        masked_input_ids = torch.cat([input_ids[:, :1], image_ids], dim=1)
        encoder_outputs = self.mage(
            input_ids=masked_input_ids,
            bool_dropped_pos=bool_dropped_pos,
            num_dropped_tokens=num_dropped_tokens,
            **kwargs,
        )

        no_condition = bool_masked_pos.new_zeros(batch, 1)
        full_masked = torch.cat([no_condition, bool_masked_pos], dim=1)
        full_dropped = None if bool_dropped_pos is None else torch.cat([no_condition, bool_dropped_pos], dim=1)
        decoded = self.decoder(encoder_outputs.last_hidden_state, full_dropped, full_masked)
        logits = self.mlm_head(decoded)
        contrastive_embeds = None
        if self.contrastive_head is not None:
            pooled = encoder_outputs.last_hidden_state[:, 1:].mean(dim=1)
            contrastive_embeds = F.normalize(self.contrastive_head(pooled), dim=-1)

        loss = None
        if labels is not None:
            loss = self.masked_token_loss(logits, labels, bool_masked_pos)
        return MageMaskedImageModelingOutput(
            loss=loss,
            logits=logits,
            bool_masked_pos=bool_masked_pos,
            bool_dropped_pos=bool_dropped_pos if bool_dropped_pos is not None else torch.zeros_like(bool_masked_pos),
            labels=labels,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            contrastive_embeds=contrastive_embeds,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
        )

    def masked_token_loss(
        self, logits: torch.Tensor, labels: torch.LongTensor, bool_masked_pos: torch.BoolTensor
    ) -> torch.Tensor:
        """Label-smoothed cross entropy over codebook logits, averaged over masked image tokens.

        logits (B, 1 + N, vocab), labels (B, N) codebook ids, bool_masked_pos (B, N) -> scalar.
        """
        codebook_size = self.config.codebook_size
        if tuple(labels.shape) != tuple(bool_masked_pos.shape):
            raise ValueError(f"`labels` must have shape {tuple(bool_masked_pos.shape)}, got {tuple(labels.shape)}")
        check_id_range("labels", labels, 0, codebook_size, "codebook_size")
        per_token = F.cross_entropy(
            logits[:, 1:, :codebook_size].float().flatten(0, 1),
            labels.to(logits.device).flatten(),
            reduction="none",
            label_smoothing=self.config.label_smoothing,
        ).view_as(labels)
        weights = bool_masked_pos.to(per_token.dtype)
        return (per_token * weights).sum() / weights.sum().clamp_min(1.0)


class MageForImageClassification(MagePreTrainedModel):
    r"""
    MAGE encoder with the original's classification head: mean of the encoder output over image tokens (no final
    LayerNorm) -> `fc_norm` -> optional `BatchNorm1d(affine=False)` (linear probing) -> `head` Linear.

    Example:
    ```python
    >>> import torch
    >>> from mage_hf import MageConfig, MageForImageClassification
    >>> model = MageForImageClassification(MageConfig.from_preset("tiny", num_labels=10)).eval()
    >>> model(pixel_values=torch.rand(2, 3, 32, 32)).logits.shape
    torch.Size([2, 10])
    ```
    """

    # From a pretraining checkpoint: its final LayerNorm too (the original's global pooling deletes it).
    _keys_to_ignore_on_load_unexpected = [*_PRETRAINING_HEAD_KEYS, r"^mage\.layernorm\.(weight|bias)$"]

    def __init__(self, config: MageConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mage = MageModel(config, add_final_layernorm=False)
        self.fc_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head_norm = (
            nn.BatchNorm1d(config.hidden_size, affine=False, eps=config.layer_norm_eps)
            if config.use_linear_probe_bn
            else nn.Identity()
        )
        self.head = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MageImageClassifierOutput:
        r"""
        pixel_values: (B, C, H, W) in [0, 1]; or input_ids: (B, 1 + N).
        labels: (B,) class indices (or (B, num_labels) floats for multi-label / regression).
        """
        outputs = self.mage(pixel_values=pixel_values, input_ids=input_ids, **kwargs)
        pooled = self.fc_norm(outputs.pooler_output)
        logits = self.head(self.head_norm(pooled))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels.to(logits.device), logits, self.config)
        return MageImageClassifierOutput(
            loss=loss,
            logits=logits,
            pooler_output=pooled,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = [
    "MageForImageClassification",
    "MageForMaskedImageModeling",
    "MageImageClassifierOutput",
    "MageMaskedImageModelingOutput",
    "MageModel",
    "MagePreTrainedModel",
]

"""Test helper: our models' weights in the layout of the original MAGE release (github.com/LTH14/mage).

The inverse of `mage_hf.conversion`, written independently of it (no shared tables), so a random model of any
shape can be saved as an original-style checkpoint, converted back, and compared.
"""

from __future__ import annotations

import re

import torch

from mage_hf import MageForImageClassification, MageForMaskedImageModeling, MageVQModel

# Our names -> the original's, inside one transformer block (timm `Block`).
_BLOCK = {
    "layernorm_before": "norm1",
    "attention.qkv_proj": "attn.qkv",
    "attention.out_proj": "attn.proj",
    "layernorm_after": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
# Our module prefixes -> the original's, outside the blocks.
_TOP = {
    "mage.embeddings": "token_emb",
    "mage.layernorm": "norm",
    "decoder.decoder_embed": "decoder_embed",
    "decoder.decoder_pos_embed_learned": "decoder_pos_embed_learned",
    "decoder.decoder_norm": "decoder_norm",
    "mlm_head.dense": "mlm_layer.fc",
    "mlm_head.layer_norm": "mlm_layer.ln",
    "mlm_head.bias": "mlm_layer.bias",
    "fc_norm": "fc_norm",
}


def _vqgan_key(name: str, levels: int) -> str:
    """A `MageVQModel` key -> the taming-transformers VQModel key."""
    rules = [
        (r"encoder\.down_blocks\.(\d+)\.(\d+)\.(.+)", lambda m: f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"),
        (r"(encoder|decoder)\.mid_blocks\.(\d+)\.(.+)", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"),
        # decoder lists run deepest level first; the original's `up` is indexed by resolution level.
        (
            r"decoder\.up_blocks\.(\d+)\.(\d+)\.(.+)",
            lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{m[3]}",
        ),
        (
            r"decoder\.upsamplers\.(\d+)\.conv\.(.+)",
            lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}",
        ),
        (r"quantizer\.embedding\.weight", lambda m: "quantize.embedding.weight"),
        (r"(encoder|decoder)\.(conv_in|conv_out|norm_out)\..+", lambda m: m[0]),
    ]
    for pattern, rename in rules:
        if match := re.fullmatch(pattern, name):
            return rename(match)
    raise KeyError(f"no original name for VQGAN key `{name}`")


def vqgan_to_original_layout(vqgan: MageVQModel) -> dict[str, torch.Tensor]:
    """`MageVQModel` -> the state dict of the original VQGAN (`vqgan_jax_strongaug.ckpt["state_dict"]`)."""
    levels = len(vqgan.config.block_out_channels)
    return {_vqgan_key(name, levels): tensor.detach() for name, tensor in vqgan.state_dict().items()}


def _transformer_key(name: str, linear_probe: bool) -> str:
    if match := re.fullmatch(r"(mage|decoder)\.layers\.(\d+)\.(.+)\.(weight|bias)", name):
        stack = "blocks" if match[1] == "mage" else "decoder_blocks"
        return f"{stack}.{match[2]}.{_BLOCK[match[3]]}.{match[4]}"
    if match := re.fullmatch(r"head_norm\.(.+)", name):
        return f"head.0.{match[1]}"
    if match := re.fullmatch(r"head\.(weight|bias)", name):
        return f"head.1.{match[1]}" if linear_probe else name
    for ours, original in _TOP.items():
        if name == ours or name.startswith(ours + "."):
            return original + name[len(ours) :]
    raise KeyError(f"no original name for `{name}`")


def _unused_keys(model, classifier: bool) -> dict[str, torch.Tensor]:
    """The MAE leftovers the original checkpoints carry (random values of the right shapes)."""
    config = model.config
    width, tokens, patch = config.hidden_size, config.num_image_tokens, config.downsample_factor
    unused = {
        "cls_token": torch.randn(1, 1, width),
        "pos_embed": torch.randn(1, 1 + tokens, width),
        "patch_embed.proj.weight": torch.randn(width, config.num_channels, patch, patch),
        "patch_embed.proj.bias": torch.randn(width),
        "token_emb.position_ids": torch.arange(config.max_position_embeddings).unsqueeze(0),
    }
    if not classifier:
        decoder_width = config.decoder_hidden_size
        unused.update(
            {
                "mask_token": torch.randn(1, 1, decoder_width),
                "decoder_pos_embed": torch.randn(1, 1 + tokens, decoder_width),
                "decoder_pred.weight": torch.randn(patch * patch * config.num_channels, decoder_width),
                "decoder_pred.bias": torch.randn(patch * patch * config.num_channels),
            }
        )
    return unused


def to_original_layout(model) -> dict[str, torch.Tensor]:
    """Our `MageForMaskedImageModeling` / `MageForImageClassification` / `MageVQModel` -> an original state dict.

    MAGE models get their VQGAN under `vqgan.*` and the unused MAE keys, like the released checkpoints; save with
    `torch.save({"model": sd}, path)` (MAGE) or `torch.save({"state_dict": sd}, path)` (VQGAN). The tensors share
    memory with the model's (no copies).
    """
    if isinstance(model, MageVQModel):
        return vqgan_to_original_layout(model)
    if not isinstance(model, (MageForMaskedImageModeling, MageForImageClassification)):
        raise TypeError(f"unsupported model type {type(model).__name__}")
    classifier = isinstance(model, MageForImageClassification)
    linear_probe = classifier and model.config.use_linear_probe_bn
    original = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("mage.vqgan.") or name in model.all_tied_weights_keys:  # the tied MLM projection
            continue
        tensor = tensor.detach()
        if name == "mlm_head.bias":
            tensor = tensor.view(1, 1, -1)  # the original keeps a (1, 1, vocab) parameter
        original[_transformer_key(name, linear_probe)] = tensor
    original.update({f"vqgan.{k}": v for k, v in vqgan_to_original_layout(model.mage.vqgan).items()})
    original.update(_unused_keys(model, classifier))
    return original


__all__ = ["to_original_layout", "vqgan_to_original_layout"]

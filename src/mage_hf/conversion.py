"""Conversion of the original MAGE release (github.com/LTH14/mage) into `mage_hf` folders.

Handles the three kinds of original file: a pretraining checkpoint (`mage-vitb-1600.pth`, `{"model": ...}` with the
VQGAN under `vqgan.*`), a fine-tuned / linear-probe classifier (timm keys with `head.*`), and the VQGAN alone
(`vqgan_jax_strongaug.ckpt`, `{"state_dict": ...}`). Every size is read from the tensors; head counts are not
stored in the files and come from the caller (defaults: released ViT-B).
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .configuration_mage import MageConfig

logger = logging.getLogger(__name__)

# Head counts per released size (they are not stored in the checkpoints).
MODEL_SIZE_HEADS = {"vit-b": (12, 16), "vit-l": (16, 16)}

# Keys of the original pretraining model that MAGE never uses (MAE leftovers and a constant buffer).
UNUSED_ORIGINAL_KEYS = re.compile(
    r"^(patch_embed\..*|cls_token|pos_embed|mask_token|decoder_pos_embed|decoder_pred\..*|token_emb\.position_ids)$"
)

_BLOCK_RENAMES = {
    "norm1": "layernorm_before",
    "attn.qkv": "attention.qkv_proj",
    "attn.proj": "attention.out_proj",
    "norm2": "layernorm_after",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_TOP_RENAMES = {
    "token_emb.word_embeddings": "mage.embeddings.word_embeddings",
    "token_emb.position_embeddings": "mage.embeddings.position_embeddings",
    "token_emb.LayerNorm": "mage.embeddings.LayerNorm",
    "norm": "mage.layernorm",
    "decoder_embed": "decoder.decoder_embed",
    "decoder_pos_embed_learned": "decoder.decoder_pos_embed_learned",
    "decoder_norm": "decoder.decoder_norm",
    "mlm_layer.fc": "mlm_head.dense",
    "mlm_layer.ln": "mlm_head.layer_norm",
    "mlm_layer.bias": "mlm_head.bias",
    "fc_norm": "fc_norm",
    "head": "head",
    "head.0": "head_norm",
    "head.1": "head",
}


class CheckpointError(ValueError):
    """An original checkpoint that cannot be converted (unsafe, corrupt, or with unexpected keys)."""


def _require(state_dict: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state_dict:
        raise CheckpointError(f"missing key `{key}` in the checkpoint")
    return state_dict[key]


def _count_indexed(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    """Number of modules `prefix.<i>.*` (1 + the largest index); raises when there is none."""
    indices = [int(m.group(1)) for k in state_dict if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))]
    if not indices:
        raise CheckpointError(f"missing keys `{prefix}.<i>.*` in the checkpoint")
    return 1 + max(indices)


def load_original_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load an original `.pth` / `.ckpt` with `torch.load(weights_only=True)`; returns its flat state dict.

    Only tensors and plain containers are accepted (plus `argparse.Namespace`, which the original training
    script stores as `args`); anything else (arbitrary pickled objects) is refused with a `CheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint `{path}` does not exist or is not a file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message is long; its "WeightsUnpickler error:" part says what was refused.
        match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", str(error), re.DOTALL)
        reason = " ".join((match[1] if match else str(error).splitlines()[0]).split()).split(". Please use")[0]
        if "Unsupported global" not in reason:  # not a refused object: a damaged or foreign pickle stream
            raise CheckpointError(f"`{path}` is not a readable PyTorch checkpoint: {reason}") from error
        raise CheckpointError(
            f"refusing to load `{path}`: it holds objects other than tensors, which `weights_only=True` does not "
            f"allow ({reason})"
        ) from error
    except Exception as error:  # torch raises RuntimeError, EOFError, zipfile errors... for damaged files
        detail = str(error) or f"{type(error).__name__} (empty or cut short?)"
        raise CheckpointError(f"`{path}` is not a readable PyTorch checkpoint: {detail}") from error
    if isinstance(payload, dict):
        for key in ("model", "state_dict"):
            if isinstance(payload.get(key), dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not payload or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CheckpointError(f"`{path}` holds no state dict of tensors (expected `model` or `state_dict` entries)")
    return dict(payload)


def convert_vqgan_state_dict(state_dict: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Original VQGAN keys (under `prefix`) -> `MageVQModel` keys. Raises on keys it does not know."""
    levels = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(rf"{re.escape(prefix)}encoder\.down\.(\d+)\.", k)))
    patterns = [
        (r"encoder\.down\.(\d+)\.block\.(\d+)\.(.+)", lambda m: f"encoder.down_blocks.{m[1]}.{m[2]}.{m[3]}"),
        (r"(encoder|decoder)\.mid\.block_(\d)\.(.+)", lambda m: f"{m[1]}.mid_blocks.{int(m[2]) - 1}.{m[3]}"),
        (r"decoder\.up\.(\d+)\.block\.(\d+)\.(.+)", lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.{m[2]}.{m[3]}"),
        (r"decoder\.up\.(\d+)\.upsample\.conv\.(.+)", lambda m: f"decoder.upsamplers.{levels - 1 - int(m[1])}.conv.{m[2]}"),
        (r"(encoder|decoder)\.(conv_in|conv_out|norm_out)\.(.+)", lambda m: m[0]),
        (r"quantize\.embedding\.weight", lambda m: "quantizer.embedding.weight"),
    ]
    converted = {}
    for key, tensor in state_dict.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        for pattern, rename in patterns:
            if match := re.fullmatch(pattern, name):
                converted[rename(match)] = tensor
                break
        else:
            raise CheckpointError(f"unknown VQGAN key `{key}`")
    return converted


def infer_vq_config(state_dict: dict[str, torch.Tensor], prefix: str = "", image_size: int = 256) -> dict:
    """`MageVQModel` keyword arguments read from original VQGAN tensors (under `prefix`)."""

    def get(name: str) -> torch.Tensor:
        if prefix + name not in state_dict:
            raise CheckpointError(f"missing VQGAN key `{prefix + name}`")
        return state_dict[prefix + name]

    levels = sorted({int(m.group(1)) for k in state_dict if (m := re.match(rf"{re.escape(prefix)}encoder\.down\.(\d+)\.", k))})
    if not levels:
        raise CheckpointError(f"no VQGAN encoder keys (`{prefix}encoder.down.*`) in the checkpoint")
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(rf"{re.escape(prefix)}encoder\.down\.0\.block\.(\d+)\.", k))}
    codebook = get("quantize.embedding.weight")
    return {
        "in_channels": get("encoder.conv_in.weight").shape[1],
        "out_channels": get("decoder.conv_out.weight").shape[0],
        "block_out_channels": [get(f"encoder.down.{level}.block.0.conv1.weight").shape[0] for level in levels],
        "layers_per_block": len(blocks),
        "latent_channels": get("encoder.conv_out.weight").shape[0],
        "num_vq_embeddings": codebook.shape[0],
        "vq_embed_dim": codebook.shape[1],
        "norm_num_groups": 32,
        "norm_eps": 1e-6,
        "sample_size": image_size,
    }


@dataclass
class ConvertedMage:
    """A converted checkpoint: the task it came from, its config, our state dict and the dropped keys."""

    task: str  # "pretraining" or "classification"
    config: MageConfig
    state_dict: dict[str, torch.Tensor]
    dropped_keys: list[str] = field(default_factory=list)


def _rename_transformer_key(key: str) -> str | None:
    if match := re.fullmatch(r"(decoder_)?blocks\.(\d+)\.(.+)\.(weight|bias)", key):
        stack = "decoder.layers" if match[1] else "mage.layers"
        if match[3] not in _BLOCK_RENAMES:
            return None
        return f"{stack}.{match[2]}.{_BLOCK_RENAMES[match[3]]}.{match[4]}"
    if key.startswith("vqgan."):
        return None  # converted separately
    module, _, leaf = key.rpartition(".")
    if key in _TOP_RENAMES:  # bare parameters: mlm_layer.bias, decoder_pos_embed_learned
        return _TOP_RENAMES[key]
    if module in _TOP_RENAMES:
        return f"{_TOP_RENAMES[module]}.{leaf}"
    return None


def convert_mage_state_dict(
    state_dict: dict[str, torch.Tensor],
    num_attention_heads: int = 12,
    decoder_num_attention_heads: int = 16,
) -> ConvertedMage:
    """Original MAGE pretraining or classification state dict -> our config and state dict (strict on keys)."""
    if "token_emb.word_embeddings.weight" not in state_dict:
        raise CheckpointError("not a MAGE checkpoint: `token_emb.word_embeddings.weight` is missing")
    is_classifier = "head.weight" in state_dict or "head.1.weight" in state_dict
    if is_classifier and "norm.weight" in state_dict and "fc_norm.weight" not in state_dict:
        raise CheckpointError(
            "classifier checkpoints without global pooling (`norm.*`, no `fc_norm.*`) are not supported: "
            "MAGE's released classifiers use global pooling"
        )
    vq_config = infer_vq_config(state_dict, prefix="vqgan.")
    codebook_size = vq_config["num_vq_embeddings"]
    vocab_size, hidden_size = _require(state_dict, "token_emb.word_embeddings.weight").shape
    num_image_tokens = None
    if "decoder_pos_embed_learned" in state_dict:
        num_image_tokens = state_dict["decoder_pos_embed_learned"].shape[1] - 1
    elif "pos_embed" in state_dict:
        num_image_tokens = state_dict["pos_embed"].shape[1] - 1
    else:
        raise CheckpointError("cannot infer the image size: neither `decoder_pos_embed_learned` nor `pos_embed` present")
    grid = int(round(num_image_tokens**0.5))
    if grid * grid != num_image_tokens:
        raise CheckpointError(f"the checkpoint's {num_image_tokens} image tokens do not form a square grid")
    image_size = grid * 2 ** (len(vq_config["block_out_channels"]) - 1)
    vq_config["sample_size"] = image_size
    depth = _count_indexed(state_dict, "blocks")
    config_kwargs = {
        "image_size": image_size,
        "num_channels": vq_config["in_channels"],
        "codebook_size": codebook_size,
        "num_class_slots": vocab_size - codebook_size - 1,
        "hidden_size": hidden_size,
        "num_hidden_layers": depth,
        "num_attention_heads": num_attention_heads,
        "mlp_ratio": _require(state_dict, "blocks.0.mlp.fc1.weight").shape[0] / hidden_size,
        "max_position_embeddings": _require(state_dict, "token_emb.position_embeddings.weight").shape[0],
        "vq_config": vq_config,
    }
    if is_classifier:
        head = state_dict.get("head.weight", state_dict.get("head.1.weight"))
        config_kwargs.update(num_labels=head.shape[0], use_linear_probe_bn="head.1.weight" in state_dict)
        # The fine-tuned model's decoder does not exist; keep the released decoder sizes in the config.
    else:
        decoder_depth = _count_indexed(state_dict, "decoder_blocks")
        config_kwargs.update(
            decoder_hidden_size=_require(state_dict, "decoder_embed.weight").shape[0],
            decoder_num_hidden_layers=decoder_depth,
            decoder_num_attention_heads=decoder_num_attention_heads,
        )
    try:
        config = MageConfig(**config_kwargs)
    except ValueError as error:
        raise CheckpointError(f"the checkpoint's sizes do not make a valid MageConfig: {error}") from error

    converted, dropped, unknown = {}, [], []
    for key, tensor in state_dict.items():
        if key.startswith("vqgan."):
            continue
        if UNUSED_ORIGINAL_KEYS.fullmatch(key):
            dropped.append(key)
            continue
        new_key = _rename_transformer_key(key)
        if new_key is None:
            unknown.append(key)
            continue
        converted[new_key] = tensor.reshape(-1) if key == "mlm_layer.bias" else tensor
    if unknown:
        raise CheckpointError(f"unknown keys in the checkpoint: {sorted(unknown)}")
    converted.update({f"mage.vqgan.{k}": v for k, v in convert_vqgan_state_dict(state_dict, "vqgan.").items()})
    return ConvertedMage("classification" if is_classifier else "pretraining", config, converted, sorted(dropped))


def build_converted_model(converted: ConvertedMage):
    """The model class of `converted.task`, with its weights loaded and checked (CheckpointError otherwise)."""
    from .modeling_mage import MageForImageClassification, MageForMaskedImageModeling

    model_class = MageForImageClassification if converted.task == "classification" else MageForMaskedImageModeling
    model = model_class(converted.config).eval()
    try:
        missing, unexpected = model.load_state_dict(converted.state_dict, strict=False)
    except RuntimeError as error:  # size mismatches: tensors that disagree with the sizes read from the checkpoint
        raise CheckpointError(f"converted weights do not fit the model: {error}") from error
    # Tied weights (the MLM head's projection is the word embeddings) are loaded through their source key.
    missing = [k for k in missing if k not in model.all_tied_weights_keys and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise CheckpointError(f"converted weights do not fit the model: missing {missing}, unexpected {unexpected}")
    return model


def load_original_mage(
    checkpoint: str | os.PathLike, num_attention_heads: int = 12, decoder_num_attention_heads: int = 16
):
    """Convert an original MAGE checkpoint in memory -> `MageForMaskedImageModeling` or `MageForImageClassification`."""
    converted = convert_mage_state_dict(
        load_original_state_dict(checkpoint), num_attention_heads, decoder_num_attention_heads
    )
    return build_converted_model(converted)


def load_original_vqgan(checkpoint: str | os.PathLike, image_size: int = 256):
    """Convert an original VQGAN checkpoint in memory -> `MageVQModel`."""
    from .modeling_vqgan import MageVQModel

    state_dict = load_original_state_dict(checkpoint)
    model = MageVQModel(**infer_vq_config(state_dict, image_size=image_size)).eval()
    try:
        model.load_state_dict(convert_vqgan_state_dict(state_dict), strict=True)
    except RuntimeError as error:  # missing keys or size mismatches
        raise CheckpointError(f"`{checkpoint}` does not fit the VQGAN read from its sizes: {error}") from error
    return model


# ----------------------------------------------------------------------------------------------------------------
# Whole conversions: checkpoint files -> a model in memory -> verified save_pretrained folders
# ----------------------------------------------------------------------------------------------------------------

DEFAULT_VQ_IMAGE_SIZE = 256  # the released VQGAN's training resolution
VERIFY_SEED = 0


@dataclass
class Conversion:
    """A converted model in memory: its task ("pretraining", "classification" or "vqgan"), the model, the original
    file(s) and the known-unused original keys that were dropped."""

    task: str
    model: torch.nn.Module
    sources: list[str]
    dropped_keys: list[str] = field(default_factory=list)


def check_heads(state_dict: dict[str, torch.Tensor], heads: tuple[int, int]) -> None:
    """Each head count must divide the width the checkpoint holds (the decoder's only when it has one)."""
    widths = [("--num-attention-heads", "encoder", "token_emb.word_embeddings.weight", 1)]
    if "decoder_embed.weight" in state_dict:
        widths.append(("--decoder-num-attention-heads", "decoder", "decoder_embed.weight", 0))
    for (flag, stack, key, dim), num_heads in zip(widths, heads):
        if key in state_dict and state_dict[key].shape[dim] % num_heads:
            width = state_dict[key].shape[dim]
            raise CheckpointError(
                f"`{flag}` ({num_heads}) must divide the checkpoint's {stack} width ({width}); "
                f"pass --model-size or a head count that divides {width}"
            )


def replace_vqgan(
    state_dict: dict[str, torch.Tensor], vq_state_dict: dict[str, torch.Tensor], vq_path: Path
) -> None:
    """Put the separate VQGAN's weights under `vqgan.*` of a MAGE state dict, in place (same keys and shapes)."""
    current = {key[len("vqgan.") :]: value for key, value in state_dict.items() if key.startswith("vqgan.")}
    if current:
        if set(current) != set(vq_state_dict):
            differ = sorted(set(current) ^ set(vq_state_dict))
            raise CheckpointError(f"`{vq_path}` has other VQGAN keys than the MAGE checkpoint: {differ[:10]}")
        mismatched = [
            f"{key}: {tuple(vq_state_dict[key].shape)} vs {tuple(tensor.shape)}"
            for key, tensor in current.items()
            if vq_state_dict[key].shape != tensor.shape
        ]
        if mismatched:
            raise CheckpointError(
                f"`{vq_path}` does not match the MAGE checkpoint's VQGAN shapes: {mismatched[:10]}"
            )
    state_dict.update({f"vqgan.{key}": value for key, value in vq_state_dict.items()})


def convert_checkpoints(
    checkpoint: Path | None,
    vqgan_checkpoint: Path | None = None,
    heads: tuple[int, int] = MODEL_SIZE_HEADS["vit-b"],
    image_size: int | None = None,
) -> Conversion:
    """Read original file(s) and build the converted model in memory: a MAGE `checkpoint` (its VQGAN replaced by
    `vqgan_checkpoint` when given), or a `vqgan_checkpoint` alone (`image_size`: the tokenizer's, default 256).
    `heads`: (encoder, decoder) attention heads, which checkpoints do not store."""
    if checkpoint is None:
        if vqgan_checkpoint is None:
            raise CheckpointError("pass a MAGE checkpoint and/or a VQGAN checkpoint")
        image_size = image_size or DEFAULT_VQ_IMAGE_SIZE
        model = load_original_vqgan(vqgan_checkpoint, image_size=image_size)
        if image_size % model.downsample_factor:
            raise CheckpointError(
                f"`--image-size` ({image_size}) must be a multiple of the VQGAN's downsampling factor "
                f"({model.downsample_factor})"
            )
        return Conversion("vqgan", model, [Path(vqgan_checkpoint).name])

    state_dict = load_original_state_dict(checkpoint)
    sources = [Path(checkpoint).name]
    if vqgan_checkpoint is not None:
        replace_vqgan(state_dict, load_original_state_dict(vqgan_checkpoint), Path(vqgan_checkpoint))
        sources.append(Path(vqgan_checkpoint).name)
    check_heads(state_dict, heads)
    converted = convert_mage_state_dict(state_dict, *heads)
    if image_size is not None and image_size != converted.config.image_size:
        raise CheckpointError(
            f"`--image-size` ({image_size}) disagrees with the checkpoint's image size "
            f"({converted.config.image_size}); it only applies to VQGAN-only conversion"
        )
    return Conversion(converted.task, build_converted_model(converted), sources, converted.dropped_keys)


def summarize(conversion: Conversion) -> str:
    """What was found: task, sizes and the dropped keys."""
    model = conversion.model
    if conversion.task == "vqgan":
        vq = model.config
        grid = vq.sample_size // model.downsample_factor
        return "\n".join(
            [
                f"task: vqgan (MageVQModel) from {', '.join(conversion.sources)}",
                f"image size {vq.sample_size} px -> {grid}x{grid} = {grid * grid} tokens, "
                + f"codebook {vq.num_vq_embeddings} x {vq.vq_embed_dim}",
                f"channels {list(vq.block_out_channels)}, blocks per level {vq.layers_per_block}",
            ]
        )
    config = model.config
    grid = config.token_grid_size
    lines = [
        f"task: {conversion.task} ({type(model).__name__}) from {' + VQGAN '.join(conversion.sources)}",
        f"image size {config.image_size} px -> {grid}x{grid} = {config.num_image_tokens} tokens, "
        + f"codebook {config.codebook_size} (vocabulary {config.vocab_size}, mask id {config.mask_token_id}, "
        + f"fake class id {config.fake_class_id})",
        f"encoder: width {config.hidden_size}, depth {config.num_hidden_layers}, heads {config.num_attention_heads}",
    ]
    if conversion.task == "classification":
        head = "BatchNorm + linear (linear probe)" if config.use_linear_probe_bn else "linear"
        lines.append(f"classes: {config.num_labels} ({head} head)")
    else:
        lines.append(
            f"decoder: width {config.decoder_hidden_size}, depth {config.decoder_num_hidden_layers}, "
            f"heads {config.decoder_num_attention_heads}"
        )
    vq = config.vq_config
    lines.append(f"VQGAN: channels {vq['block_out_channels']}, blocks per level {vq['layers_per_block']}")
    dropped = ", ".join(conversion.dropped_keys) or "none"
    lines.append(f"dropped {len(conversion.dropped_keys)} known-unused original keys: {dropped}")
    return "\n".join(lines)


@torch.no_grad()
def _forward(model: torch.nn.Module, task: str) -> torch.Tensor:
    """One forward pass on a seeded random input at the model's size; returns the main output tensor."""
    generator = torch.Generator().manual_seed(VERIFY_SEED)
    if task == "vqgan":
        size, channels = model.config.sample_size, model.config.in_channels
        return model(torch.rand(1, channels, size, size, generator=generator)).sample
    config = model.config
    pixels = torch.rand(1, config.num_channels, config.image_size, config.image_size, generator=generator)
    if task == "classification":
        return model(pixel_values=pixels).logits
    return model(pixel_values=pixels, generator=generator).logits


def _load_saved(task: str, path: Path) -> torch.nn.Module:
    from .modeling_mage import MageForImageClassification, MageForMaskedImageModeling
    from .modeling_vqgan import MageVQModel

    model_class = {
        "pretraining": MageForMaskedImageModeling,
        "classification": MageForImageClassification,
        "vqgan": MageVQModel,
    }[task]
    return model_class.from_pretrained(path).eval()


def verify_saved(model: torch.nn.Module, folder: Path, task: str) -> str:
    """Load `folder` back with the task's class, check every tensor equals the converted model's, run one forward
    pass on a random input at the model's size. Returns the "verified: ..." line."""
    reloaded = _load_saved(task, folder)
    expected, actual = model.state_dict(), reloaded.state_dict()
    differing = sorted(
        k
        for k in expected.keys() | actual.keys()
        if k not in expected or k not in actual or not torch.equal(expected[k], actual[k])
    )
    if differing:
        raise CheckpointError(f"the saved folder does not hold the converted weights: {differing[:10]}")
    output = _forward(reloaded, task)
    return (
        f"verified: {type(reloaded).__name__} output {tuple(output.shape)} ({len(actual)} tensors identical)"
    )


def write_model_folder(conversion: Conversion, folder: Path, final_path: Path) -> str:
    """Save the model, its image processor config and model card into `folder`, then verify it."""
    from .image_processing_mage import MageImageProcessor
    from .model_card import write_model_card

    model, task = conversion.model, conversion.task
    model.save_pretrained(folder)  # safetensors only (the transformers 5 / diffusers default)
    image_size = model.config.sample_size if task == "vqgan" else model.config.image_size
    MageImageProcessor.for_image_size(image_size).save_pretrained(folder)
    write_model_card(
        folder, kind=task, converted_from=" + ".join(conversion.sources), model_name=final_path.name
    )
    return verify_saved(model, folder, task)


def write_pipeline_folder(conversion: Conversion, folder: Path, final_path: Path) -> str:
    """Save a `MagePipeline` (tokenizer as `vqvae`, the transformer without its copy of it, the scheduler) into
    `folder` with a model card; verify that the saved pipeline generates the same tokens as the in-memory one."""
    from .model_card import write_model_card
    from .pipeline_mage import MagePipeline

    pipeline = MagePipeline.from_masked_image_model(conversion.model)
    pipeline.save_pretrained(folder)
    write_model_card(folder, kind="pipeline", converted_from=" + ".join(conversion.sources), model_name=final_path.name)
    loaded = MagePipeline.from_pretrained(folder)
    tokens = []
    for pipe in (pipeline, loaded):
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(0)
        tokens.append(pipe(num_inference_steps=2, generator=generator, output_type="latent").images)
    if not torch.equal(*tokens):
        raise CheckpointError("the saved pipeline does not reproduce the converted model's generation")
    return f"verified: MagePipeline 2-step generation identical after reload, tokens {tuple(tokens[1].shape)}"


__all__ = [
    "CheckpointError",
    "ConvertedMage",
    "MODEL_SIZE_HEADS",
    "UNUSED_ORIGINAL_KEYS",
    "Conversion",
    "build_converted_model",
    "check_heads",
    "convert_checkpoints",
    "replace_vqgan",
    "summarize",
    "verify_saved",
    "write_model_folder",
    "write_pipeline_folder",
    "convert_mage_state_dict",
    "convert_vqgan_state_dict",
    "infer_vq_config",
    "load_original_mage",
    "load_original_state_dict",
    "load_original_vqgan",
]

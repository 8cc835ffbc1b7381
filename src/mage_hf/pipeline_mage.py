"""`MagePipeline`: MAGE image generation (unconditional, class-conditional with guidance) and token-level editing
(inpainting, outpainting, uncropping) as a diffusers pipeline."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, ImagePipelineOutput

from .image_processing_mage import MageImageProcessor
from .modeling_mage import MageForMaskedImageModeling
from .modeling_vqgan import MageVQModel
from .scheduling_mage import MageScheduler

ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | list
GUIDANCE_SCHEDULES = ("constant", "linear")
OUTPAINT_DIRECTIONS = ("left", "right", "top", "bottom")


class MagePipeline(DiffusionPipeline):
    r"""
    MAGE generation with iterative (MaskGIT) decoding of VQGAN tokens.

    Components: `vqvae` (`MageVQModel`, tokenizes and decodes), `transformer` (`MageForMaskedImageModeling`; its
    own tokenizer copy is not needed) and `scheduler` (`MageScheduler`, the unmasking rule).

    - unconditional: `pipe(batch_size=4)`; every sequence starts with the model's `fake_class_id`.
    - class-conditional (models with `num_condition_classes > 0`): `pipe(class_label=[1, 7], guidance_scale=3.0)`;
      classifier-free guidance `uncond + s * (cond - uncond)` from one batched forward per step, optionally ramped
      linearly over the steps (`guidance_schedule="linear"`, as in RCG).
    - editing: `pipe(image=..., mask_image=...)` regenerates the tokens whose patch touches the white part of the
      mask and keeps the others; `outpaint(...)` and `uncrop(...)` build such a canvas and mask.

    Reduced precision and speed: `MagePipeline.from_pretrained(path, dtype=torch.bfloat16)` (diffusers >= 0.42;
    `torch_dtype=` on older versions) loads every component in bf16 / fp16, and `torch.autocast(device_type,
    dtype=torch.bfloat16)` around a call runs fp32 weights in bf16. Either way the logits are cast to float32
    before the scheduler (softmax, sampling, Gumbel noise and the confidence sort run in float32) and the images
    come back as float32 in [0, 1]. `compile_transformer(**kwargs)` applies `torch.compile` to the transformer.

    Example:
    ```python
    >>> import torch
    >>> from mage_hf import MagePipeline
    >>> pipe = MagePipeline.from_pretrained("path/to/pipeline")
    >>> image = pipe(class_label=1, generator=torch.Generator().manual_seed(0)).images[0]
    ```
    """

    model_cpu_offload_seq = "transformer->vqvae"
    _callback_tensor_inputs = ["sample_ids"]

    def __init__(self, vqvae: MageVQModel, transformer: MageForMaskedImageModeling, scheduler: MageScheduler):
        super().__init__()
        self.register_modules(vqvae=vqvae, transformer=transformer, scheduler=scheduler)
        config = transformer.config
        if vqvae.config.num_vq_embeddings != config.codebook_size:
            raise ValueError(
                f"`vqvae` has {vqvae.config.num_vq_embeddings} codes but `transformer` expects codebook_size "
                f"{config.codebook_size}"
            )
        if scheduler.config.mask_token_id != config.mask_token_id:
            raise ValueError(
                f"`scheduler.config.mask_token_id` ({scheduler.config.mask_token_id}) must equal the transformer's "
                f"mask_token_id ({config.mask_token_id})"
            )
        self.image_processor = MageImageProcessor.for_image_size(config.image_size)
        self.labels = self._label_names(config)

    @classmethod
    def from_masked_image_model(cls, model: MageForMaskedImageModeling, **scheduler_kwargs: Any) -> MagePipeline:
        """Build a pipeline from a `MageForMaskedImageModeling` that holds its tokenizer: the VQGAN becomes
        `vqvae`, the transformer is a copy without it (weights shared in memory, saved once), and the scheduler
        gets the model's mask id (`scheduler_kwargs` such as `choice_temperature` go to `MageScheduler`)."""
        if model.mage.vqgan is None:
            raise ValueError("`model` has no tokenizer (include_vq_tokenizer=False): build the pipeline from parts")
        config = model.config.__class__.from_dict({**model.config.to_dict(), "include_vq_tokenizer": False})
        transformer = MageForMaskedImageModeling(config)
        weights = {k: v for k, v in model.state_dict().items() if not k.startswith("mage.vqgan.")}
        transformer.load_state_dict(weights, strict=True, assign=True)
        transformer.to(dtype=model.dtype).eval()
        scheduler = MageScheduler(mask_token_id=config.mask_token_id, **scheduler_kwargs)
        return cls(vqvae=model.mage.vqgan, transformer=transformer, scheduler=scheduler)

    def compile_transformer(self, **compile_kwargs: Any) -> MagePipeline:
        """`torch.compile` the transformer in place (`nn.Module.compile`, so parameter names and
        `save_pretrained` are unchanged) and return the pipeline.

        The transformer is the part called once per decoding step; the VQGAN decode runs once per call and stays
        eager. `compile_kwargs` go to `torch.compile` (e.g. `mode="max-autotune"`, `dynamic=False`). The first
        call with a new batch shape compiles (classifier-free guidance doubles the batch the transformer sees);
        the input-id validation of the model is a graph break, so `fullgraph=True` is not supported.
        """
        self.transformer.compile(**compile_kwargs)
        return self

    @property
    def transformer_is_compiled(self) -> bool:
        """Whether `compile_transformer` (or `transformer.compile()`) was applied."""
        return getattr(self.transformer, "_compiled_call_impl", None) is not None

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save as diffusers does, with `model_index.json` naming components `["mage_hf", "<Class>"]`: the
        package's public names, stable however its modules are organised."""
        super().save_pretrained(save_directory, **kwargs)
        index_path = Path(save_directory) / "model_index.json"
        index = json.loads(index_path.read_text())
        for name in ("vqvae", "transformer", "scheduler"):
            index[name] = ["mage_hf", type(getattr(self, name)).__name__]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    @staticmethod
    def _label_names(config) -> dict[str, int]:
        """Class name -> class index from `transformer.config.id2label` (comma-separated synonyms allowed)."""
        if not config.num_condition_classes or len(config.id2label or {}) != config.num_condition_classes:
            return {}
        labels = {}
        for index, names in config.id2label.items():
            for name in str(names).split(","):
                labels[name.strip()] = int(index)
        return dict(sorted(labels.items()))

    def get_label_ids(self, label: str | list[str]) -> list[int]:
        """Class names (from the transformer's `id2label`) -> class indices."""
        names = [label] if isinstance(label, str) else list(label)
        missing = [name for name in names if name not in self.labels]
        if missing:
            raise ValueError(f"`class_label` names {missing} are not known; available: {sorted(self.labels)}")
        return [self.labels[name] for name in names]

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    def check_inputs(
        self,
        class_label,
        batch_size: int | None,
        num_images_per_prompt: int,
        num_inference_steps: int,
        guidance_scale: float,
        guidance_schedule: str,
        image,
        mask_image,
        strength: float,
        output_type: str,
        callback_on_step_end_tensor_inputs: list[str] | None,
    ) -> None:
        config = self.transformer.config
        if not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= config.num_image_tokens:
            raise ValueError(
                f"`num_inference_steps` must be an integer in [1, {config.num_image_tokens}] (the number of image "
                f"tokens), got {num_inference_steps!r}"
            )
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be a positive integer, got {num_images_per_prompt!r}")
        if class_label is not None and config.num_condition_classes == 0:
            raise ValueError("`class_label` was given but this model is unconditional (num_condition_classes = 0)")
        if class_label is not None and batch_size is not None:
            raise ValueError("pass `class_label` (one image per label) or `batch_size`, not both")
        if guidance_scale > 1.0 and config.num_condition_classes == 0:
            raise ValueError("`guidance_scale` > 1 needs a class-conditional model and `class_label`")
        if guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be >= 0, got {guidance_scale}")
        if guidance_schedule not in GUIDANCE_SCHEDULES:
            raise ValueError(f"`guidance_schedule` must be one of {GUIDANCE_SCHEDULES}, got {guidance_schedule!r}")
        if (image is None) != (mask_image is None) and strength >= 1.0:
            raise ValueError("inpainting needs both `image` and `mask_image` (or `image` with `strength` < 1)")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"`strength` must be in (0, 1], got {strength}")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"`output_type` must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        unknown = set(callback_on_step_end_tensor_inputs or []) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` may only name {self._callback_tensor_inputs}, got {sorted(unknown)}"
            )

    def _class_ids(self, class_label) -> list[int]:
        """int / str / list of either -> class indices, range-checked."""
        labels = class_label if isinstance(class_label, (list, tuple)) else [class_label]
        if torch.is_tensor(class_label):
            labels = class_label.reshape(-1).tolist()
        indices = []
        for label in labels:
            if isinstance(label, str):
                indices.extend(self.get_label_ids(label))
            elif isinstance(label, (int, np.integer)) and not isinstance(label, bool):
                indices.append(int(label))
            else:
                raise TypeError(f"`class_label` entries must be int or str, got {type(label).__name__}")
        num_classes = self.transformer.config.num_condition_classes
        bad = [i for i in indices if not 0 <= i < num_classes]
        if bad:
            raise ValueError(f"`class_label` values must be in [0, {num_classes}), got {bad}")
        return indices

    def prepare_condition_ids(
        self, class_label, batch_size: int | None, num_images_per_prompt: int, device: torch.device
    ) -> torch.LongTensor:
        """(B,) condition token ids: class ids for class-conditional generation, else the unconditional id."""
        config = self.transformer.config
        if class_label is None:
            count = (batch_size or 1) * num_images_per_prompt
            return torch.full((count,), config.fake_class_id, dtype=torch.long, device=device)
        ids = torch.tensor([config.condition_token_id(c) for c in self._class_ids(class_label)], device=device)
        return ids.repeat_interleave(num_images_per_prompt)

    def _pixels(self, image: ImageInput, name: str) -> torch.Tensor:
        """Image input -> (B, C, S, S) float pixels in [0, 1] at the model size (resize + center crop)."""
        if image is None:
            raise ValueError(f"`{name}` is required")
        return self.image_processor(image, return_tensors="pt")["pixel_values"]

    @staticmethod
    def _image_sizes(image: ImageInput) -> list[tuple[int, int]]:
        """(height, width) of each image in a PIL / numpy / torch input or list of them."""
        items = image if isinstance(image, list) else [image]
        sizes = []
        for item in items:
            if isinstance(item, PIL.Image.Image):
                sizes.append((item.height, item.width))
            elif isinstance(item, np.ndarray):
                hw = item.shape[:2] if item.ndim == 3 and item.shape[-1] in (1, 3, 4) else item.shape[-2:]
                sizes.extend([tuple(hw)] * (item.shape[0] if item.ndim == 4 else 1))
            elif isinstance(item, torch.Tensor):
                sizes.extend([tuple(item.shape[-2:])] * (item.shape[0] if item.ndim == 4 else 1))
            else:
                raise TypeError(f"images must be PIL images, numpy arrays or torch tensors, got {type(item).__name__}")
        return sizes

    def prepare_edit_mask(self, image: ImageInput, mask_image: ImageInput) -> torch.BoolTensor:
        """(B, N) tokens to regenerate: those whose patch touches a white (> 0.5) pixel of the processed mask."""
        image_sizes, mask_sizes = self._image_sizes(image), self._image_sizes(mask_image)
        if len(mask_sizes) == 1 and len(image_sizes) > 1:
            mask_sizes = mask_sizes * len(image_sizes)
            mask_image = [mask_image] * len(image_sizes)
        if image_sizes != mask_sizes:
            raise ValueError(f"`mask_image` sizes {mask_sizes} must match the `image` sizes {image_sizes}")
        mask = self._pixels(mask_image, "mask_image").mean(dim=1, keepdim=True)
        factor = self.vqvae.downsample_factor
        return F.max_pool2d(mask, kernel_size=factor).flatten(1) > 0.5

    def prepare_latents(
        self,
        batch_size: int,
        device: torch.device,
        image: ImageInput | None = None,
        mask_image: ImageInput | None = None,
        strength: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.LongTensor:
        """(B, N) starting token ids: all masked, or an image's tokens with the region to regenerate masked.

        With `strength` < 1 only that fraction of the region's tokens (chosen at random) is regenerated.
        """
        config = self.transformer.config
        num_tokens = config.num_image_tokens
        if image is None:
            return torch.full((batch_size, num_tokens), config.mask_token_id, dtype=torch.long, device=device)
        pixels = self._pixels(image, "image").to(device=device, dtype=self.vqvae.dtype)
        tokens = self.vqvae.tokenize(pixels)
        if mask_image is None:
            region = torch.ones_like(tokens, dtype=torch.bool)
        else:
            region = self.prepare_edit_mask(image, mask_image).to(device)
        if tokens.shape[0] == 1 and batch_size > 1:
            tokens, region = tokens.expand(batch_size, -1), region.expand(batch_size, -1)
        if tokens.shape[0] != batch_size:
            raise ValueError(f"got {tokens.shape[0]} images for a batch of {batch_size}")
        if strength < 1.0:
            region = region & (self._uniform((batch_size, num_tokens), generator, device) < strength)
        if not bool(region.any(dim=1).all()):
            raise ValueError("`mask_image` selects no token to regenerate in at least one image")
        return torch.where(region, torch.full_like(tokens, config.mask_token_id), tokens)

    @staticmethod
    def _uniform(shape: tuple[int, int], generator, device: torch.device) -> torch.Tensor:
        """U(0, 1) of `shape`, one row per generator when a list is given."""
        if isinstance(generator, list):
            rows = [torch.rand(shape[1:], generator=g, device=g.device) for g in generator]
            return torch.stack(rows).to(device)
        gen_device = generator.device if generator is not None else device
        return torch.rand(shape, generator=generator, device=gen_device).to(device)

    def _guidance_at(self, step_index: int, schedule: str) -> float:
        """Guidance scale of one step: constant, or ramped from 1 by the fraction of tokens known after the step."""
        if schedule == "constant":
            return self._guidance_scale
        ratio = (step_index + 1) / self._num_timesteps
        known_fraction = 1.0 - float(self.scheduler.mask_ratio(ratio))
        return 1.0 + (self._guidance_scale - 1.0) * known_fraction

    def predict_logits(self, sample_ids: torch.LongTensor, condition_ids: torch.LongTensor, guidance: float):
        """(B, N) ids -> (B, N, codebook_size) logits; with guidance, cond and uncond rows in one forward."""
        config = self.transformer.config
        input_ids = torch.cat([condition_ids[:, None], sample_ids], dim=1)
        if self.do_classifier_free_guidance:
            unconditional = input_ids.clone()
            unconditional[:, 0] = config.fake_class_id
            input_ids = torch.cat([input_ids, unconditional])
        logits = self.transformer(input_ids=input_ids).logits[:, 1:, : config.codebook_size].float()
        if self.do_classifier_free_guidance:
            conditional, unconditional = logits.chunk(2)
            logits = unconditional + guidance * (conditional - unconditional)
        return logits

    def decode_tokens(self, sample_ids: torch.LongTensor, output_type: str):
        """(B, N) codebook ids -> images clipped to [0, 1] as PIL list, (B, H, W, C) numpy or (B, C, H, W) torch."""
        images = self.vqvae.decode_indices(sample_ids).float().clamp(0.0, 1.0)
        if output_type == "pt":
            return images
        array = images.permute(0, 2, 3, 1).cpu().numpy()
        return array if output_type == "np" else self.numpy_to_pil(array)

    @torch.no_grad()
    def __call__(
        self,
        class_label: int | str | list[int | str] | torch.Tensor | None = None,
        batch_size: int | None = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 12,
        guidance_scale: float = 1.0,
        guidance_schedule: str = "constant",
        choice_temperature: float | None = None,
        temperature: float | None = None,
        image: ImageInput | None = None,
        mask_image: ImageInput | None = None,
        strength: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, int, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> ImagePipelineOutput | tuple:
        r"""
        Generate or edit images.

        Args:
            class_label: class index, class name (via the transformer's `id2label`) or a list of them (one image
                per entry, times `num_images_per_prompt`); `None` for unconditional generation.
            batch_size: number of unconditional images (default 1; or the number of input images when editing).
            num_images_per_prompt: images per class label (or per unconditional slot).
            num_inference_steps: decoding iterations (12 in the original; the paper's FID uses 20), 1..N.
            guidance_scale: classifier-free guidance scale (1 = none).
            guidance_schedule: "constant", or "linear" (ramps from 1 as tokens become known, as in RCG).
            choice_temperature: Gumbel temperature of the re-masking choice (scheduler default 4.5; FID: 6.0).
            temperature: sampling temperature of the token distribution (scheduler default 1.0).
            image, mask_image: editing inputs (PIL / numpy / torch); white mask pixels mark the region to
                regenerate. `image` alone with `strength` < 1 re-generates that fraction of all tokens.
            strength: fraction of the masked region's tokens that are regenerated (1 = all).
            generator: a torch.Generator, or one per image for per-sample reproducibility.
            output_type: "pil", "np" ((B, H, W, C) float in [0, 1]), "pt" ((B, C, H, W)) or "latent" ((B, N) ids).
            callback_on_step_end: called as `fn(pipe, step_index, timestep, {"sample_ids": ...})` after each step;
                it may return a dict replacing `sample_ids`.

        Returns:
            `ImagePipelineOutput` with `images`, or a tuple `(images,)` when `return_dict=False`.
        """
        # 1. Check inputs
        self.check_inputs(
            class_label, batch_size, num_images_per_prompt, num_inference_steps, guidance_scale, guidance_schedule,
            image, mask_image, strength, output_type, callback_on_step_end_tensor_inputs,
        )
        self._guidance_scale = guidance_scale if class_label is not None else 1.0
        device = self._execution_device
        if image is not None and batch_size is None and class_label is None:
            batch_size = len(self._image_sizes(image))

        # 2. Condition tokens
        condition_ids = self.prepare_condition_ids(class_label, batch_size, num_images_per_prompt, device)
        total = condition_ids.shape[0]
        if isinstance(generator, list) and len(generator) != total:
            raise ValueError(f"`generator` is a list of {len(generator)} generators for {total} images")

        # 3. Starting tokens
        sample_ids = self.prepare_latents(total, device, image, mask_image, strength, generator)

        num_masked_at_start = None
        if image is not None:  # editing: the schedule spans the tokens to regenerate, not the whole grid
            num_masked_at_start = (sample_ids == self.transformer.config.mask_token_id).sum(dim=1)

        # 4. Timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        self._num_timesteps = num_inference_steps

        # 5. Decoding loop
        for step_index, timestep in enumerate(self.progress_bar(self.scheduler.timesteps)):
            logits = self.predict_logits(sample_ids, condition_ids, self._guidance_at(step_index, guidance_schedule))
            sample_ids = self.scheduler.step(
                logits, step_index, sample_ids, generator=generator,
                choice_temperature=choice_temperature, temperature=temperature,
                num_masked_at_start=num_masked_at_start,
            ).prev_sample
            if callback_on_step_end is not None:
                available = {"sample_ids": sample_ids}
                tensors = {name: available[name] for name in (callback_on_step_end_tensor_inputs or [])}
                sample_ids = (callback_on_step_end(self, step_index, timestep, tensors) or {}).get(
                    "sample_ids", sample_ids
                )

        # 6. Decode
        images = sample_ids if output_type == "latent" else self.decode_tokens(sample_ids, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    def outpaint(
        self,
        image: PIL.Image.Image,
        direction: str | list[str] = "right",
        fraction: float = 0.25,
        **kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        """Extend `image` towards `direction` ("left" | "right" | "top" | "bottom", or several): the image is
        resized into the remaining part of the model-size canvas and the `fraction` of the canvas on each named
        side (rounded to whole tokens) is generated. Other arguments go to `__call__`."""
        directions = [direction] if isinstance(direction, str) else list(direction)
        unknown = [d for d in directions if d not in OUTPAINT_DIRECTIONS]
        if unknown:
            raise ValueError(f"`direction` must be among {OUTPAINT_DIRECTIONS}, got {unknown}")
        grid = self.transformer.config.token_grid_size
        pad = self._fraction_to_tokens(fraction, grid, max_tokens=grid - 1 if len(directions) == 1 else (grid - 1) // 2)
        padding = {side: (pad if side in directions else 0) for side in OUTPAINT_DIRECTIONS}
        return self._fill_border(image, padding, **kwargs)

    def uncrop(self, image: PIL.Image.Image, scale: float = 0.5, **kwargs: Any) -> ImagePipelineOutput | tuple:
        """Zoom out: `image` is shrunk to `scale` of the canvas side (whole tokens), centred, and the border is
        generated around it. Other arguments go to `__call__`."""
        if not 0.0 < scale < 1.0:
            raise ValueError(f"`scale` must be in (0, 1), got {scale}")
        grid = self.transformer.config.token_grid_size
        inner = max(1, round(grid * scale))
        if inner >= grid:
            raise ValueError(f"`scale` {scale} leaves no border on a {grid}x{grid} token grid")
        before = (grid - inner) // 2
        after = grid - inner - before
        return self._fill_border(image, {"left": before, "top": before, "right": after, "bottom": after}, **kwargs)

    @staticmethod
    def _fraction_to_tokens(fraction: float, grid: int, max_tokens: int) -> int:
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"`fraction` must be in (0, 1), got {fraction}")
        return min(max(1, round(grid * fraction)), max_tokens)

    def outpaint_canvas(
        self, image: PIL.Image.Image, padding: dict[str, int]
    ) -> tuple[PIL.Image.Image, PIL.Image.Image]:
        """Place `image` inside a model-size canvas leaving `padding` tokens per side; returns (canvas, mask),
        mask white where content is to be generated."""
        if not isinstance(image, PIL.Image.Image):
            raise TypeError(f"`image` must be a PIL image for outpainting, got {type(image).__name__}")
        config = self.transformer.config
        factor, size = self.vqvae.downsample_factor, config.image_size
        left, top = padding["left"] * factor, padding["top"] * factor
        width = size - left - padding["right"] * factor
        height = size - top - padding["bottom"] * factor
        canvas = PIL.Image.new("RGB", (size, size), (127, 127, 127))
        canvas.paste(image.convert("RGB").resize((width, height), PIL.Image.BICUBIC), (left, top))
        mask = PIL.Image.new("L", (size, size), 255)
        mask.paste(0, (left, top, left + width, top + height))
        return canvas, mask

    def _fill_border(self, image: PIL.Image.Image, padding: dict[str, int], **kwargs: Any):
        canvas, mask = self.outpaint_canvas(image, padding)
        return self(image=canvas, mask_image=mask, **kwargs)


__all__ = ["MagePipeline"]

"""`MagePipeline`: MAGE image generation (unconditional, class-conditional with guidance) and token-level editing
(inpainting, outpainting, uncropping, variations, editing of token grids) as a diffusers pipeline."""

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
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

from .image_processing_mage import MageImageProcessor
from .input_checks import check_integer_tensor, value_checks_enabled
from .modeling_mage import MageForMaskedImageModeling
from .modeling_vqgan import MageVQModel
from .scheduling_mage import MageScheduler

ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | list
GUIDANCE_SCHEDULES = ("constant", "linear")
OUTPAINT_DIRECTIONS = ("left", "right", "top", "bottom")
OUTPUT_TYPES = ("pil", "np", "pt", "latent")

# Written beside `model_index.json`: lets `DiffusionPipeline.from_pretrained(path, custom_pipeline="pipeline_mage",
# trust_remote_code=True)` load the folder in an interpreter that never imported mage_hf (the package must be
# installed: the file only imports it).
CUSTOM_PIPELINE_MODULE = "pipeline_mage"
CUSTOM_PIPELINE_SOURCE = '''"""MagePipeline from the installed `mage_hf` package (pip install mage_hf), for
`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipeline_mage", trust_remote_code=True)`."""

from mage_hf import MagePipeline

__all__ = ["MagePipeline"]
'''


class MagePipeline(DiffusionPipeline):
    r"""
    MAGE generation with iterative (MaskGIT) decoding of VQGAN tokens.

    Components: `vqvae` (`MageVQModel`, tokenizes and decodes), `transformer` (`MageForMaskedImageModeling`; its
    own tokenizer copy is not needed) and `scheduler` (`MageScheduler`, the unmasking rule).

    - unconditional: `pipe(batch_size=4)`; every sequence starts with the model's `fake_class_id`.
    - class-conditional (models with `num_condition_classes > 0`): `pipe(class_labels=[1, 7], guidance_scale=3.0)`
      (`class_label=1` is the same argument); classifier-free guidance `uncond + s * (cond - uncond)` from one
      batched forward per step, optionally ramped linearly over the steps (`guidance_schedule="linear"`, as in RCG).
    - editing: `pipe(image=..., mask_image=...)` regenerates the tokens whose patch touches the white part of the
      mask and keeps the others; `outpaint(...)` and `uncrop(...)` build such a canvas and mask; `pipe(image=...,
      strength=0.5)` re-generates part of the image (a variation).
    - token grids: `pipe(latents=ids)` starts from (B, N) token ids with `mask_token_id` where to generate (e.g. an
      `output_type="latent"` result with a region set to the mask id); the other tokens are kept exactly.

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
    _callback_tensor_inputs = ["latents"]

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
        self._compiled_decode_step = None

    @classmethod
    def from_masked_image_model(cls, model: MageForMaskedImageModeling, **scheduler_kwargs: Any) -> "MagePipeline":
        """Build a pipeline from a `MageForMaskedImageModeling` that holds its tokenizer: the VQGAN becomes
        `vqvae`, the transformer is a copy without it (weights shared in memory, saved once), and the scheduler
        gets the model's mask id (`scheduler_kwargs` such as `choice_temperature` go to `MageScheduler`)."""
        if model.mage.vqgan is None:
            raise ValueError("`model` has no tokenizer (include_vq_tokenizer=False): build the pipeline from parts")
        config = model.config.__class__.from_dict({**model.config.to_dict(), "include_vq_tokenizer": False})
        transformer = MageForMaskedImageModeling(config)
        weights = {k: v for k, v in model.state_dict().items() if not k.startswith("mage.vqgan.")}
        transformer.load_state_dict(weights, strict=True, assign=True)
        transformer.tie_weights()  # `assign` gave the tied projection its own Parameter object
        transformer.to(dtype=model.dtype).eval()
        scheduler = MageScheduler(mask_token_id=config.mask_token_id, **scheduler_kwargs)
        return cls(vqvae=model.mage.vqgan, transformer=transformer, scheduler=scheduler)

    def compile_decoding_step(self, **compile_kwargs: Any) -> "MagePipeline":
        """`torch.compile` the whole decoding step: the transformer, classifier-free guidance and the scheduler's
        tensor math (`decode_step`), `fullgraph=True` by default; returns the pipeline.

        The step has no host synchronisation and one graph serves every step (step index and guidance scale are
        tensors), so `mode="reduce-overhead"` (CUDA graphs) can replay it; randomness is drawn outside the graph
        from the generators, so the tokens equal eager decoding's for the same generators. A new batch size or
        `num_images_per_prompt` compiles again (guidance doubles the batch the transformer sees).
        """
        self._compiled_decode_step = torch.compile(self.decode_step, **{"fullgraph": True, **compile_kwargs})
        return self

    @property
    def decoding_step_is_compiled(self) -> bool:
        """Whether `compile_decoding_step` was applied."""
        return self._compiled_decode_step is not None

    def compile_transformer(self, **compile_kwargs: Any) -> "MagePipeline":
        """`torch.compile` the transformer in place (`nn.Module.compile`, so parameter names and
        `save_pretrained` are unchanged) and return the pipeline.

        The transformer is the part called once per decoding step; the VQGAN decode runs once per call and stays
        eager. `compile_kwargs` go to `torch.compile` (e.g. `mode="max-autotune"`, `dynamic=False`,
        `fullgraph=True`). The first call with a new batch shape compiles (classifier-free guidance doubles the
        batch the transformer sees). Compiled, the model skips its value checks; the pipeline checks its inputs
        once per call.
        """
        self.transformer.compile(**compile_kwargs)
        return self

    @property
    def transformer_is_compiled(self) -> bool:
        """Whether `compile_transformer` (or `transformer.compile()`) was applied."""
        return getattr(self.transformer, "_compiled_call_impl", None) is not None

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save as diffusers does, with `model_index.json` naming components `["mage_hf", "<Class>"]` (the
        package's public names, stable however its modules are organised) and `pipeline_mage.py`, for
        `DiffusionPipeline.from_pretrained(path, custom_pipeline="pipeline_mage", trust_remote_code=True)`."""
        super().save_pretrained(save_directory, **kwargs)
        index_path = Path(save_directory) / "model_index.json"
        index = json.loads(index_path.read_text())
        for name in ("vqvae", "transformer", "scheduler"):
            index[name] = ["mage_hf", type(getattr(self, name)).__name__]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        (Path(save_directory) / f"{CUSTOM_PIPELINE_MODULE}.py").write_text(CUSTOM_PIPELINE_SOURCE)

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
        """Class names (from the transformer's `id2label`) -> class indices (as DiT's `get_label_ids`)."""
        names = [label] if isinstance(label, str) else list(label)
        missing = [name for name in names if name not in self.labels]
        if missing:
            raise ValueError(f"`class_labels` names {missing} are not known; available: {sorted(self.labels)}")
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
        class_ids: list[int] | None,
        batch_size: int | None,
        num_images_per_prompt: int,
        num_inference_steps: int,
        guidance_scale: float,
        guidance_schedule: str,
        image,
        mask_image,
        strength: float,
        latents: torch.LongTensor | None,
        output_type: str,
        callback_on_step_end_tensor_inputs: list[str],
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
        if class_ids is not None and batch_size is not None:
            raise ValueError("pass `class_labels` (one image per label) or `batch_size`, not both")
        if guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be >= 0, got {guidance_scale}")
        if guidance_scale > 1.0 and class_ids is None:
            kind = "this model is unconditional" if config.num_condition_classes == 0 else "none were given"
            raise ValueError(
                "`guidance_scale` > 1 (classifier-free guidance) needs `class_labels`: it contrasts the class-"
                f"conditional and the unconditional prediction, and {kind}; use guidance_scale=1"
            )
        if guidance_schedule not in GUIDANCE_SCHEDULES:
            raise ValueError(f"`guidance_schedule` must be one of {GUIDANCE_SCHEDULES}, got {guidance_schedule!r}")
        if not isinstance(strength, (int, float)) or not 0.0 < strength <= 1.0:
            raise ValueError(f"`strength` must be in (0, 1], got {strength!r}")
        if mask_image is not None and image is None:
            raise ValueError("`mask_image` needs the `image` it applies to")
        if image is not None and mask_image is None and strength >= 1.0:
            raise ValueError(
                "`image` without `mask_image` needs `strength` < 1 (the fraction of the decoding that is re-run); "
                "for inpainting pass `mask_image`"
            )
        if strength < 1.0 and image is None:
            raise ValueError("`strength` < 1 applies to an `image`: pass one (or use `latents` to edit token grids)")
        if int(num_inference_steps * strength) < 1:
            raise ValueError(
                f"`strength` ({strength}) x `num_inference_steps` ({num_inference_steps}) runs no step: raise either"
            )
        if latents is not None:
            if image is not None:
                raise ValueError("pass `image` or `latents` as the starting point, not both")
            self._check_latents(latents)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}")
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` may only name {self._callback_tensor_inputs}, got {sorted(unknown)}"
            )

    def _check_latents(self, latents: torch.LongTensor) -> None:
        """(B, N) token ids: codebook ids, or `mask_token_id` where to generate."""
        config = self.transformer.config
        shape = f"(batch, {config.num_image_tokens})"
        check_integer_tensor("latents", latents, shape)
        if latents.ndim != 2 or latents.shape[1] != config.num_image_tokens:
            raise ValueError(f"`latents` must have shape {shape} (token ids), got {tuple(latents.shape)}")
        if value_checks_enabled():
            valid = (latents >= 0) & (latents < config.codebook_size) | (latents == config.mask_token_id)
            if not bool(valid.all()):
                raise ValueError(
                    f"`latents` must hold codebook ids in [0, {config.codebook_size}) or the mask id "
                    f"{config.mask_token_id}, got {sorted(set(latents[~valid].tolist()))[:8]}"
                )

    def _class_ids(self, class_labels) -> list[int]:
        """int / str / nested lists of either / numpy or torch array -> flat list of class indices, range-checked."""
        if isinstance(class_labels, torch.Tensor) and (class_labels.is_floating_point() or class_labels.dtype == torch.bool):
            raise TypeError(f"`class_labels` must hold integers, got dtype {class_labels.dtype}")
        if isinstance(class_labels, np.ndarray) and not np.issubdtype(class_labels.dtype, np.integer):
            raise TypeError(f"`class_labels` must hold integers, got dtype {class_labels.dtype}")
        if isinstance(class_labels, (torch.Tensor, np.ndarray)):
            class_labels = class_labels.reshape(-1).tolist()

        def flatten(item) -> list[int]:
            if isinstance(item, (list, tuple)):
                return [index for entry in item for index in flatten(entry)]
            if isinstance(item, str):
                return self.get_label_ids(item)
            if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
                return [int(item)]
            raise TypeError(f"`class_labels` entries must be int or str, got {type(item).__name__}")

        indices = flatten(class_labels)
        if not indices:
            raise ValueError("`class_labels` is empty")
        self.transformer.config.condition_token_id(torch.tensor(indices))  # range-checked there
        return indices

    def prepare_condition_ids(
        self, class_ids: list[int] | None, num_prompts: int, device: torch.device
    ) -> torch.LongTensor:
        """(P,) condition token ids: `codebook_size + class` for class-conditional prompts, else the unconditional
        `fake_class_id`."""
        config = self.transformer.config
        if class_ids is None:
            return torch.full((num_prompts,), config.fake_class_id, dtype=torch.long, device=device)
        return config.condition_token_id(torch.tensor(class_ids, dtype=torch.long, device=device))

    def _pixels(self, image: ImageInput) -> torch.Tensor:
        """Image input -> (B, C, S, S) float pixels in [0, 1] at the model size (resize + center crop)."""
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
        mask = self._pixels(mask_image).mean(dim=1, keepdim=True)
        factor = self.vqvae.downsample_factor
        return F.max_pool2d(mask, kernel_size=factor).flatten(1) > 0.5

    @staticmethod
    def _per_image(rows: torch.Tensor, num_prompts: int, num_images_per_prompt: int, name: str) -> torch.Tensor:
        """(P or 1, ...) per-prompt rows -> (P * num_images_per_prompt, ...), each row repeated in place."""
        if rows.shape[0] == 1 and num_prompts > 1:
            rows = rows.expand(num_prompts, *rows.shape[1:])
        if rows.shape[0] != num_prompts:
            raise ValueError(f"got {rows.shape[0]} {name} for {num_prompts} prompts (class labels or batch_size)")
        return rows.repeat_interleave(num_images_per_prompt, dim=0)

    def prepare_latents(
        self,
        num_prompts: int,
        num_images_per_prompt: int,
        device: torch.device,
        first_timestep: int,
        image: ImageInput | None = None,
        mask_image: ImageInput | None = None,
        latents: torch.LongTensor | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> tuple[torch.LongTensor, torch.LongTensor | None]:
        """Starting token ids (B, N), B = num_prompts * num_images_per_prompt, and how many tokens the schedule spans.

        All masked (the schedule spans all N tokens); or the given `latents`; or an image's tokens with its region
        (white `mask_image` patches, else all) masked as the scheduler's `add_noise` leaves it before the first step
        that is run (all of it at strength 1). The count per image is its masked (`latents`) or region tokens.
        """
        config = self.transformer.config
        total = num_prompts * num_images_per_prompt
        if latents is not None:
            latents = self._per_image(latents.to(device=device, dtype=torch.long), num_prompts, num_images_per_prompt, "latents")
            return latents, (latents == config.mask_token_id).sum(dim=1)
        if image is None:
            ids = torch.full((total, config.num_image_tokens), config.mask_token_id, dtype=torch.long, device=device)
            return ids, None
        tokens = self.vqvae.tokenize(self._pixels(image).to(device=device, dtype=self.vqvae.dtype))
        if mask_image is None:
            region = torch.ones_like(tokens, dtype=torch.bool)
        else:
            region = self.prepare_edit_mask(image, mask_image).to(device)
        tokens = self._per_image(tokens, num_prompts, num_images_per_prompt, "images")
        region = self._per_image(region, num_prompts, num_images_per_prompt, "images")
        latents = self.scheduler.add_noise(tokens, first_timestep, generator=generator, region=region)
        return latents, region.sum(dim=1)

    def _guidance_at(self, step_index: int, schedule: str) -> float:
        """Guidance scale of one step: constant, or ramped from 1 by the fraction of tokens known after the step."""
        if schedule == "constant":
            return self._guidance_scale
        ratio = (step_index + 1) / self.scheduler.num_inference_steps
        known_fraction = 1.0 - float(self.scheduler.mask_ratio(ratio))
        return 1.0 + (self._guidance_scale - 1.0) * known_fraction

    def predict_logits(
        self, latents: torch.LongTensor, condition_ids: torch.LongTensor, guidance: float | torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, N) ids -> (B, N, codebook_size) float32 logits. With a `guidance` scale (classifier-free guidance),
        the conditional and unconditional rows run in one forward: `uncond + guidance * (cond - uncond)`."""
        config = self.transformer.config
        input_ids = torch.cat([condition_ids[:, None], latents], dim=1)
        if guidance is not None:
            unconditional = input_ids.clone()
            unconditional[:, 0] = config.fake_class_id
            input_ids = torch.cat([input_ids, unconditional])
        logits = self.transformer(input_ids=input_ids).logits[:, 1:, : config.codebook_size].float()
        if guidance is not None:
            conditional, unconditional = logits.chunk(2)
            logits = unconditional + guidance * (conditional - unconditional)
        return logits

    def decode_step(
        self,
        latents: torch.LongTensor,
        condition_ids: torch.LongTensor,
        step_index: torch.Tensor,
        noise: torch.Tensor,
        guidance: torch.Tensor | None = None,
        choice_temperature: float | None = None,
        sampling_temperature: float | None = None,
        num_masked_at_start: torch.LongTensor | None = None,
    ) -> torch.LongTensor:
        """One decoding step from drawn `noise` (see `MageScheduler.step_with_noise`): (B, N) ids -> (B, N) ids.
        `step_index` and `guidance` (None: no guidance) are 0-d tensors, so `compile_decoding_step` makes one graph
        for every step."""
        logits = self.predict_logits(latents, condition_ids, guidance)
        return self.scheduler.step_with_noise(
            logits, step_index, latents, noise, choice_temperature, sampling_temperature, num_masked_at_start
        )[0]

    @torch.no_grad()
    def decode_tokens(self, latents: torch.LongTensor, output_type: str = "pil"):
        """(B, N) codebook ids -> images clipped to [0, 1] as a PIL list, (B, H, W, C) numpy or (B, C, H, W) torch."""
        images = self.vqvae.decode_indices(latents)
        return self.image_processor.postprocess(images, output_type=output_type)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | list | torch.Tensor | None = None,
        batch_size: int | None = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 12,
        guidance_scale: float = 1.0,
        guidance_schedule: str = "constant",
        choice_temperature: float | None = None,
        sampling_temperature: float | None = None,
        image: ImageInput | None = None,
        mask_image: ImageInput | None = None,
        strength: float = 1.0,
        latents: torch.LongTensor | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, int, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        class_label: int | str | list | torch.Tensor | None = None,
    ) -> ImagePipelineOutput | tuple:
        r"""
        Generate or edit images.

        Args:
            class_labels: class index, class name (via the transformer's `id2label`), or a (nested) list / tensor of
                them: one image per entry, times `num_images_per_prompt`. `None` for unconditional generation.
            batch_size: number of unconditional images (default 1; or the number of input images / latents).
            num_images_per_prompt: images per class label (or per unconditional slot, input image or latents row).
            num_inference_steps: decoding iterations T (12 in the original; the paper's FID uses 20), 1..N.
            guidance_scale: classifier-free guidance scale (1 = none); > 1 needs `class_labels`.
            guidance_schedule: "constant", or "linear" (ramps from 1 as tokens become known, as in RCG).
            choice_temperature: Gumbel temperature of the re-masking choice (scheduler default 4.5; FID: 6.0).
            sampling_temperature: temperature of the token distribution (scheduler default 1.0).
            image, mask_image: editing inputs (PIL / numpy / torch); white mask pixels mark the region to
                regenerate, all other tokens are kept exactly; an all-black mask keeps its image as it is.
            strength: as in aMUSEd's img2img: only the last `int(T * strength)` steps run, starting from the image
                with the fraction of its region (default: the whole image) that the schedule leaves masked at that
                step. 1 regenerates the whole region.
            latents: (B, N) starting token ids, `mask_token_id` where to generate (the others are kept; the schedule
                spans the masked count of each row). Exclusive with `image`.
            generator: a torch.Generator, or one per image for per-sample reproducibility.
            output_type: "pil", "np" ((B, H, W, C) float in [0, 1]), "pt" ((B, C, H, W)) or "latent" ((B, N) ids).
            callback_on_step_end: `fn(pipe, i, timestep, {"latents": ...})` after each step (or a diffusers
                `PipelineCallback` / `MultiPipelineCallbacks`); a returned `"latents"` replaces the current ids.
            callback_on_step_end_tensor_inputs: tensors passed to the callback (default `["latents"]`).
            class_label: the same as `class_labels` (pass one of them).

        Returns:
            `ImagePipelineOutput` with `images`, or a tuple `(images,)` when `return_dict=False`.
        """
        # 1. Check inputs
        if class_label is not None:
            if class_labels is not None:
                raise ValueError("pass `class_labels` or its alias `class_label`, not both")
            class_labels = class_label
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if callback_on_step_end_tensor_inputs is None:
            callback_on_step_end_tensor_inputs = ["latents"]
        class_ids = None if class_labels is None else self._class_ids(class_labels)
        self.check_inputs(
            class_ids, batch_size, num_images_per_prompt, num_inference_steps, guidance_scale, guidance_schedule,
            image, mask_image, strength, latents, output_type, callback_on_step_end_tensor_inputs,
        )
        self._guidance_scale = guidance_scale
        device = self._execution_device
        if class_ids is not None:
            num_prompts = len(class_ids)
        elif batch_size is not None:
            num_prompts = batch_size
        elif image is not None:
            num_prompts = len(self._image_sizes(image))
        else:
            num_prompts = 1 if latents is None else latents.shape[0]
        total = num_prompts * num_images_per_prompt
        if isinstance(generator, list) and len(generator) != total:
            raise ValueError(f"`generator` is a list of {len(generator)} generators for {total} images")

        # 2. Condition tokens, one per image
        condition_ids = self.prepare_condition_ids(class_ids, num_prompts, device)
        condition_ids = condition_ids.repeat_interleave(num_images_per_prompt)

        # 3. Timesteps (T - 1 .. 0); `strength` < 1 runs only the last int(T * strength) of them
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        first_step = num_inference_steps - int(num_inference_steps * strength)
        timesteps = self.scheduler.timesteps[first_step:].tolist()  # host ints: no device sync in the loop
        self._num_timesteps = len(timesteps)

        # 4. Starting tokens
        latents, num_masked_at_start = self.prepare_latents(
            num_prompts, num_images_per_prompt, device, timesteps[0], image, mask_image, latents, generator
        )

        # 5. Decoding loop: the randomness is drawn eagerly (per-image generators), the step itself is tensor
        # operations only (no host sync; one graph for every step when compiled)
        step_indices = torch.arange(num_inference_steps, device=device)
        guidances = torch.tensor(
            [self._guidance_at(index, guidance_schedule) for index in range(num_inference_steps)], device=device
        )
        decode_step = self._compiled_decode_step or self.decode_step
        for i, timestep in enumerate(self.progress_bar(timesteps)):
            step_index = first_step + i
            noise = self.scheduler.draw_noise(tuple(latents.shape), generator, device)
            latents = decode_step(
                latents, condition_ids, step_indices[step_index], noise,
                guidances[step_index] if self.do_classifier_free_guidance else None,
                choice_temperature, sampling_temperature, num_masked_at_start,
            )
            if callback_on_step_end is not None:
                available = {"latents": latents}
                callback_kwargs = {name: available[name] for name in callback_on_step_end_tensor_inputs}
                callback_outputs = callback_on_step_end(self, i, timestep, callback_kwargs) or {}
                latents = callback_outputs.pop("latents", latents)

        # 6. Decode
        images = latents if output_type == "latent" else self.decode_tokens(latents, output_type)
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

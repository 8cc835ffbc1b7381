"""The model side of the demo: every request its tabs make, as plain Python (no gradio), with the checks and the
messages a user sees.

A request that decodes tokens is a generator: it yields a `DecodingStep` (the current token grid rendered, unknown
tokens grey) after each MaskGIT step, then one `Samples`. `run_to_end` keeps only the result.

Image i of a request uses `torch.Generator().manual_seed(seed + i)`, as `mage-hf generate` does, so the Generate
tab's images are exactly those of the command line `generate_command` prints.
"""

from __future__ import annotations

import functools
import queue
import shlex
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from ..default_model import DEFAULT_MODEL, DEFAULT_PIPELINE
from ..sampling import generate_images, image_grid
from ..pipeline_mage import MagePipeline
from .examples import Example, bank_examples

UNCONDITIONAL = "unconditional"
MAX_IMAGES = 16  # images per request: keeps one request short on a CPU Space
MAX_INPUT_SIDE = 4096  # px per side of an input image (larger uploads are refused, not silently shrunk)
DISPLAY_SIDE = 256  # small images are shown enlarged (nearest) to about this side, as `mage-hf generate` writes them
DEFAULT_GUIDANCE = 2.0  # `mage-hf generate`'s default for class-conditional models
UNKNOWN_GREY = 0.5  # pixel value of the patches whose token is still unknown in the live view
NUM_NEIGHBOURS = 8
_FEATURE_BATCH = 64
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L")
_GRAY_MODES = ("1", "L", "LA", "F", *_SIXTEEN_BIT_MODES)


class DemoInputError(ValueError):
    """A request the demo refuses; the message is written for the person using it."""


@dataclass(frozen=True)
class SamplingOptions:
    """What every generating tab asks: the class, how many images, and the decoding settings."""

    class_name: str = UNCONDITIONAL
    num_images: int = 4
    num_inference_steps: int = 12
    guidance_scale: float = 1.0
    choice_temperature: float = 4.5
    seed: int = 0


@dataclass
class DecodingStep:
    """The token grid after step `step` of `total`, rendered as one image (unknown tokens grey)."""

    step: int
    total: int
    image: PIL.Image.Image


@dataclass
class Samples:
    """A request's result: display-size images, the seed of each, their (B, N) token ids, for edits the input as
    the model starts from it (`before`), and a JSON-able `details` dict."""

    images: list[PIL.Image.Image]
    seeds: list[int]
    tokens: torch.LongTensor
    before: PIL.Image.Image | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Neighbour:
    """An example image of the bank, its class name and its cosine similarity to the query."""

    image: PIL.Image.Image
    label: str
    similarity: float


class _Stopped(Exception):
    """Raised inside the pipeline's callback when the consumer of a live decoding went away."""


def run_to_end(events: Iterator[DecodingStep | Samples]) -> Samples:
    """Consume a live decoding and return its `Samples`."""
    result = None
    for result in events:
        pass
    return result


def prepare_image(image: PIL.Image.Image | str | Path) -> tuple[PIL.Image.Image, list[str]]:
    """An uploaded image (or its path) -> an RGB PIL image, and notes for the user about what was converted.

    Refuses files PIL cannot read and images over `MAX_INPUT_SIDE` px a side."""
    name = Path(image).name if isinstance(image, (str, Path)) else "the image"
    try:
        if isinstance(image, (str, Path)):
            image = PIL.Image.open(image)  # reads the header only
        if not isinstance(image, PIL.Image.Image):
            raise DemoInputError(f"Expected an image, got {type(image).__name__}.")
        width, height = image.size
        if max(width, height) > MAX_INPUT_SIDE:
            raise DemoInputError(f"The image is {width}x{height} px; this demo takes images up to {MAX_INPUT_SIDE} "
                                 "px a side: downscale it first.")
        if min(width, height) < 1:
            raise DemoInputError("The image is empty (0 px wide or high).")
        image.load()
    except (OSError, PIL.Image.DecompressionBombError) as error:
        raise DemoInputError(f"{name} is not an image the demo can read: use a PNG, JPEG, WebP or BMP "
                             "picture.") from error
    notes = []
    if image.mode in _GRAY_MODES:
        notes.append(f"Grayscale image ({image.mode}): its gray level was copied to red, green and blue.")
        if image.mode in _SIXTEEN_BIT_MODES:  # 16-bit levels; convert("RGB") would clip them at 255
            image = PIL.Image.fromarray((np.asarray(image, dtype=np.float64) / 256).clip(0, 255).astype(np.uint8))
    elif image.mode != "RGB":
        transparent = "A" in image.mode and image.getchannel("A").getextrema()[0] < 255
        if transparent or "A" not in image.mode:
            notes.append(f"{image.mode} image converted to RGB" + (" (transparency dropped)." if transparent else "."))
    return image.convert("RGB"), notes


class DemoEngine:
    """The pipeline (`MagePipeline`) and the feature model (`AutoModel` + `AutoImageProcessor`) behind the demo.

    Example:
    ```python
    >>> engine = DemoEngine()                       # the embedded mage-mnist
    >>> samples = run_to_end(engine.generate(SamplingOptions(class_name="7", num_images=2, guidance_scale=2.0)))
    >>> [image.size for image in samples.images], samples.seeds
    ([(256, 256), (256, 256)], [0, 1])
    ```
    """

    def __init__(self, pipeline: str | Path = DEFAULT_PIPELINE, model: str | Path = DEFAULT_MODEL,
                 device: str | torch.device = "cpu", bank: Callable[[], list[Example]] = bank_examples):
        from transformers import AutoImageProcessor, AutoModel

        self.pipeline_dir, self.model_dir = str(pipeline), str(model)
        self.device = torch.device(device)
        self.pipe = MagePipeline.from_pretrained(self.pipeline_dir).to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.model = AutoModel.from_pretrained(self.model_dir).to(self.device).eval()
        self.processor = AutoImageProcessor.from_pretrained(self.model_dir)
        config = self.pipe.transformer.config
        self.image_size = config.image_size
        self.display_scale = max(1, DISPLAY_SIDE // config.image_size)  # `mage-hf generate --scale`'s default
        self.live_scale = max(1, self.display_scale // 2)  # the live view: half size, a frame per step
        self.class_names = self._class_names(config)
        self._load_bank = bank
        self._bank: tuple[list[Example], torch.Tensor] | None = None
        self._pipe_lock = threading.Lock()  # the pipeline keeps per-call state (scheduler timesteps, guidance)
        self._bank_lock = threading.Lock()

    # ---- what the UI offers

    @staticmethod
    def _class_names(config) -> list[str]:
        """One name per class index: the first of `id2label`'s comma-separated names, else the index."""
        names = [str(i) for i in range(config.num_condition_classes)]
        if len(config.id2label or {}) == config.num_condition_classes:
            names = [str(config.id2label[i]).split(",")[0].strip() for i in range(config.num_condition_classes)]
        return names

    @property
    def is_conditional(self) -> bool:
        return bool(self.class_names)

    @property
    def class_choices(self) -> list[str]:
        """What the class picker offers: "unconditional", then the model's classes."""
        return [UNCONDITIONAL, *self.class_names]

    @property
    def max_steps(self) -> int:
        return self.pipe.transformer.config.num_image_tokens

    @property
    def default_options(self) -> SamplingOptions:
        return SamplingOptions(
            class_name=self.class_names[0] if self.is_conditional else UNCONDITIONAL,
            guidance_scale=DEFAULT_GUIDANCE if self.is_conditional else 1.0,
            choice_temperature=float(self.pipe.scheduler.config.choice_temperature),
        )

    @property
    def uses_default_pipeline(self) -> bool:
        return Path(self.pipeline_dir).resolve() == Path(DEFAULT_PIPELINE).resolve()

    def enlarge(self, image: PIL.Image.Image, scale: int | None = None) -> PIL.Image.Image:
        """Model-size image -> display size (nearest: every model pixel becomes a `scale` square, by default
        `display_scale`)."""
        scale = scale or self.display_scale
        return image if scale == 1 else image.resize((image.width * scale, image.height * scale), PIL.Image.NEAREST)

    # ---- checks

    def class_index(self, class_name: str) -> int | None:
        """Picker value -> class index (None for unconditional), or a `DemoInputError` naming the choices."""
        if class_name == UNCONDITIONAL:
            return None
        if not self.is_conditional:
            raise DemoInputError(f"This model is unconditional: it takes no class (got {class_name!r}); "
                                 f"choose {UNCONDITIONAL!r}.")
        if class_name not in self.class_names:
            raise DemoInputError(f"Unknown class {class_name!r}; this model's classes are {self.class_names}.")
        return self.class_names.index(class_name)

    def check_options(self, options: SamplingOptions) -> int | None:
        """Validate `options` (messages for people; the pipeline checks the rest) and return the class index."""
        index = self.class_index(options.class_name)
        if not isinstance(options.num_images, int) or not 1 <= options.num_images <= MAX_IMAGES:
            raise DemoInputError(f"Number of images must be between 1 and {MAX_IMAGES}, got {options.num_images}.")
        if not isinstance(options.seed, int) or not 0 <= options.seed < 2**63 - MAX_IMAGES:
            raise DemoInputError(f"The seed must be a whole number >= 0, got {options.seed}.")
        if options.guidance_scale > 1.0 and index is None:
            raise DemoInputError("Guidance above 1 needs a class (it contrasts the class-conditional and the "
                                 "unconditional prediction): pick a class, or set guidance to 1.")
        if options.choice_temperature < 0:
            raise DemoInputError(f"The choice temperature must be >= 0, got {options.choice_temperature}.")
        return index

    # ---- live decoding

    def _patches(self, token_mask: torch.BoolTensor) -> torch.BoolTensor:
        """(B, N) per-token flags -> (B, 1, H, W) per-pixel flags."""
        grid, factor = self.pipe.transformer.config.token_grid_size, self.pipe.vqvae.downsample_factor
        flags = token_mask.view(-1, 1, grid, grid)
        return flags.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)

    def render_tokens(self, tokens: torch.LongTensor, scale: int | None = None) -> PIL.Image.Image:
        """(B, N) token ids, `mask_token_id` where unknown -> one image: the known tokens decoded, the patches of
        unknown ones grey, the B images in a grid, enlarged `scale` times (default `display_scale`)."""
        unknown = tokens == self.pipe.transformer.config.mask_token_id
        pixels = self.pipe.decode_tokens(tokens.masked_fill(unknown, 0), "pt")  # any code: painted over below
        pixels = pixels.masked_fill(self._patches(unknown).to(pixels.device), UNKNOWN_GREY)
        return self.enlarge(image_grid(self.pipe.image_processor.postprocess(pixels, output_type="pil")), scale)

    def _decode_live(self, call: Callable[[Callable], torch.LongTensor]) -> Iterator[DecodingStep]:
        """Run `call(callback_on_step_end)` (a pipeline call returning (B, N) ids) in a worker thread; yield a
        `DecodingStep` after each step and return the ids. Closing the generator stops the decoding at the next
        step."""
        events: queue.Queue = queue.Queue()
        stopped = threading.Event()

        def on_step_end(pipe, index, timestep, tensors):
            if stopped.is_set():
                raise _Stopped()
            frame = self.render_tokens(tensors["latents"], self.live_scale)
            events.put(DecodingStep(index + 1, pipe.num_timesteps, frame))
            return {}

        def work():
            try:
                with self._pipe_lock:
                    events.put(("done", call(on_step_end)))
            except BaseException as error:  # noqa: BLE001 - handed to the consumer, which re-raises it
                events.put(("failed", error))

        threading.Thread(target=work, name="mage-demo-decoding", daemon=True).start()
        try:
            while True:
                event = events.get()
                if isinstance(event, DecodingStep):
                    yield event
                elif event[0] == "failed":
                    raise event[1]
                else:
                    return event[1]
        finally:
            stopped.set()

    def _samples(self, tokens: torch.LongTensor, options: SamplingOptions, before: PIL.Image.Image | None = None,
                 **details: Any) -> Samples:
        images = [self.enlarge(image) for image in self.pipe.decode_tokens(tokens, "pil")]
        seeds = [options.seed + i for i in range(len(images))]
        details = {"class": options.class_name, "seeds": seeds, "tokens": tokens.tolist(), **details}
        return Samples(images=images, seeds=seeds, tokens=tokens, before=before, details=details)

    def _step_kwargs(self, options: SamplingOptions) -> dict[str, Any]:
        return {"num_inference_steps": options.num_inference_steps, "guidance_scale": options.guidance_scale,
                "choice_temperature": options.choice_temperature, "output_type": "latent"}

    # ---- the tabs

    def generate(self, options: SamplingOptions) -> Iterator[DecodingStep | Samples]:
        """Sample `options.num_images` images (of one class, or unconditional), as `generate_command` would."""
        index = self.check_options(options)
        labels = None if index is None else [index] * options.num_images

        def call(callback):
            return generate_images(self.pipe, options.num_images, None, options.seed, class_labels=labels,
                                   generator_device=self.device, callback_on_step_end=callback,
                                   **self._step_kwargs(options))

        tokens = yield from self._decode_live(call)
        yield self._samples(tokens, options)

    def generate_command(self, options: SamplingOptions) -> str:
        """The `mage-hf generate` command line whose `--output-dir` PNGs are the images `generate(options)` gives."""
        index = self.check_options(options)
        words = ["mage-hf", "generate"]
        if not self.uses_default_pipeline:
            words += ["--pipeline", self.pipeline_dir]
        if index is not None:
            words += ["--class-label", str(index), "--guidance-scale", repr(float(options.guidance_scale))]
        words += ["--num-images", str(options.num_images), "--num-inference-steps", str(options.num_inference_steps),
                  "--choice-temperature", repr(float(options.choice_temperature)), "--seed", str(options.seed),
                  "--output-dir", "samples"]
        return shlex.join(words)

    def _edit(self, options: SamplingOptions, run: Callable, before: PIL.Image.Image | None = None,
              **details: Any) -> Iterator[DecodingStep | Samples]:
        """Shared by the editing requests: `run(**kwargs)` is a pipeline call on the input image."""
        index = self.check_options(options)
        generators = [torch.Generator(self.device).manual_seed(options.seed + i) for i in range(options.num_images)]
        kwargs = {"class_labels": None if index is None else [index], "num_images_per_prompt": options.num_images,
                  "generator": generators, **self._step_kwargs(options)}
        tokens = yield from self._decode_live(lambda callback: run(callback_on_step_end=callback, **kwargs).images)
        yield self._samples(tokens, options, before, **details)

    @torch.no_grad()
    def input_tokens(self, image: PIL.Image.Image) -> torch.LongTensor:
        """(1, N) token ids of `image` as the pipeline sees it (resized and cropped to the model size)."""
        pixels = self.pipe.image_processor(image, return_tensors="pt")["pixel_values"]
        return self.pipe.vqvae.tokenize(pixels.to(self.device, self.pipe.vqvae.dtype))

    def inpaint(self, image: PIL.Image.Image, mask: PIL.Image.Image,
                options: SamplingOptions) -> Iterator[DecodingStep | Samples]:
        """Regenerate the tokens whose patch touches a white pixel of `mask` (same size as `image`); the others are
        kept exactly. `before` shows the kept tokens, the regenerated ones grey."""
        if mask.size != image.size:
            mask = mask.resize(image.size, PIL.Image.NEAREST)
        region = self.pipe.prepare_edit_mask(image, mask).to(self.device)
        if not bool(region.any()):
            raise DemoInputError("The mask is empty: paint over the part of the image to regenerate "
                                 "(or choose outpaint / uncrop).")
        start = self.input_tokens(image).masked_fill(region, self.pipe.transformer.config.mask_token_id)
        before = self.render_tokens(start)
        return self._edit(options, functools.partial(self.pipe, image=image, mask_image=mask), before,
                          region=region[0].int().tolist(), regenerated_tokens=int(region.sum()))

    def outpaint(self, image: PIL.Image.Image, directions: list[str], fraction: float,
                 options: SamplingOptions) -> Iterator[DecodingStep | Samples]:
        """Extend `image` towards `directions` by `fraction` of the canvas (`MagePipeline.outpaint`)."""
        if not directions:
            raise DemoInputError("Pick at least one direction to outpaint towards.")
        run = functools.partial(self.pipe.outpaint, image, direction=list(directions), fraction=fraction)
        return self._edit(options, run, directions=list(directions), fraction=fraction)

    def uncrop(self, image: PIL.Image.Image, scale: float,
               options: SamplingOptions) -> Iterator[DecodingStep | Samples]:
        """Shrink `image` to `scale` of the canvas and generate the border around it (`MagePipeline.uncrop`)."""
        return self._edit(options, functools.partial(self.pipe.uncrop, image, scale=scale), scale=scale)

    def variations(self, image: PIL.Image.Image, strength: float,
                   options: SamplingOptions) -> Iterator[DecodingStep | Samples]:
        """Re-run the last `int(T * strength)` decoding steps from `image`'s tokens (aMUSEd-style strength)."""
        return self._edit(options, functools.partial(self.pipe, image=image, strength=strength), strength=strength)

    # ---- features

    @torch.no_grad()
    def features(self, images: list[PIL.Image.Image]) -> torch.Tensor:
        """(len(images), D) L2-normalised pooled encoder features (`pooler_output`, else the mean token)."""
        rows = []
        for start in range(0, len(images), _FEATURE_BATCH):
            inputs = self.processor(images=images[start:start + _FEATURE_BATCH], return_tensors="pt")
            output = self.model(**inputs.to(self.device))
            pooled = getattr(output, "pooler_output", None)
            rows.append(output.last_hidden_state.mean(dim=1) if pooled is None else pooled)
        return F.normalize(torch.cat(rows).float(), dim=-1)

    def bank(self) -> tuple[list[Example], torch.Tensor]:
        """The example digits searched by `neighbours`, with their features (computed on first use)."""
        with self._bank_lock:
            if self._bank is None:
                examples = self._load_bank()
                self._bank = (examples, self.features([example.image for example in examples]))
            return self._bank

    def neighbours(self, image: PIL.Image.Image, k: int = NUM_NEIGHBOURS) -> tuple[list[Neighbour], dict[str, float]]:
        """The `k` bank examples most similar to `image` (cosine of pooled features), best first, and the share
        of each class among them."""
        examples, bank_features = self.bank()
        if not isinstance(k, int) or not 1 <= k <= len(examples):
            raise DemoInputError(f"The number of neighbours must be between 1 and {len(examples)}, got {k}.")
        similarity = bank_features @ self.features([image])[0]
        values, indices = similarity.topk(k)
        found = [Neighbour(self.enlarge(examples[i].image), examples[i].label, float(v))
                 for v, i in zip(values.tolist(), indices.tolist())]
        votes = Counter(neighbour.label for neighbour in found)
        return found, {label: count / k for label, count in votes.most_common()}


__all__ = [
    "DEFAULT_GUIDANCE",
    "MAX_IMAGES",
    "MAX_INPUT_SIDE",
    "UNCONDITIONAL",
    "DecodingStep",
    "DemoEngine",
    "DemoInputError",
    "Neighbour",
    "Samples",
    "SamplingOptions",
    "prepare_image",
    "run_to_end",
]

"""The gradio app of `mage-hf demo` and of the Space: four tabs over one `DemoEngine`.

Generate (class, seeds, a live view of the decoding, the equivalent `mage-hf generate` command), Inpaint /
outpaint (brush mask, outpaint, uncrop; before and after), Variations (`strength`) and Features (nearest example
digits by the encoder's pooled features). Every endpoint has an API name (`/generate`, `/inpaint`, `/variations`,
`/neighbours`) for `gradio_client`. Refused requests come back as messages (`gr.Error`), never as tracebacks.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import tempfile
from collections.abc import Callable, Iterator

# Before gradio is imported: no telemetry and no version check (the demo must start offline).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402

from .engine import (  # noqa: E402
    DEFAULT_GUIDANCE,
    MAX_IMAGES,
    UNCONDITIONAL,
    DecodingStep,
    DemoEngine,
    DemoInputError,
    Samples,
    SamplingOptions,
    prepare_image,
)
from .examples import picker_examples, write_examples  # noqa: E402

logger = logging.getLogger(__name__)

BRUSH, OUTPAINT, UNCROP = "brush mask", "outpaint", "uncrop"
DIRECTIONS = ["left", "right", "top", "bottom"]
MAX_UPLOAD = "20mb"
LIVE_HEIGHT = 300  # px of the live decoding views
QUEUE_SIZE = 64  # waiting requests before new ones are turned away with a "queue full" message
PIPELINE_QUEUE, FEATURES_QUEUE = "mage-pipeline", "mage-features"  # one request at a time on each model
NOT_AN_IMAGE = "This file is not an image the demo can read: use a PNG, JPEG, WebP or BMP picture."


def readable_uploads(component: gr.components.Component) -> gr.components.Component:
    """Make an image component answer an unreadable upload with a message (its `preprocess` opens the file with
    PIL, which would fail with a traceback). Wraps the instance's method: a subclass would make gradio write a
    `.pyi` stub beside this module."""
    preprocess = component.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except (OSError, PIL.Image.DecompressionBombError) as error:
            raise gr.Error(NOT_AN_IMAGE, print_exception=False) from error

    component.preprocess = checked
    return component


def image_input(elem_id: str) -> gr.Image:
    """An image upload whose handler gets the file's path (and `_load` checks it) in the file's own mode."""
    return readable_uploads(gr.Image(type="filepath", image_mode=None, sources=("upload", "clipboard"), label="Image",
                                     elem_id=elem_id))


def user_facing(fn: Callable) -> Callable:
    """Turn the errors of a handler (plain or generator) into `gr.Error` messages: a refused input
    (`ValueError` / `TypeError`, e.g. from the pipeline's checks) shows its own message, anything else a short
    one (the traceback goes to the server log only)."""

    def translate(error: Exception) -> gr.Error:
        if isinstance(error, gr.Error):
            return error
        if isinstance(error, (ValueError, TypeError)):
            return gr.Error(str(error), print_exception=False)
        logger.exception("demo request failed")
        return gr.Error(f"Something went wrong on the server ({type(error).__name__}: {error}).", print_exception=False)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - every error becomes a message
                raise translate(error) from error
    else:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - every error becomes a message
                raise translate(error) from error
    return wrapper


def _whole(value, name: str) -> int:
    """A slider / number value that must be a whole number -> int."""
    if value is None or float(value) != int(float(value)):
        raise DemoInputError(f"{name} must be a whole number, got {value!r}.")
    return int(float(value))


def _load(image) -> PIL.Image.Image:
    """An uploaded image -> RGB, with a warning in the UI for what was converted."""
    if image is None:
        raise DemoInputError("Upload an image or pick an example first.")
    image, notes = prepare_image(image)
    for note in notes:
        gr.Warning(note)
    return image


def editor_image_and_mask(value: dict | None) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """An ImageEditor value -> (RGB image, L mask): a pixel is in the mask (white) where some layer is painted,
    i.e. not transparent and not black (so a white-on-black mask passed as a layer works too)."""
    if not value or value.get("background") is None:
        raise DemoInputError("Upload an image or pick an example first.")
    image = _load(value["background"])
    painted = np.zeros((image.height, image.width), dtype=bool)
    for layer in value.get("layers") or []:
        rgba = np.asarray(layer.convert("RGBA").resize(image.size, PIL.Image.NEAREST))
        painted |= (rgba[..., 3] > 0) & (rgba[..., :3].max(axis=-1) > 0)
    return image, PIL.Image.fromarray(painted.astype(np.uint8) * 255, mode="L")


@dataclasses.dataclass
class SamplingControls:
    """The class, image count and decoding settings that every generating tab shows."""

    class_name: gr.Dropdown
    num_images: gr.Slider
    steps: gr.Slider
    guidance: gr.Slider
    temperature: gr.Slider
    seed: gr.Number

    @property
    def inputs(self) -> list:
        return [self.class_name, self.num_images, self.steps, self.guidance, self.temperature, self.seed]

    @staticmethod
    def options(class_name, num_images, steps, guidance, temperature, seed) -> SamplingOptions:
        return SamplingOptions(class_name=class_name, num_images=_whole(num_images, "Number of images"),
                               num_inference_steps=_whole(steps, "Steps"), guidance_scale=float(guidance),
                               choice_temperature=float(temperature), seed=_whole(seed, "Seed"))


def sampling_controls(engine: DemoEngine, num_images: int, class_label: str = "Class",
                      conditional: bool = True) -> SamplingControls:
    """The controls, defaulting to the model's first class (`conditional`) or to unconditional decoding."""
    defaults = engine.default_options
    if not conditional:
        defaults = dataclasses.replace(defaults, class_name=UNCONDITIONAL, guidance_scale=1.0)
    class_name = gr.Dropdown(engine.class_choices, value=defaults.class_name, label=class_label,
                             interactive=engine.is_conditional)
    count = gr.Slider(1, MAX_IMAGES, value=num_images, step=1, label="Number of images")
    with gr.Accordion("Decoding settings", open=False):
        steps = gr.Slider(1, engine.max_steps, value=defaults.num_inference_steps, step=1,
                          label="Steps (MaskGIT iterations)")
        guidance = gr.Slider(0.0, 8.0, value=defaults.guidance_scale, step=0.1, visible=engine.is_conditional,
                             label="Guidance (classifier-free; 1 = none, needs a class above 1)")
        temperature = gr.Slider(0.0, 10.0, value=defaults.choice_temperature, step=0.1,
                                label="Choice temperature (randomness of which tokens are kept each step)")
    seed = gr.Number(value=defaults.seed, precision=0, minimum=0, label="Seed (image i uses seed + i)")

    def follow_class(name, scale):  # guidance only exists with a class: switch it off and back on
        if name == UNCONDITIONAL:
            return 1.0
        return scale if scale > 1.0 else DEFAULT_GUIDANCE

    class_name.change(follow_class, [class_name, guidance], guidance, queue=False, api_visibility="private")
    return SamplingControls(class_name, count, steps, guidance, temperature, seed)


def _gallery(samples: Samples) -> list[tuple[PIL.Image.Image, str]]:
    return [(image, f"{samples.details['class']} · seed {seed}") for image, seed in zip(samples.images, samples.seeds)]


def _stream(events: Iterator[DecodingStep | Samples], progress, finish: Callable[[Samples], tuple], count: int):
    """Yield (live image, gr.skip() * (count - 1)) per decoding step, then (last live image, *finish(samples))."""
    live = None
    for event in events:
        if isinstance(event, DecodingStep):
            live = event.image
            progress((event.step, event.total), desc="decoding", unit="steps")
            yield (live, *[gr.skip()] * (count - 1))
        else:
            yield (live, *finish(event))


def mode_options(how: str) -> tuple:
    """Show the outpaint settings in outpaint mode, the uncrop one in uncrop mode."""
    return gr.update(visible=how == OUTPAINT), gr.update(visible=how == OUTPAINT), gr.update(visible=how == UNCROP)


def _example_files(engine: DemoEngine) -> list[str]:
    """The held-out digits as PNGs (enlarged to display size, so the brush has room), in a fresh folder."""
    return write_examples(picker_examples(), tempfile.mkdtemp(prefix="mage-demo-examples-"), engine.display_scale)


HEADER = """# MAGE: one network that generates, edits and recognises
**{name}** — MAGE (Li et al., CVPR 2023) turns an image into a grid of VQGAN tokens; one ViT learns to fill in
masked tokens. Run iteratively (MaskGIT decoding) it *generates* and *edits* images; its encoder's pooled output
is an image *feature*. Everything below runs on this machine with the `mage_hf` package.
"""


def build_demo(engine: DemoEngine | None = None) -> gr.Blocks:
    """The four-tab app over `engine` (default: `DemoEngine()`, the embedded mage-mnist), queued."""
    engine = engine or DemoEngine()
    examples = _example_files(engine)
    name = "mage-mnist, a class-conditional MAGE of 32x32 MNIST digits" if engine.uses_default_pipeline else (
        f"the pipeline in `{engine.pipeline_dir}`")
    factor = engine.pipe.vqvae.downsample_factor * engine.display_scale
    with gr.Blocks(title="MAGE demo", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(HEADER.format(name=name))
        with gr.Tab("Generate", id="generate", elem_id="tab-generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    controls = sampling_controls(engine, num_images=8)
                    run_generate = gr.Button("Generate", variant="primary", elem_id="generate-button")
                    live = gr.Image(label="Decoding: tokens revealed step by step (grey = not decided yet)",
                                    format="png", interactive=False, height=LIVE_HEIGHT, elem_id="generate-live")
                with gr.Column(scale=2):
                    gallery = gr.Gallery(label="Samples", columns=4, format="png", elem_id="generate-gallery")
                    command = gr.Code(label="The same images from the command line (samples/00000.png, ...)",
                                      language="shell", interactive=False, lines=2, wrap_lines=True,
                                      elem_id="generate-command")
                    with gr.Accordion("Details (seeds, token ids)", open=False):
                        details = gr.JSON(label="details")

            @user_facing
            def generate(*values, progress=gr.Progress()):
                options = controls.options(*values)
                text = engine.generate_command(options)
                yield from _stream(engine.generate(options), progress,
                                   lambda s: (_gallery(s), text, s.details), count=4)

            run_generate.click(generate, controls.inputs, [live, gallery, command, details], api_name="generate",
                               concurrency_id=PIPELINE_QUEUE, concurrency_limit=1)

        with gr.Tab("Inpaint / outpaint", id="inpaint", elem_id="tab-inpaint"):
            with gr.Row():
                with gr.Column(scale=1):
                    editor = readable_uploads(gr.ImageEditor(
                        type="pil", image_mode="RGBA", sources=("upload", "clipboard"), transforms=(),
                        layers=False, label="Image: paint over what to regenerate", elem_id="inpaint-editor",
                        brush=gr.Brush(colors=[("#ff3c3c", 0.7)], color_mode="fixed", default_size=factor // 2),
                        canvas_size=(256, 256),
                    ))
                    gr.Examples(examples, inputs=editor, label="Examples: held-out MNIST digits")
                    mode = gr.Radio([BRUSH, OUTPAINT, UNCROP], value=BRUSH, label="What to regenerate")
                    directions = gr.CheckboxGroup(DIRECTIONS, value=["right"], label="Outpaint towards",
                                                  visible=False)
                    fraction = gr.Slider(0.1, 0.75, value=0.25, step=0.05, label="Outpaint: part of the canvas",
                                         visible=False)
                    scale = gr.Slider(0.25, 0.9, value=0.5, step=0.05, label="Uncrop: size of the image inside",
                                      visible=False)
                    mode.change(mode_options, mode, [directions, fraction, scale], queue=False,
                                api_visibility="private")
                    edit_controls = sampling_controls(engine, num_images=4, class_label="Class (optional)",
                                                     conditional=False)
                    run_inpaint = gr.Button("Regenerate", variant="primary", elem_id="inpaint-button")
                with gr.Column(scale=2):
                    with gr.Row():
                        before = gr.Image(label="Before: kept tokens (grey = regenerated)", format="png",
                                          interactive=False, height=LIVE_HEIGHT, elem_id="inpaint-before")
                        edit_live = gr.Image(label="Decoding", format="png", interactive=False, height=LIVE_HEIGHT,
                                             elem_id="inpaint-live")
                    edit_gallery = gr.Gallery(label="After", columns=4, format="png", elem_id="inpaint-gallery")
                    with gr.Accordion("Details (seeds, token ids, regenerated region)", open=False):
                        edit_details = gr.JSON(label="details")

            @user_facing
            def inpaint(value, how, towards, part, inner, *values, progress=gr.Progress()):
                options = edit_controls.options(*values)
                image, mask = editor_image_and_mask(value)
                if how == BRUSH:
                    events = engine.inpaint(image, mask, options)
                elif how == OUTPAINT:
                    events = engine.outpaint(image, list(towards or []), float(part), options)
                elif how == UNCROP:
                    events = engine.uncrop(image, float(inner), options)
                else:
                    raise DemoInputError(f"Unknown mode {how!r}: choose one of {[BRUSH, OUTPAINT, UNCROP]}.")
                shown = engine.enlarge(image.resize((engine.image_size,) * 2, PIL.Image.BICUBIC))
                yield from _stream(events, progress,
                                   lambda s: (s.before or shown, _gallery(s), s.details), count=4)

            run_inpaint.click(inpaint, [editor, mode, directions, fraction, scale, *edit_controls.inputs],
                              [edit_live, before, edit_gallery, edit_details], api_name="inpaint",
                              concurrency_id=PIPELINE_QUEUE, concurrency_limit=1)

        with gr.Tab("Variations", id="variations", elem_id="tab-variations"):
            with gr.Row():
                with gr.Column(scale=1):
                    source = image_input("variations-input")
                    gr.Examples(examples, inputs=source, label="Examples: held-out MNIST digits")
                    strength = gr.Slider(0.1, 0.95, value=0.5, step=0.05,
                                         label="Strength (the last int(steps x strength) steps are re-run)")
                    variation_controls = sampling_controls(engine, num_images=8, class_label="Class (optional)",
                                                          conditional=False)
                    run_variations = gr.Button("Make variations", variant="primary", elem_id="variations-button")
                with gr.Column(scale=2):
                    variation_live = gr.Image(label="Decoding", format="png", interactive=False, height=LIVE_HEIGHT)
                    variation_gallery = gr.Gallery(label="Variations", columns=4, format="png",
                                                   elem_id="variations-gallery")
                    with gr.Accordion("Details (seeds, token ids)", open=False):
                        variation_details = gr.JSON(label="details")

            @user_facing
            def variations(path, amount, *values, progress=gr.Progress()):
                options = variation_controls.options(*values)
                events = engine.variations(_load(path), float(amount), options)
                yield from _stream(events, progress, lambda s: (_gallery(s), s.details), count=3)

            run_variations.click(variations, [source, strength, *variation_controls.inputs],
                                 [variation_live, variation_gallery, variation_details], api_name="variations",
                                 concurrency_id=PIPELINE_QUEUE, concurrency_limit=1)

        with gr.Tab("Features", id="features", elem_id="tab-features"):
            gr.Markdown("The same network recognises: the input's nearest neighbours among the example training "
                        "digits, by cosine similarity of the encoder's pooled features (`AutoModel`, "
                        "`pooler_output`), and the classes among them. No classifier was trained.")
            with gr.Row():
                with gr.Column(scale=1):
                    query = image_input("features-input")
                    gr.Examples(examples, inputs=query, label="Examples: held-out MNIST digits")
                    k = gr.Slider(1, 32, value=8, step=1, label="Neighbours")
                    run_features = gr.Button("Find neighbours", variant="primary", elem_id="features-button")
                with gr.Column(scale=2):
                    votes = gr.Label(label="Classes among the neighbours", num_top_classes=3,
                                     elem_id="features-votes")
                    neighbours = gr.Gallery(label="Nearest example digits", columns=4, format="png",
                                            elem_id="features-gallery")

            @user_facing
            def find_neighbours(path, count, progress=gr.Progress()):
                image = _load(path)
                progress(0.0, desc="encoding (the example features are computed once)")
                found, shares = engine.neighbours(image, _whole(count, "Neighbours"))
                return [(n.image, f"{n.label} · cos {n.similarity:.3f}") for n in found], shares

            run_features.click(find_neighbours, [query, k], [neighbours, votes], api_name="neighbours",
                               concurrency_id=FEATURES_QUEUE, concurrency_limit=1)
    return demo.queue(max_size=QUEUE_SIZE)


def launch(demo: gr.Blocks, server_name: str | None = None, server_port: int | None = None, share: bool = False,
           **kwargs):
    """`demo.launch` with the demo's limits (upload size, no tracebacks sent to browsers); `server_name=None`
    lets gradio read GRADIO_SERVER_NAME (what a Space sets) and defaults to 127.0.0.1."""
    return demo.launch(server_name=server_name, server_port=server_port, share=share, max_file_size=MAX_UPLOAD,
                       show_error=False, footer_links=["api", "settings"], **kwargs)


__all__ = ["SamplingControls", "build_demo", "editor_image_and_mask", "image_input",
           "launch", "readable_uploads", "sampling_controls", "user_facing"]

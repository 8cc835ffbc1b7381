"""How MAGE generation time and peak memory grow with image size (tokens), batch, steps and model size.

Random weights, float32, `torch.inference_mode()`, `MagePipeline(..., output_type="pt")` timed end to end (all
decoding steps + VQGAN decode), plus the VQGAN decode alone and one transformer forward, for four sweeps around
one base point (256 px = 16 x 16 tokens, batch 1, 8 steps, the "small" transformer):

- image size: 64, 128, 256, 512, 1024 px (16 ... 4,096 tokens; the VQGAN downsamples by 16 as MAGE's does)
- batch: 1, 2, 4, 8
- steps: 4, 8, 12, 20
- model size: xs (128 wide, 2 + 2 layers), small (256, 4 + 2), medium (512, 8 + 4), vit-b (768, 12 + 8)

Every point uses the same narrow VQGAN (channels 32-128 instead of the release's 128-512), so the sweeps show
the transformer's growth and the decode stays a small, separately reported part. Timing and memory helpers
(warm-up + median, peak RSS above the start of each measurement, other load on the machine) come from
benchmarks/run.py.

    python benchmarks/scaling.py                       # ~3-6 min on 2 CPU cores
    python benchmarks/scaling.py --quick               # a smoke run: few points, 1 repeat
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from measure import (
    RowMonitor,
    cpu_name,
    cpu_ticks,
    decoder_and_head_flops,
    encoder_flops,
    fmt,
    matmul_peak_gflops,
    time_call,
    transformer_stack_flops,
    vq_decoder_flops,
)

from mage_hf import MageConfig, MageForMaskedImageModeling, MagePipeline

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


# A narrow VQGAN with the release's 5 levels (downsampling 16): pixels -> tokens exactly as in MAGE.
SCALING_VQ_CONFIG = {
    "block_out_channels": [32, 32, 64, 64, 128], "layers_per_block": 1, "latent_channels": 64,
    "vq_embed_dim": 64, "norm_num_groups": 32,
}
MODEL_SIZES = {
    "xs": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
           "decoder_hidden_size": 128, "decoder_num_hidden_layers": 2, "decoder_num_attention_heads": 4},
    "small": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
              "decoder_hidden_size": 256, "decoder_num_hidden_layers": 2, "decoder_num_attention_heads": 4},
    "medium": {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8,
               "decoder_hidden_size": 512, "decoder_num_hidden_layers": 4, "decoder_num_attention_heads": 8},
    "vit-b": {},  # MageConfig defaults: the release's ViT-B (768 wide, 12 encoder + 8 decoder layers)
}
BASE = {"model": "small", "image_size": 256, "batch": 1, "steps": 8}
SWEEPS = {
    "image_size": [64, 128, 256, 512, 1024],
    "batch": [1, 2, 4, 8],
    "steps": [4, 8, 12, 20],
    "model": list(MODEL_SIZES),
}
QUICK_SWEEPS = {"image_size": [64, 128, 256], "batch": [1, 2], "steps": [4, 8], "model": ["xs", "small"]}


@dataclass
class Point:
    model: str
    image_size: int
    batch: int
    steps: int
    tokens: int = 0
    params_m: float = 0.0
    gflop_per_image: float = 0.0  # analytic: steps x (encoder + decoder + head) + VQGAN decode
    attention_fraction: float = 0.0  # share of the transformer FLOPs in QK^T and PV
    generate_s: float | None = None  # median, full pipeline call
    generate_all_s: list[float] | None = None
    generate_mib: float | None = None
    decode_s: float | None = None  # VQGAN decode of `batch` images alone
    decode_mib: float | None = None
    forward_s: float | None = None  # one transformer forward on `batch` sequences
    forward_mib: float | None = None
    other_cores: float | None = None  # load from other processes during the generate measurement
    measured_at: str | None = None  # local time of the measurement

    @property
    def key(self) -> tuple:
        return (self.model, self.image_size, self.batch, self.steps)


def build_config(model: str, image_size: int) -> MageConfig:
    tokens = (image_size // 16) ** 2
    return MageConfig(
        image_size=image_size, max_position_embeddings=1 + tokens, vq_config=dict(SCALING_VQ_CONFIG),
        **MODEL_SIZES[model],
    )


def build_pipeline(config: MageConfig) -> MagePipeline:
    torch.manual_seed(0)
    model = MageForMaskedImageModeling(config).eval()
    pipe = MagePipeline.from_masked_image_model(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def attention_flops(length: int, width: int, layers: int) -> int:
    """QK^T and PV of `layers` blocks on one sequence (the N^2 part of `transformer_stack_flops`)."""
    return layers * 2 * (2 * length * length * width)


def analytic(point: Point, config: MageConfig, pipe: MagePipeline) -> None:
    length = 1 + config.num_image_tokens
    decoder, vocab = decoder_and_head_flops(config, length)
    step = encoder_flops(config, length) + decoder + vocab
    attention = attention_flops(length, config.hidden_size, config.num_hidden_layers)
    attention += attention_flops(length, config.decoder_hidden_size, config.decoder_num_hidden_layers)
    point.gflop_per_image = (point.steps * step + vq_decoder_flops(pipe.vqvae, config.image_size)) / 1e9
    point.attention_fraction = attention / step
    point.tokens = config.num_image_tokens
    point.params_m = sum(p.numel() for p in pipe.transformer.parameters()) / 1e6


def measure(fn, repeats: int, warmup: int) -> tuple[list[float], float | None, float | None]:
    """(times, peak MiB above the start, other processes' cores) of `warmup` + `repeats` calls."""
    with torch.inference_mode(), RowMonitor("cpu") as monitor:
        times = time_call(fn, repeats, warmup, "cpu")
    return times, monitor.mib, monitor.other_cores


def run_point(point: Point, repeats: int, warmup: int) -> Point:
    config = build_config(point.model, point.image_size)
    pipe = build_pipeline(config)
    analytic(point, config, pipe)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.codebook_size, (point.batch, point.tokens), generator=generator)
    input_ids = pipe.transformer.mage.build_input_ids(tokens)
    input_ids[:, 1::2] = config.mask_token_id

    def generate():
        generators = [torch.Generator().manual_seed(i) for i in range(point.batch)]
        return pipe(batch_size=point.batch, num_inference_steps=point.steps, generator=generators, output_type="pt")

    point.forward_s, point.forward_mib, _ = _median(measure(lambda: pipe.transformer(input_ids=input_ids),
                                                            repeats, warmup))
    point.decode_s, point.decode_mib, _ = _median(measure(lambda: pipe.vqvae.decode_indices(tokens), repeats, warmup))
    times, point.generate_mib, point.other_cores = measure(generate, repeats, warmup)
    point.generate_all_s, point.generate_s = times, statistics.median(times)
    point.measured_at = time.strftime("%Y-%m-%d %H:%M:%S")
    return point


def run_point_retrying(point: Point, args: argparse.Namespace) -> Point:
    """`run_point` once the machine is quiet (`wait_for_quiet`), measured again (up to `--retries` times) while
    other processes kept more than `--max-other-load` cores busy; the measurement with the least other load is
    kept. On a shared machine an
    OpenMP thread that loses its core stalls every parallel op, so loaded runs are far slower, not a bit."""
    wait_for_quiet(args.max_other_load, args.max_wait)
    best = run_point(Point(**_spec(point)), args.repeats, args.warmup)
    for _ in range(args.retries):
        if best.other_cores is None or best.other_cores <= args.max_other_load:
            break
        wait_for_quiet(args.max_other_load, args.max_wait)
        again = run_point(Point(**_spec(point)), args.repeats, args.warmup)
        if again.other_cores is not None and again.other_cores < best.other_cores:
            best = again
    for field_name, value in asdict(best).items():
        setattr(point, field_name, value)
    return point


def other_load(seconds: float = 2.0) -> float | None:
    """Cores kept busy by other processes over `seconds` (this process idle meanwhile)."""
    before = cpu_ticks()
    time.sleep(seconds)
    after = cpu_ticks()
    if before is None or after is None:
        return None
    busy, own = (a - b for a, b in zip(after, before, strict=True))
    return max(0.0, (busy - own) / os.sysconf("SC_CLK_TCK") / seconds)


def wait_for_quiet(max_other_load: float, max_wait: float) -> None:
    """Sleep until other processes use at most `max_other_load` cores (2 s samples), for at most `max_wait` s."""
    deadline = time.perf_counter() + max_wait
    while time.perf_counter() < deadline:
        load = other_load()
        if load is None or load <= max_other_load:
            return
        print(f"    waiting: other processes use {load:.2f} cores", file=sys.stderr, flush=True)
        time.sleep(3.0)


def _spec(point: Point) -> dict:
    return {"model": point.model, "image_size": point.image_size, "batch": point.batch, "steps": point.steps}


def _median(result):
    times, mib, other = result
    return statistics.median(times), mib, other


def sweep_points(sweeps: dict[str, list]) -> dict[str, list[Point]]:
    return {
        name: [Point(**{**BASE, name: value}) for value in values] for name, values in sweeps.items()
    }


def slopes(xs: list[float], ys: list[float]) -> list[float]:
    """Log-log slopes between consecutive points: y ~ x^k locally."""
    return [math.log(y1 / y0) / math.log(x1 / x0) for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:])]


def markdown_table(sweeps: dict[str, list[Point]]) -> str:
    header = ["sweep", "model", "params M", "px", "tokens", "batch", "steps", "GFLOP/img", "attn % of step",
              "generate s", "s / img", "step s (derived)", "decode s", "forward s", "peak MiB gen",
              "peak MiB fwd", "other load"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, points in sweeps.items():
        for p in points:
            step = (p.generate_s - p.decode_s) / p.steps
            cells = [name, p.model, f"{p.params_m:.1f}", p.image_size, p.tokens, p.batch, p.steps,
                     f"{p.gflop_per_image:.3g}", f"{100 * p.attention_fraction:.0f}", f"{p.generate_s:.3f}",
                     f"{p.generate_s / p.batch:.3f}", f"{step:.4f}", f"{p.decode_s:.3f}", f"{p.forward_s:.4f}",
                     fmt(p.generate_mib, ".0f"), fmt(p.forward_mib, ".0f"),
                     fmt(p.other_cores, ".2f")]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def growth_summary(sweeps: dict[str, list[Point]]) -> list[str]:
    """One line per sweep: local log-log exponents of time (and of the per-step forward) in the swept variable."""
    lines = []
    for name, points in sweeps.items():
        if len(points) < 2:
            continue
        xs = {"image_size": [p.tokens for p in points], "batch": [p.batch for p in points],
              "steps": [p.steps for p in points], "model": [p.params_m for p in points]}[name]
        gen = slopes(xs, [p.generate_s for p in points])
        fwd = slopes(xs, [p.forward_s for p in points])
        mem = [p.generate_mib for p in points]
        variable = {"image_size": "tokens", "model": "params"}.get(name, name)
        lines.append(
            f"{name}: generate time ~ {variable}^k with k = {', '.join(f'{k:.2f}' for k in gen)}; "
            f"transformer forward k = {', '.join(f'{k:.2f}' for k in fwd)}; "
            f"peak MiB {', '.join(fmt(m, '.0f') for m in mem)}"
        )
    return lines


def plot(sweeps: dict[str, list[Point]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("image_size", "image tokens (px / 16)^2", lambda p: p.tokens, True),
        ("batch", "batch", lambda p: p.batch, False),
        ("steps", "decoding steps", lambda p: p.steps, False),
        ("model", "transformer parameters (M)", lambda p: p.params_m, True),
    ]
    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, (name, label, x_of, log) in zip(axes.flat, panels, strict=True):
        points = sweeps.get(name) or []
        if not points:
            ax.set_visible(False)
            continue
        xs = [x_of(p) for p in points]
        ax.plot(xs, [p.generate_s for p in points], "o-", color="C0", label="generate (all steps + decode)")
        ax.plot(xs, [p.generate_s - p.decode_s for p in points], "s--", color="C2", label="transformer steps")
        ax.plot(xs, [p.decode_s for p in points], "^:", color="C1", label="VQGAN decode")
        ax.set_xlabel(label)
        ax.set_ylabel("seconds (median)")
        if log:
            ax.set_xscale("log")
            ax.set_yscale("log")
            if name == "image_size":  # reference slopes through the largest point
                x1, y1 = xs[-1], points[-1].generate_s - points[-1].decode_s
                ax.plot(xs, [y1 * x / x1 for x in xs], color="0.55", lw=0.8, label="~ tokens (slope 1)")
                ax.plot(xs, [y1 * (x / x1) ** 2 for x in xs], color="0.8", lw=0.8, label="~ tokens^2 (slope 2)")
                ax.set_ylim(min(p.decode_s for p in points) / 2, max(p.generate_s for p in points) * 2)
            for x, p in zip(xs, points, strict=True):
                if name == "model":
                    ax.annotate(p.model, (x, p.generate_s), textcoords="offset points", xytext=(4, 4), fontsize=8)
        memory = ax.twinx()
        memory.plot(xs, [p.generate_mib or 0 for p in points], "x-.", color="C3", label="peak RSS (generate)")
        memory.set_ylabel("peak MiB above start", color="C3")
        memory.tick_params(axis="y", colors="C3")
        memory.set_ylim(bottom=0)
        base = {k: v for k, v in BASE.items() if k != name}
        ax.set_title(f"{name} sweep ({', '.join(f'{k} {v}' for k, v in base.items())})", fontsize=9)
        handles = ax.get_legend_handles_labels()[0] + memory.get_legend_handles_labels()[0]
        ax.legend(handles=handles, fontsize=7, loc="upper left")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--max-other-load", type=float, default=0.25,
                        help="re-measure a point while other processes kept more cores busy than this")
    parser.add_argument("--retries", type=int, default=3, help="re-measurements of a loaded point")
    parser.add_argument("--max-wait", type=float, default=90.0,
                        help="seconds to wait for the machine to be quiet before each measurement")
    parser.add_argument("--quick", action="store_true", help="fewer points and 1 repeat (a smoke run)")
    parser.add_argument("--only", default=None, help=f"comma-separated sweeps among {','.join(SWEEPS)}")
    parser.add_argument("--json", default=str(HERE / "results_scaling_cpu.json"))
    parser.add_argument("--from-json", action="store_true",
                        help="measure nothing: print the table and redraw the plot from the --json file")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the points of the --json file measured on a quiet machine (the file is "
                             "rewritten after every point, so an interrupted sweep can go on)")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "images" / "scaling_cpu.png"))
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
    return args


def _plot_title() -> str:
    return (f"MAGE generation on CPU ({torch.get_num_threads()} threads, fp32, random weights; "
            f"torch {torch.__version__})")


def replot(args: argparse.Namespace) -> dict:
    results = json.loads(Path(args.json).read_text())
    sweeps = {name: [Point(**p) for p in points] for name, points in results["sweeps"].items()}
    print(markdown_table(sweeps) + "\n\n" + "\n".join(growth_summary(sweeps)))
    if args.plot:
        torch.set_num_threads(results["threads"])
        plot(sweeps, Path(args.plot), _plot_title())
        print(f"wrote {args.plot}")
    return results


def _results(args, sweeps: dict[str, list[Point]], peak: float, total: float) -> dict:
    return {
        "torch": torch.__version__, "cpu": cpu_name(), "threads": torch.get_num_threads(), "dtype": "float32",
        "matmul_peak_gflops": peak, "repeats": args.repeats, "warmup": args.warmup, "base": BASE,
        "vq_config": SCALING_VQ_CONFIG, "model_sizes": MODEL_SIZES, "total_s": total,
        "memory": "peak RSS above the RSS at the start of each measurement (warm-up included), MiB",
        "max_other_load": args.max_other_load, "retries": args.retries,
        "summary": growth_summary(sweeps),
        "sweeps": {name: [asdict(p) for p in points] for name, points in sweeps.items()},
    }


def _previous_points(args) -> dict[tuple, Point]:
    """With --resume: the points of the --json file measured with at most --max-other-load other load."""
    if not (args.resume and args.json and Path(args.json).is_file()):
        return {}
    previous = json.loads(Path(args.json).read_text())["sweeps"]
    points = [Point(**p) for sweep in previous.values() for p in sweep]
    return {p.key: p for p in points if p.other_cores is not None and p.other_cores <= args.max_other_load}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.from_json:
        return replot(args)
    torch.set_num_threads(args.threads)
    chosen = QUICK_SWEEPS if args.quick else SWEEPS
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        chosen = {n: chosen[n] for n in names}
    sweeps = sweep_points(chosen)
    start = time.perf_counter()
    with torch.inference_mode():
        peak, side = matmul_peak_gflops("cpu", torch.float32, 5)
    print(f"# mage_hf scaling: torch {torch.__version__}, {cpu_name()}, {torch.get_num_threads()} threads, "
          f"fp32, repeats {args.repeats}, warm-up {args.warmup}; matmul peak {peak:.1f} GFLOP/s ({side}^3)",
          flush=True)
    done = _previous_points(args)
    if done:
        print(f"  resuming: {len(done)} points from {args.json}", file=sys.stderr)
    for name, points in sweeps.items():
        for index, point in enumerate(points):
            if point.key not in done:  # the base point is shared by the sweeps
                done[point.key] = run_point_retrying(point, args)
                print(f"  {name} {point.key}: generate {point.generate_s:.3f} s, decode {point.decode_s:.3f} s, "
                      f"peak {fmt(point.generate_mib, '.0f')} MiB, other load "
                      f"{fmt(point.other_cores, '.2f')}", file=sys.stderr, flush=True)
                if args.json:  # checkpoint: the sweeps measured so far, for --resume
                    partial = {n: [done[p.key] for p in ps if p.key in done] for n, ps in sweeps.items()}
                    partial = {n: ps for n, ps in partial.items() if ps}
                    Path(args.json).write_text(json.dumps(_results(args, partial, peak, 0.0), indent=2) + "\n")
            points[index] = done[point.key]
    total = time.perf_counter() - start
    print(f"\n{markdown_table(sweeps)}\n")
    print("\n".join(growth_summary(sweeps)))
    print(f"\ntotal wall time {total:.0f} s")
    results = _results(args, sweeps, peak, total)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot(sweeps, Path(args.plot), _plot_title())
        print(f"wrote {args.plot}")
    return results


if __name__ == "__main__":
    main()

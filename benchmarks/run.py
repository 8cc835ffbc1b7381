"""Speed benchmark of mage_hf: tokenize, decode, features, a generation step, full generation, a train step.

Random weights at a preset's shapes; every row is timed with warm-up and reported as the median over repeats,
with images/s, analytic GFLOP/s, the fraction of a matmul peak measured in the same run, and peak memory.
See benchmarks/README.md for what each row measures and how to read the numbers.

    python benchmarks/run.py --size tiny
    python benchmarks/run.py --size vit-b --batch-size 4 --threads 2 --repeats 3 --json vit-b.json
"""

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from measure import (
    RowMonitor,
    cpu_name,
    decoder_and_head_flops,
    encoder_flops,
    fmt,
    matmul_peak_gflops,
    quantizer_flops,
    time_call,
    torch_counted_flops,
    transformer_stack_flops,
    vq_decoder_flops,
    vq_encoder_flops,
)
from transformers import ViTConfig, ViTModel

from mage_hf import MageConfig, MageForMaskedImageModeling, MagePipeline, MageScheduler

ROW_NAMES = ("tokenize", "decode", "features", "encoder", "vit", "gen_step", "generate", "train")
HEAVY_ROWS = ("generate", "train")  # run `--heavy-repeats` times (default: fewer than `--repeats`)
DEFAULT_REPEATS = {"tiny": 5, "vit-b": 3, "vit-l": 2}
GENERATION_STEPS = 12  # the original's default number of decoding iterations
GENERATION_MASK_FRACTION = 0.5  # fraction of masked tokens in the input of the single generation-step row

# The original code (MAGE repo, ViT-B, batch 4, fp32, 2 threads) as measured by the project on this CPU.
ORIGINAL_REFERENCE = {
    "size": "vit-b",
    "batch_size": 4,
    "threads": 2,
    "device": "cpu",
    "dtype": "float32",
    "seconds": {
        "features": 6.7,  # tokenize + 12 encoder layers
        "gen_step": 2.1,  # one forward of encoder + decoder + MLM head, plus sampling
        "decode": 7.5,  # VQGAN decode of 256 px images: measured 6.7-8.4 s, midpoint used
        "tokenize": 4.9,  # VQGAN encode + quantize
        "generate": 32.7,  # derived, not measured: 12 x 2.1 s + 7.5 s decode
    },
    "notes": {"decode": "midpoint of 6.7-8.4 s", "generate": "derived: 12 x gen_step + decode"},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="vit-b", choices=sorted(DEFAULT_REPEATS), help="MageConfig preset")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per row (default: by size)")
    parser.add_argument(
        "--heavy-repeats",
        type=int,
        default=None,
        help=f"timed runs of {HEAVY_ROWS} (default: repeats - 1, at least 1)",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before each row")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"), help="attention implementation")
    parser.add_argument("--only", default=None, help=f"comma-separated rows among {','.join(ROW_NAMES)}")
    parser.add_argument("--compile", action="store_true", help="torch.compile the modules (warm-up compiles)")
    parser.add_argument(
        "--flop-counter",
        default="analytic",
        choices=("analytic", "torch"),
        help="analytic formulas, or torch.utils.flop_counter.FlopCounterMode (one extra call per row)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    args.only = (
        ROW_NAMES if args.only is None else tuple(n.strip() for n in args.only.split(",") if n.strip())
    )
    unknown = [name for name in args.only if name not in ROW_NAMES]
    if unknown:
        parser.error(f"--only: unknown rows {unknown}; expected names among {list(ROW_NAMES)}")
    if args.repeats is None:
        args.repeats = DEFAULT_REPEATS[args.size]
    if args.heavy_repeats is None:
        args.heavy_repeats = max(1, args.repeats - 1)
    for flag in ("batch_size", "threads", "repeats", "heavy_repeats"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False")
    return args


# ----------------------------------------------------------------------------------------------------
# FLOPs per image of every row.


def analytic_flops(config: MageConfig, vqgan, vit_config: ViTConfig) -> dict[str, int]:
    """FLOPs per image of every row."""
    size, length = config.image_size, 1 + config.num_image_tokens
    tokenize = vq_encoder_flops(vqgan, size) + quantizer_flops(config)
    decode = vq_decoder_flops(vqgan, size)
    encoder = encoder_flops(config, length)
    decoder, vocab = decoder_and_head_flops(config, length)
    gen_step = encoder + decoder + vocab
    kept = length - config.num_dropped_tokens
    train_decoder, train_vocab = decoder_and_head_flops(config, kept)
    # Backward = 2x forward for every matmul, except the vocabulary product: its weight (the token embeddings)
    # is detached, so only the input gradient is computed.
    train = 3 * (encoder_flops(config, kept) + train_decoder) + 2 * train_vocab
    patches = (vit_config.image_size // vit_config.patch_size) ** 2
    vit = 2 * vit_config.num_channels * vit_config.hidden_size * vit_config.patch_size**2 * patches
    vit += transformer_stack_flops(
        1 + patches,
        vit_config.hidden_size,
        vit_config.num_hidden_layers,
        vit_config.intermediate_size / vit_config.hidden_size,
    )
    return {
        "tokenize": tokenize,
        "decode": decode,
        "features": tokenize + encoder,
        "encoder": encoder,
        "vit": vit,
        "gen_step": gen_step,
        "generate": GENERATION_STEPS * gen_step + decode,
        "train": train,
    }


# ----------------------------------------------------------------------------------------------------
# Models and rows.


@dataclass
class Row:
    name: str
    what: str
    fn: Callable[[], object] | None = field(repr=False)
    grad: bool = False
    seconds: list[float] = field(default_factory=list)
    median_s: float | None = None
    images_per_s: float | None = None
    gflop_per_image: float | None = None
    gflop_per_s: float | None = None
    fraction_of_peak: float | None = None
    peak_mem_mib: float | None = None
    other_cores: float | None = None
    vs_vit: float | None = None
    original_s: float | None = None
    speedup_vs_original: float | None = None
    note: str = ""


def matching_vit_config(config: MageConfig) -> ViTConfig:
    """A ViT with MAGE's encoder width, depth and heads, and as many patches as MAGE has image tokens."""
    return ViTConfig(
        image_size=config.image_size,
        patch_size=config.downsample_factor,
        num_channels=config.num_channels,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=int(config.hidden_size * config.mlp_ratio),
        hidden_act=config.hidden_act,
        qkv_bias=config.qkv_bias,
    )


def build_pipeline(model, vqgan) -> MagePipeline:
    """The pipeline of the benchmarked transformer and tokenizer (default scheduler settings)."""
    scheduler = MageScheduler(mask_token_id=model.config.mask_token_id)
    pipe = MagePipeline(vqvae=vqgan, transformer=model, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generation_fn(pipe: MagePipeline, batch: int, device: str, seed: int) -> Callable:
    """Full 12-step generation (per-image generators, as `mage-hf generate`) + decode, through the pipeline."""

    def generate():
        generators = [torch.Generator(device=device).manual_seed(seed + i) for i in range(batch)]
        return pipe(batch_size=batch, num_inference_steps=GENERATION_STEPS, generator=generators, output_type="pt")

    return generate


def generation_step_fn(pipe: MagePipeline, input_ids: torch.LongTensor, generator: torch.Generator) -> Callable:
    """One decoding step as the pipeline runs it (`decode_step`: forward, token sampling, re-masking), on ids with
    a fraction of the image tokens masked, its uniforms drawn from `generator`."""
    config = pipe.transformer.config
    batch, n = input_ids.shape[0], config.num_image_tokens
    masked = torch.rand(batch, n, generator=generator, device=input_ids.device) < GENERATION_MASK_FRACTION
    latents = input_ids[:, 1:].masked_fill(masked, config.mask_token_id)
    condition = input_ids[:, 0]
    pipe.scheduler.set_timesteps(GENERATION_STEPS)
    step, guidance = torch.tensor(GENERATION_STEPS // 2), torch.tensor(1.0)

    def gen_step():
        noise = pipe.scheduler.draw_noise(tuple(latents.shape), generator, latents.device)
        return pipe.decode_step(latents, condition, step, noise)

    return gen_step


def train_step_fn(model, input_ids: torch.LongTensor, seed: int) -> Callable:
    """One pretraining step on token ids: sampled masks, masked-token loss, backward, AdamW."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    mask_generator = torch.Generator().manual_seed(seed)
    batch, labels = input_ids.shape[0], input_ids[:, 1:]

    def train_step():
        model.train()
        bool_masked_pos, bool_dropped_pos = model.sample_masks(batch, mask_generator, input_ids.device)
        loss = model(
            input_ids=input_ids,
            bool_masked_pos=bool_masked_pos,
            bool_dropped_pos=bool_dropped_pos,
            labels=labels,
        ).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.eval()
        return loss

    return train_step


def build_rows(args: argparse.Namespace, config: MageConfig) -> tuple[list[Row], dict]:
    device, dtype, batch = args.device, getattr(torch, args.dtype), args.batch_size
    torch.manual_seed(args.seed)
    model = (
        MageForMaskedImageModeling._from_config(config, attn_implementation=args.attn)
        .to(device, dtype)
        .eval()
    )
    vit_config = matching_vit_config(config)
    vit = ViTModel._from_config(vit_config, add_pooling_layer=False, attn_implementation=args.attn)
    vit = vit.to(device, dtype).eval()
    mage, vqgan = model.mage, model.mage.vqgan
    pipe = build_pipeline(model, vqgan)
    if args.compile:  # the modules, and the pipeline's whole decoding step (fullgraph)
        vqgan.compile_convs()
        for module in (mage, model.decoder, model.mlm_head, vit):
            module.compile()
        pipe.compile_decoding_step()

    generator = torch.Generator(device=device).manual_seed(args.seed)
    n = config.num_image_tokens
    pixels = torch.rand(
        batch,
        config.num_channels,
        config.image_size,
        config.image_size,
        generator=generator,
        device=device,
        dtype=dtype,
    )
    tokens = torch.randint(0, config.codebook_size, (batch, n), generator=generator, device=device)
    input_ids = mage.build_input_ids(tokens)
    rows = [
        Row("tokenize", "VQGAN encode + quantize", lambda: vqgan.tokenize(pixels)),
        Row("decode", "VQGAN decode_indices", lambda: vqgan.decode_indices(tokens)),
        Row("features", "MageModel(pixel_values): tokenize + encoder", lambda: mage(pixel_values=pixels)),
        Row("encoder", "MageModel(input_ids): encoder only", lambda: mage(input_ids=input_ids)),
        Row("vit", f"ViTModel(pixel_values), {1 + n} tokens", lambda: vit(pixel_values=pixels)),
        Row(
            "gen_step",
            "1 decoding step: forward + sampling + re-masking",
            generation_step_fn(pipe, input_ids, generator),
        ),
        Row("generate", f"full {GENERATION_STEPS}-step generation + decode", generation_fn(pipe, batch, device, args.seed),
            note="MagePipeline"),
        Row(
            "train",
            "train step: sampled masks, fwd + bwd + AdamW",
            train_step_fn(model, input_ids, args.seed),
            grad=True,
        ),
    ]
    flops = analytic_flops(config, vqgan, vit_config)
    return [row for row in rows if row.name in args.only], flops


def run_row(row: Row, args: argparse.Namespace, flops_per_image: int, peak_gflops: float) -> None:
    repeats = args.heavy_repeats if row.name in HEAVY_ROWS else args.repeats
    grad_mode = torch.enable_grad() if row.grad else torch.inference_mode()
    with grad_mode, RowMonitor(args.device) as monitor:
        row.seconds = time_call(row.fn, repeats, args.warmup, args.device)
    if args.flop_counter == "torch":
        # no_grad rather than inference_mode: a Python dispatch mode sees no ops under inference_mode here.
        with torch.enable_grad() if row.grad else torch.no_grad():
            counted = torch_counted_flops(row.fn)
        flops_per_image = counted / args.batch_size
    row.median_s = statistics.median(row.seconds)
    row.images_per_s = args.batch_size / row.median_s
    row.gflop_per_image = flops_per_image / 1e9
    row.gflop_per_s = row.gflop_per_image * args.batch_size / row.median_s
    row.fraction_of_peak = row.gflop_per_s / peak_gflops
    row.peak_mem_mib = monitor.mib
    row.other_cores = monitor.other_cores


def compare(rows: list[Row], args: argparse.Namespace) -> bool:
    """Fill the ViTModel ratio and, at the reference setting, the speed-up over the original code."""
    by_name = {row.name: row for row in rows if row.median_s is not None}
    if "vit" in by_name:
        for name in ("encoder", "features"):
            if name in by_name:
                by_name[name].vs_vit = by_name[name].median_s / by_name["vit"].median_s
    reference = ORIGINAL_REFERENCE
    at_reference = (
        args.size == reference["size"]
        and args.batch_size == reference["batch_size"]
        and args.threads == reference["threads"]
        and args.device == reference["device"]
        and args.dtype == reference["dtype"]
    )
    if at_reference:
        for name, seconds in reference["seconds"].items():
            if name in by_name:
                by_name[name].original_s = seconds
                by_name[name].speedup_vs_original = seconds / by_name[name].median_s
    return at_reference


def markdown_table(rows: list[Row], at_reference: bool) -> str:
    header = [
        "row",
        "what",
        "median s",
        "min-max s",
        "img/s",
        "GFLOP/img",
        "GFLOP/s",
        "% peak",
        "peak MiB",
        "x ViTModel",
        "other load",
    ]
    if at_reference:
        header += ["original s", "speed-up vs original"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if row.median_s is None:
            cells = [row.name, f"{row.what} ({row.note})"] + ["n/a"] * (len(header) - 2)
        else:
            cells = [
                row.name,
                row.what,
                f"{row.median_s:.3f}",
                f"{min(row.seconds):.3f}-{max(row.seconds):.3f}",
                f"{row.images_per_s:.2f}",
                f"{row.gflop_per_image:.4g}",
                f"{row.gflop_per_s:.1f}",
                f"{100 * row.fraction_of_peak:.0f}%",
                fmt(row.peak_mem_mib, ".0f"),
                fmt(row.vs_vit, ".2f"),
                fmt(row.other_cores, ".2f"),
            ]
            if at_reference:
                cells += [
                    fmt(row.original_s, ".1f"),
                    "n/a" if row.speedup_vs_original is None else f"{row.speedup_vs_original:.2f}x",
                ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class Environment:
    """What the numbers of one run are relative to."""

    device_name: str
    threads: int
    matmul_peak_gflops: float
    matmul_peak_side: int
    memory: str
    build_s: float


def measure_environment(args: argparse.Namespace, build_s: float) -> Environment:
    with torch.inference_mode():
        peak_gflops, peak_side = matmul_peak_gflops(args.device, getattr(torch, args.dtype), args.repeats)
    cuda = args.device == "cuda"
    return Environment(
        device_name=torch.cuda.get_device_name() if cuda else cpu_name(),
        threads=torch.get_num_threads(),
        matmul_peak_gflops=peak_gflops,
        matmul_peak_side=peak_side,
        memory="CUDA max_memory_allocated above row start" if cuda else "peak RSS above row start",
        build_s=build_s,
    )


def print_header(args: argparse.Namespace, env: Environment) -> None:
    flags = (
        f"--size {args.size} --batch-size {args.batch_size} --threads {args.threads} --device {args.device} "
        f"--dtype {args.dtype} --attn {args.attn}" + (" --compile" if args.compile else "")
    )
    timing = f"repeats {args.repeats} (heavy rows {args.heavy_repeats}), warm-up {args.warmup}"
    peak = f"{env.matmul_peak_gflops:.1f} GFLOP/s ({env.matmul_peak_side}^3 {args.dtype} torch.mm, median)"
    print(f"# mage_hf benchmark: {flags}")
    print(f"torch {torch.__version__}, {env.device_name}, {env.threads} threads; {timing}")
    print(f"matmul peak: {peak}; FLOPs: {args.flop_counter}; memory: {env.memory}", flush=True)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows, flops = build_rows(args, MageConfig.from_preset(args.size))
    env = measure_environment(args, time.perf_counter() - start)
    print_header(args, env)
    for row in rows:
        if row.fn is None:
            continue
        run_row(row, args, flops[row.name], env.matmul_peak_gflops)
        times = ", ".join(f"{seconds:.3f}" for seconds in row.seconds)
        print(f"  {row.name}: {row.median_s:.3f} s median of {len(row.seconds)} ({times})", file=sys.stderr)
    at_reference = compare(rows, args)
    total_s = time.perf_counter() - start
    print(f"\n{markdown_table(rows, at_reference)}\n\ntotal wall time {total_s:.0f} s")
    if at_reference:
        print(
            "original s: the original code at ViT-B, batch 4, fp32, 2 threads on the development CPU "
            "(project issue); decode is the midpoint of 6.7-8.4 s; generate = 12 x 2.1 + 7.5 s is derived, "
            "not measured."
        )
    results = {
        "args": {
            key: list(value) if isinstance(value, tuple) else value for key, value in vars(args).items()
        },
        "torch": torch.__version__,
        **asdict(env),
        "original_reference": ORIGINAL_REFERENCE if at_reference else None,
        "total_s": total_s,
        "rows": [{k: v for k, v in asdict(row).items() if k not in ("fn", "grad")} for row in rows],
    }
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()

"""Measuring helpers shared by the benchmark scripts of this folder (`run.py`, `scaling.py`): analytic FLOPs of
MAGE's parts, timing with warm-up, peak memory and foreign CPU load of a block, a matmul peak, formatting.

The scripts import it as `from measure import ...` (a script's own folder is on `sys.path`).
"""

import ctypes
import gc
import os
import platform
import re
import resource
import statistics
import time
from collections.abc import Callable

import torch

from mage_hf import MageConfig

# Peak reference: one square matmul of this side (fp32 unless told otherwise).
PEAK_MATMUL_SIDE = {"cpu": 2048, "cuda": 8192}
PEAK_MATMUL_MIN_REPEATS = 5


# ----------------------------------------------------------------------------------------------------
# FLOPs (analytic). One multiply-add = 2 FLOPs; only matmuls and convolutions are counted (norms, softmax,
# activations, pooling, embedding lookups and AdamW are left out).


def linear_flops(tokens: int, fan_in: int, fan_out: int) -> int:
    return 2 * tokens * fan_in * fan_out


def transformer_stack_flops(length: int, width: int, layers: int, mlp_ratio: float) -> int:
    """Per sequence: qkv, scores Q K^T, probs V, out proj, MLP fc1 and fc2, for `layers` blocks."""
    hidden = int(width * mlp_ratio)
    attention = 2 * (2 * length * length * width)
    per_layer = (
        linear_flops(length, width, 3 * width)
        + attention
        + linear_flops(length, width, width)
        + linear_flops(length, width, hidden)
        + linear_flops(length, hidden, width)
    )
    return layers * per_layer


def conv_flops(conv: torch.nn.Conv2d, side: int) -> int:
    """2 * Cin * Cout * k * k * H * W for a stride-1 'same' conv on a side x side map."""
    out_channels, in_channels, kernel_h, kernel_w = conv.weight.shape
    return 2 * in_channels * out_channels * kernel_h * kernel_w * side * side


def resnet_block_flops(block, side: int) -> int:
    convs = (block.conv1, block.conv2, block.nin_shortcut)
    return sum(conv_flops(conv, side) for conv in convs if conv is not None)


def vq_encoder_flops(vqgan, image_size: int) -> int:
    """Per image: every conv of the VQGAN encoder, walking its levels (2x2 average pool between levels)."""
    encoder, side = vqgan.encoder, image_size
    flops = conv_flops(encoder.conv_in, side)
    for level, blocks in enumerate(encoder.down_blocks):
        flops += sum(resnet_block_flops(block, side) for block in blocks)
        if level != len(encoder.down_blocks) - 1:
            side //= 2
    flops += sum(resnet_block_flops(block, side) for block in encoder.mid_blocks)
    return flops + conv_flops(encoder.conv_out, side)


def vq_decoder_flops(vqgan, image_size: int) -> int:
    """Per image: every conv of the VQGAN decoder (nearest x2 upsampling, then a conv, between levels)."""
    decoder, side = vqgan.decoder, image_size // vqgan.downsample_factor
    flops = conv_flops(decoder.conv_in, side)
    flops += sum(resnet_block_flops(block, side) for block in decoder.mid_blocks)
    for index, blocks in enumerate(decoder.up_blocks):
        flops += sum(resnet_block_flops(block, side) for block in blocks)
        if index < len(decoder.upsamplers):
            side *= 2
            flops += conv_flops(decoder.upsamplers[index].conv, side)
    return flops + conv_flops(decoder.conv_out, side)


def quantizer_flops(config: MageConfig) -> int:
    """Per image: the N x K distance matmul of nearest-codebook search."""
    return linear_flops(config.num_image_tokens, config.vq_config["vq_embed_dim"], config.codebook_size)


def encoder_flops(config: MageConfig, length: int) -> int:
    return transformer_stack_flops(length, config.hidden_size, config.num_hidden_layers, config.mlp_ratio)


def decoder_and_head_flops(config: MageConfig, encoder_length: int) -> tuple[int, int]:
    """Per sequence: (decoder embed + decoder blocks + MLM-head dense, MLM-head product with the vocab)."""
    length = 1 + config.num_image_tokens
    flops = linear_flops(encoder_length, config.hidden_size, config.decoder_hidden_size)
    flops += transformer_stack_flops(
        length, config.decoder_hidden_size, config.decoder_num_hidden_layers, config.mlp_ratio
    )
    flops += linear_flops(length, config.decoder_hidden_size, config.hidden_size)
    return flops, linear_flops(length, config.hidden_size, config.vocab_size)


def torch_counted_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call by torch's own per-op formulas (`torch.utils.flop_counter.flop_registry`, as used by
    FlopCounterMode), counted in a bare dispatch mode: FlopCounterMode's module tracker fails on the backward
    of the MLM head's detached embedding weight."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    total = 0

    class CountFlops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal total
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                total += formula(*args, **kwargs, out_val=out)
            return out

    with CountFlops():
        fn()
    return total


# ----------------------------------------------------------------------------------------------------
# Timing and memory.


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            match = re.search(rf"^{key}:\s+(\d+) kB", status.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _release_freed_memory() -> None:
    """glibc: hand freed heap memory back to the OS, so that a row's RSS peak is not hidden by memory that an
    earlier row freed but the allocator kept."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to /proc/self/clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def cpu_ticks() -> tuple[int, int] | None:
    """(busy ticks of the whole machine including steal, ticks of this process) from /proc, or None."""
    try:
        with open("/proc/stat") as stat:
            machine = [int(value) for value in stat.readline().split()[1:]]
        with open("/proc/self/stat") as stat:
            own = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError, ValueError):
        return None
    idle, iowait = machine[3], machine[4]
    busy = sum(machine[:8]) - idle - iowait  # user nice system idle iowait irq softirq steal
    return busy, int(own[11]) + int(own[12])  # utime, stime (fields 14 and 15 of stat)


class RowMonitor:
    """Peak memory and foreign CPU load of a block.

    Memory: CUDA max_memory_allocated above the block's start, or on CPU the peak RSS above the RSS at entry
    (VmHWM after resetting it; ru_maxrss delta where /proc is unavailable, which only sees new process peaks).
    Foreign load: average number of cores busy with other processes (or stolen by the hypervisor) meanwhile;
    anything well above 0 means the timings of that row are inflated.
    """

    def __init__(self, device: str):
        self.device = device
        self.mib: float | None = None
        self.other_cores: float | None = None

    def __enter__(self):
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            _release_freed_memory()
            self.resettable = _reset_peak_rss()
            self.start = _proc_status_kib("VmRSS") if self.resettable else self._cpu_peak()
        self.ticks, self.wall = cpu_ticks(), time.perf_counter()
        return self

    def _cpu_peak(self) -> int:
        if self.resettable:
            return _proc_status_kib("VmHWM")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def __exit__(self, *exc):
        ticks, wall = cpu_ticks(), time.perf_counter() - self.wall
        if ticks is not None and self.ticks is not None and wall > 0:
            busy, own = (now - before for now, before in zip(ticks, self.ticks, strict=True))
            self.other_cores = max(0.0, (busy - own) / os.sysconf("SC_CLK_TCK") / wall)
        if self.device == "cuda":
            self.mib = (torch.cuda.max_memory_allocated() - self.start) / 2**20
        else:
            self.mib = max(0, self._cpu_peak() - self.start) / 1024
        return False


def time_call(fn: Callable[[], object], repeats: int, warmup: int, device: str) -> list[float]:
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def matmul_peak_gflops(device: str, dtype: torch.dtype, repeats: int) -> tuple[float, int]:
    """GFLOP/s of one large square matmul (median over repeats), and its side."""
    side = PEAK_MATMUL_SIDE[device]
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(side, side, device=device, dtype=dtype, generator=generator)
    b = torch.randn(side, side, device=device, dtype=dtype, generator=generator)
    times = time_call(lambda: torch.mm(a, b), max(repeats, PEAK_MATMUL_MIN_REPEATS), 1, device)
    return 2 * side**3 / statistics.median(times) / 1e9, side


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read(), re.MULTILINE)
        return match.group(1) if match else platform.processor()
    except OSError:
        return platform.processor()


__all__ = [
    "RowMonitor",
    "conv_flops",
    "cpu_name",
    "cpu_ticks",
    "decoder_and_head_flops",
    "encoder_flops",
    "fmt",
    "linear_flops",
    "matmul_peak_gflops",
    "quantizer_flops",
    "synchronize",
    "time_call",
    "torch_counted_flops",
    "transformer_stack_flops",
    "vq_decoder_flops",
    "vq_encoder_flops",
]

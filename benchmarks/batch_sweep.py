"""Batch sweep: images/s and % of the matmul peak of `run.py` rows over batch sizes, to find the knee.

Each batch size is one `run.py` measurement (same preset, device, dtype, compile and repeats); the table shows
where throughput stops growing with the batch. JSON with every run's full results goes to `--json`.

    python benchmarks/batch_sweep.py --device cuda --dtype bfloat16 --batch-sizes 16,32,64,128,256
    python benchmarks/batch_sweep.py --size tiny --batch-sizes 1,2,4 --threads 2     # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the benchmark beside this script)

DEFAULT_ROWS = "gen_step,generate,tokenize,decode"


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default="16,32,64,128", help="comma-separated batch sizes")
    parser.add_argument("--only", default=DEFAULT_ROWS, help=f"rows of run.py (default {DEFAULT_ROWS})")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    args, passed_on = parser.parse_known_args(argv)
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        parser.error(f"--batch-sizes: expected comma-separated integers, got {args.batch_sizes!r}")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        parser.error(f"--batch-sizes: expected integers >= 1, got {args.batch_sizes}")
    return args, passed_on


def table(results: list[dict]) -> str:
    rows = [row["name"] for row in results[0]["rows"]]
    lines = ["| batch | " + " | ".join(f"{name} img/s | {name} % peak" for name in rows) + " |",
             "|---" * (1 + 2 * len(rows)) + "|"]
    for result in results:
        cells = []
        for row in result["rows"]:
            fraction = row["fraction_of_peak"]
            cells += [f"{row['images_per_s']:.1f}" if row["images_per_s"] else "n/a",
                      f"{100 * fraction:.0f} %" if fraction else "n/a"]
        lines.append(f"| {result['args']['batch_size']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    args, passed_on = parse_args(argv)
    results = [run.main([*passed_on, "--batch-size", str(batch), "--only", args.only]) for batch in args.batch_sizes]
    print(f"\n## Batch sweep\n\n{table(results)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()

"""MAGE vs MAE vs I-JEPA on the MNIST digits: pretrain all three with the same budget, probe them the same way,
score MAGE's samples, and write docs/results.md with plots (see `mage_hf.comparison.harness`).

    python scripts/compare_mnist.py                        # the run behind docs/results.md (CPU, ~1 h on 2 cores)
    python scripts/compare_mnist.py --steps 50 --eval-every 25 --fid-images 50 --docs-dir /tmp/quick   # smoke test
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from mage_hf.comparison.harness import CONTENDERS, HarnessConfig, run_comparison
from mage_hf.comparison.report import write_report

REPO_ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    defaults = HarnessConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument("--fid-images", type=int, default=defaults.fid_images)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--docs-dir", default=str(REPO_ROOT / "docs"), help="where results.md and plots go")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = HarnessConfig(
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate, eval_every=args.eval_every,
        seed=args.seed, contenders=tuple(args.contenders), fid_images=args.fid_images,
        warmup_steps=min(defaults.warmup_steps, max(1, args.steps // 10)),
    )
    results = run_comparison(config, log=lambda message: print(message, flush=True))
    command = "python scripts/compare_mnist.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    path = write_report(results, args.docs_dir, command.strip())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m mage_hf.comparison mae|ijepa ...`: train MAE or I-JEPA with the loop and flags of `mage-hf pretrain`
(see `mage_hf.comparison.tasks`; `--help` on each command lists its flags)."""

from __future__ import annotations

import argparse
import sys

from .tasks import COMMANDS, run_comparison_task


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = argparse.ArgumentParser(prog="python -m mage_hf.comparison", description=__doc__)
        parser.add_argument("command", choices=sorted(COMMANDS))
        parser.parse_args(argv[:1])  # prints usage and exits
        return 2
    add_arguments, task_class = COMMANDS[argv[0]]
    parser = argparse.ArgumentParser(prog=f"python -m mage_hf.comparison {argv[0]}")
    add_arguments(parser)
    return run_comparison_task(parser.parse_args(argv[1:]), task_class)


if __name__ == "__main__":
    sys.exit(main())

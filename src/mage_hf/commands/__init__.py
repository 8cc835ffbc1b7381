"""The `mage-hf` command line (also `python -m mage_hf` and `accelerate launch -m mage_hf`).

One dispatcher and one error boundary for every command. A command is an object (a module, or an attribute of one)
with `add_arguments(parser)` and `run(args) -> int`; it is imported only when it runs, so `mage-hf --help` stays fast.
Bad input of any command ends as `mage-hf <command>: error: <message>` on stderr with exit status 2 (argparse's own
usage errors already look like that); `--debug` anywhere on the line shows the traceback instead.
"""

import argparse
import importlib
import sys

# command name -> ("module" or "module:attribute" implementing it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("mage_hf.commands.generate", "generate or inpaint images with a MagePipeline (default: mage-mnist)"),
    "convert": ("mage_hf.commands.convert", "convert original MAGE / VQGAN checkpoints to mage_hf folders"),
    "push-to-hub": ("mage_hf.commands.push_to_hub", "upload a saved mage_hf folder (with its model card) to the Hub"),
    "pretrain": ("mage_hf.commands.train:pretrain", "masked-token pretraining (class-conditional, MAGE-C) with accelerate"),
    "train-tokenizer": ("mage_hf.commands.train:train_tokenizer", "train or continue the VQGAN tokenizer with accelerate"),
    "finetune": ("mage_hf.commands.train:finetune", "fine-tune a pretrained MAGE for image classification"),
    "linprobe": ("mage_hf.commands.train:linprobe", "linear probe (BatchNorm + linear head) on a frozen MAGE encoder"),
    "tokenize-dataset": ("mage_hf.commands.tokenize_dataset", "token grids of K augmented views per image, for pretrain"),
    "evaluate": ("mage_hf.commands.evaluate", "evaluate generation (FID, IS, precision/recall) or representations"),
    "demo": ("mage_hf.commands.demo", "serve the gradio demo (generate, inpaint, variations, features) in a browser"),
}
# What a command's bad input raises: reported as one line, exit status 2.
USER_ERRORS = (ValueError, TypeError, OSError, ImportError)
DEBUG_FLAG = "--debug"


def load_command(name: str):
    """The object implementing command `name` (imports its module)."""
    module_name, _, attribute = COMMANDS[name][0].partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mage-hf", description="MAGE for the Hugging Face ecosystem.")
    parser.add_argument(DEBUG_FLAG, action="store_true", help="show tracebacks instead of one-line errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `mage-hf <command> ...`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    try:  # argparse prints help (status 0) or "mage-hf [<name>]: error: ..." (status 2) and raises SystemExit
        if not argv or argv[0] not in COMMANDS:
            build_parser().parse_args(argv)
            return 2
        name = argv[0]
        command = load_command(name)
        parser = argparse.ArgumentParser(prog=f"mage-hf {name}", description=COMMANDS[name][1])
        command.add_arguments(parser)
        args = parser.parse_args(argv[1:])
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        return int(command.run(args) or 0)
    except USER_ERRORS as error:
        if debug:
            raise
        print(f"mage-hf {name}: error: {error}", file=sys.stderr)
        return 2


__all__ = ["COMMANDS", "build_parser", "load_command", "main"]

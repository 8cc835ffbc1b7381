"""The command line's one error boundary: every command refuses bad input with `mage-hf <command>: error: <message>`
on stderr and exit status 2 (`--debug` shows the traceback instead); the entry points all reach it."""

import subprocess
import sys
from pathlib import Path

import pytest

from mage_hf.commands import COMMANDS, main

REPO_ROOT = Path(__file__).resolve().parents[1]

# One bad invocation per command: checks in the commands themselves (ValueError and friends) and argparse's own.
BAD_INVOCATIONS = {
    "generate": ["--num-images", "0"],
    "convert": ["--output-dir", "{tmp}/out"],  # neither --checkpoint nor --vqgan-checkpoint
    "push-to-hub": ["{tmp}/missing", "--repo-id", "user/name"],
    "pretrain": ["--model-config", "tiny", "--output-dir", "{tmp}/run", "--train-batch-size", "0"],
    "train-tokenizer": ["--output-dir", "{tmp}/run", "--train-batch-size", "0"],
    "finetune": ["--output-dir", "{tmp}/run", "--train-batch-size", "0"],
    "linprobe": ["--output-dir", "{tmp}/run", "--train-batch-size", "0"],
    "tokenize-dataset": ["--tokenizer", "{tmp}/tok", "--dataset-name", "{tmp}/data", "--output-dir", "{tmp}/out",
                         "--num-views", "0"],
    "evaluate": ["generation", "--pipeline", "default"],  # no real images
    "demo": ["--port", "not-a-port"],
}


def test_every_command_has_a_bad_invocation():
    assert set(BAD_INVOCATIONS) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(BAD_INVOCATIONS))
def test_bad_input_gives_one_error_line_and_exit_2(command, tmp_path, capsys):
    argv = [arg.format(tmp=tmp_path) for arg in BAD_INVOCATIONS[command]]
    assert main([command, *argv]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith(f"mage-hf {command}: error: "), error
    assert "Traceback" not in "\n".join(error)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="num-images"):
        main(["generate", "--num-images", "0", "--debug"])


def test_help_and_unknown_commands(capsys):
    assert main(["--help"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in COMMANDS)
    assert main(["no-such-command"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_generate_writes_only_what_was_asked(tmp_path, monkeypatch):
    """`--output-dir` alone writes the PNGs and no grid; `--output` alone writes the grid only."""
    monkeypatch.chdir(tmp_path)  # where a default grid would land
    args = ["generate", "--num-images", "2", "--steps", "2", "--device", "cpu", "--no-progress"]
    assert main([*args, "--output-dir", "pngs"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pngs"]
    assert sorted(p.name for p in (tmp_path / "pngs").iterdir()) == ["00000.png", "00001.png"]
    assert main([*args, "--output", "grid.png"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "pngs"]
    assert main(args) == 0  # neither: the default grid
    assert (tmp_path / "samples.png").is_file()


@pytest.mark.parametrize(
    "entry", [["-m", "mage_hf"], [str(REPO_ROOT / "conversion" / "convert_mage_original.py")]], ids=["module", "script"]
)
def test_entry_points_reach_the_same_boundary(entry, tmp_path):
    command = [] if entry[0] != "-m" else ["convert"]
    result = subprocess.run([sys.executable, *entry, *command, "--output-dir", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("mage-hf convert: error: pass `--checkpoint`")

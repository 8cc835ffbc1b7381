"""Heavy jobs across processes: under `accelerate launch` (2 CPU processes, gloo) `mage-hf generate`, `evaluate
generation` and `evaluate representation` split their images by index, and the results equal one process's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from mage_hf import DEFAULT_MODEL
from mage_hf.commands import main

REPO_ROOT = Path(__file__).resolve().parents[1]
# The launch line of docs/conventions.md: the one that starts two CPU processes here.
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
          "-m", "mage_hf"]


def _two_processes(*argv: str, cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT / "src")}
    result = subprocess.run([*LAUNCH, *argv], capture_output=True, text=True, env=env, timeout=600, cwd=cwd)
    assert result.returncode == 0, result.stderr[-4000:]


def _pixels(folder: Path) -> list[np.ndarray]:
    return [np.asarray(PIL.Image.open(path), dtype=np.int16) for path in sorted(folder.glob("*.png"))]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    from mage_hf.mnist import build_dataset_dict

    data = build_dataset_dict()
    data["train"] = data["train"].shuffle(seed=0).select(range(40))  # the splits are sorted by class
    data["test"] = data["test"].shuffle(seed=0).select(range(20))
    folder = tmp_path_factory.mktemp("digits") / "mnist"
    data.save_to_disk(str(folder))
    return folder


@pytest.mark.slow
def test_generate_gives_the_same_images_on_two_processes(tmp_path):
    argv = ["generate", "--class-label", "1", "2", "3", "--num-images", "5", "--steps", "3", "--device", "cpu",
            "--no-progress", "--batch-size", "2"]
    assert main([*argv, "--output-dir", str(tmp_path / "one")]) == 0
    _two_processes(*argv, "--output-dir", str(tmp_path / "two"), "--output", str(tmp_path / "grid.png"), cwd=tmp_path)
    one, two = _pixels(tmp_path / "one"), _pixels(tmp_path / "two")
    assert len(one) == len(two) == 5
    # image i is seeded seed + i on whichever process makes it; the decode may round one grey level differently
    assert all(np.abs(a - b).max() <= 1 for a, b in zip(one, two))
    assert PIL.Image.open(tmp_path / "grid.png").size == (3 * 256, 2 * 256)  # 5 images, gathered by the main process


@pytest.mark.slow
def test_evaluations_match_one_process(digits, tmp_path):
    generation = ["evaluate", "generation", "--real-dataset", str(digits), "--real-split", "test", "--pipeline",
                  "default", "--num-images", "6", "--batch-size", "3", "--steps", "3", "--class-conditional",
                  "--k", "2", "--no-progress", "--device", "cpu"]
    representation = ["evaluate", "representation", "--model", DEFAULT_MODEL,
                      "--dataset-name", str(digits), "--probes", "linear", "knn", "--k", "3", "--batch-size", "8",
                      "--no-progress", "--device", "cpu"]
    assert main([*generation, "--output", str(tmp_path / "g1.json"), "--save-dir", str(tmp_path / "s1")]) == 0
    assert main([*representation, "--output", str(tmp_path / "r1.json")]) == 0
    _two_processes(*generation, "--output", str(tmp_path / "g2.json"), "--save-dir", str(tmp_path / "s2"),
                   cwd=tmp_path)
    _two_processes(*representation, "--output", str(tmp_path / "r2.json"), cwd=tmp_path)
    g1, g2 = (json.loads((tmp_path / f"g{n}.json").read_text()) for n in (1, 2))
    assert g2["num_processes"] == 2 and g1["num_generated"] == g2["num_generated"] == 6
    assert g2["fid"] == pytest.approx(g1["fid"], rel=1e-3)  # the same images; Inception batches differ
    assert all(np.abs(a - b).max() <= 1 for a, b in zip(_pixels(tmp_path / "s1"), _pixels(tmp_path / "s2")))
    r1, r2 = (json.loads((tmp_path / f"r{n}.json").read_text()) for n in (1, 2))
    assert r2["num_processes"] == 2 and (r1["num_train"], r1["num_test"]) == (r2["num_train"], r2["num_test"])
    assert r2["linear"]["accuracy"] == pytest.approx(r1["linear"]["accuracy"], abs=1e-9)
    assert r2["knn"]["accuracy"] == pytest.approx(r1["knn"]["accuracy"], abs=1e-9)

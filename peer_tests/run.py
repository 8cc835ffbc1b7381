#!/usr/bin/env python
"""Run transformers' and diffusers' own common test suites against mage_hf ("peer suites").

The peer libraries' test mixins are not vendored: they are copied into the git-ignored folder `.peer/` at the
repository root (transformers from its sdist `tests/` folder plus a few helper modules, diffusers from a git
checkout or bare repository of its source), our test modules in `peer_tests/` are copied next to them so that their
relative imports (`from ...test_modeling_common import ModelTesterMixin`) resolve, and pytest runs there, one
process per suite. See peer_tests/README.md.

Usage: python peer_tests/run.py [--suite transformers|diffusers|all] [--refresh] [-k EXPR] [--timeout S]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEER = REPO / ".peer"

DEFAULTS = {
    "PEER_TRANSFORMERS_SRC": "/work/peer/transformers-5.24.0",
    "PEER_TRANSFORMERS_HELPERS": "/work/peer/transformers-helpers",
    "PEER_DIFFUSERS_SRC": "/work/.mirror/huggingface+diffusers/repo",
    "PEER_DIFFUSERS_REV": "HEAD",
}

# Test dependencies of the peer suites that mage_hf's own test extra does not pull in: module -> pip requirement.
TEST_DEPS = {
    "parameterized": "parameterized==0.9.0",
    "pytest_timeout": "pytest-timeout==2.4.0",
    "requests_mock": "requests-mock==1.12.1",  # imported by diffusers tests/models/test_modeling_common.py
}

# Modules that transformers' common tests import but that its sdist does not ship. When the helpers folder lacks
# one of those listed here, a stub is written. Both are only used by `test_modeling_common.py` as a base class
# (ExportTesterMixin: its tests are all `@slow` upstream) or in an `issubclass` check (GenerationTesterMixin).
STUBS = {
    "tests/exporters/test_export.py": (
        '"""Stub written by mage_hf peer_tests/run.py: the v5.24.0 revision of this module was not available.\n\n'
        "Upstream, `ExportTesterMixin` adds torch.export / ONNX / OpenVINO / ExecuTorch export tests, all marked\n"
        '`@slow`; with this stub none of them is collected."""\n\n\n'
        "class ExportTesterMixin:\n    pass\n"
    ),
    "tests/generation/test_utils.py": (
        '"""Stub written by mage_hf peer_tests/run.py: the v5.24.0 revision of this module was not available.\n\n'
        "test_modeling_common.py only uses `GenerationTesterMixin` in an `issubclass` check (MAGE models cannot\n"
        '`generate`, so the check is that the test class does *not* inherit it)."""\n\n\n'
        "class GenerationTesterMixin:\n    pass\n"
    ),
}
REQUIRED_HELPERS = ("tests/utils/test_configuration_utils.py", "utils/fetch_hub_objects_for_ci.py")

# Where each of our modules goes inside the copies (relative to .peer/<library>).
PLACEMENT = {
    "transformers": {
        "transformers/test_modeling_mage.py": "tests/models/mage/test_modeling_mage.py",
        "transformers/test_image_processing_mage.py": "tests/models/mage/test_image_processing_mage.py",
    },
    "diffusers": {
        "diffusers/test_mage.py": "tests/pipelines/mage/test_mage.py",
        "diffusers/test_mage_unconditional.py": "tests/pipelines/mage/test_mage_unconditional.py",
        "diffusers/test_mage_inpaint.py": "tests/pipelines/mage/test_mage_inpaint.py",
        "diffusers/test_mage_img2img.py": "tests/pipelines/mage/test_mage_img2img.py",
        "diffusers/mage_dummies.py": "tests/pipelines/mage/mage_dummies.py",
        "diffusers/test_scheduler_mage.py": "tests/schedulers/test_scheduler_mage.py",
    },
}
TEST_PATHS = {"transformers": ["tests/models/mage"], "diffusers": ["tests/pipelines/mage", "tests/schedulers/test_scheduler_mage.py"]}

PYTEST_INI = """[pytest]
# Written by mage_hf peer_tests/run.py, so that pytest does not pick up mage_hf's own configuration.
markers =
    slow: peer-library slow tests
    flash_attn_test: flash attention tests
    flash_attn_3_test: flash attention 3 tests
    all_flash_attn_test: flash attention tests
    torch_compile_test: torch.compile tests
    torch_export_test: torch.export tests
    generate: generation tests
    is_training_test: training tests
filterwarnings =
    ignore::FutureWarning
"""


def log(message: str) -> None:
    print(f"[peer] {message}", flush=True)


def setting(args: argparse.Namespace, name: str) -> str:
    value = getattr(args, name.lower().removeprefix("peer_"), None)
    return value or os.environ.get(name) or DEFAULTS[name]


def ensure_test_deps(no_install: bool) -> None:
    missing = [req for module, req in TEST_DEPS.items() if importlib.util.find_spec(module) is None]
    if not missing:
        return
    if no_install:
        sys.exit(f"missing test dependencies {missing}; install them or drop --no-install")
    log(f"installing {' '.join(missing)}")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)


def touch_packages(root: Path, *folders: str) -> None:
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
        init = root / folder / "__init__.py"
        if not init.exists():
            init.write_text("")


def setup_transformers(args: argparse.Namespace) -> Path:
    dest = PEER / "transformers"
    src = Path(setting(args, "PEER_TRANSFORMERS_SRC"))
    helpers = Path(setting(args, "PEER_TRANSFORMERS_HELPERS"))
    if args.refresh and dest.exists():
        shutil.rmtree(dest)
    if not (dest / "tests").exists():
        if not (src / "tests" / "test_modeling_common.py").exists():
            sys.exit(f"{src} is not an extracted transformers sdist (no tests/test_modeling_common.py); set PEER_TRANSFORMERS_SRC")
        log(f"copying {src / 'tests'} -> {dest / 'tests'}")
        shutil.copytree(src / "tests", dest / "tests")
        touch_packages(dest, "tests", "tests/models", "tests/exporters", "tests/generation", "tests/utils")
        for rel in REQUIRED_HELPERS:
            if not (helpers / rel).exists():
                sys.exit(f"missing helper module {helpers / rel} (see peer_tests/README.md); set PEER_TRANSFORMERS_HELPERS")
        for path in sorted(p for p in helpers.rglob("*.py")):
            rel = path.relative_to(helpers)
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / rel)
            log(f"helper {rel}")
        for rel, text in STUBS.items():
            if not (dest / rel).exists():
                (dest / rel).write_text(text)
                log(f"stub   {rel}")
    touch_packages(dest, "tests/models/mage")
    (dest / "pytest.ini").write_text(PYTEST_INI)
    return dest


def setup_diffusers(args: argparse.Namespace) -> Path:
    dest = PEER / "diffusers"
    src = Path(setting(args, "PEER_DIFFUSERS_SRC"))
    rev = setting(args, "PEER_DIFFUSERS_REV")
    if args.refresh and dest.exists():
        shutil.rmtree(dest)
    if not (dest / "tests").exists():
        dest.mkdir(parents=True, exist_ok=True)
        if (src / "tests" / "pipelines" / "test_pipelines_common.py").exists():  # a checkout
            log(f"copying {src / 'tests'} -> {dest / 'tests'}")
            shutil.copytree(src / "tests", dest / "tests")
            (dest / "REVISION").write_text(f"{src} (work tree)\n")
        else:  # a bare repository or a .git folder
            git = ["git", f"--git-dir={src}"]
            commit = subprocess.run([*git, "rev-parse", rev], check=True, capture_output=True, text=True).stdout.strip()
            log(f"extracting tests/ of {src} at {commit}")
            with tempfile.TemporaryDirectory() as tmp:
                archive = Path(tmp) / "tests.tar"
                subprocess.run([*git, "archive", "-o", str(archive), commit, "tests"], check=True)
                with tarfile.open(archive) as tar:
                    tar.extractall(dest, filter="data")
            version = subprocess.run([*git, "show", f"{commit}:setup.py"], capture_output=True, text=True).stdout
            version = next((line.split('"')[1] for line in version.splitlines() if "version=" in line), "?")
            (dest / "REVISION").write_text(f"{src} {commit} (setup.py version {version})\n")
    touch_packages(dest, "tests/pipelines/mage")
    (dest / "pytest.ini").write_text(PYTEST_INI)
    return dest


def place_our_modules(library: str, dest: Path) -> None:
    for ours, theirs in PLACEMENT[library].items():
        shutil.copy2(HERE / ours, dest / theirs)


def parse_junit(path: Path) -> dict:
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    problems, skips = [], []
    if not path.exists():
        return {"counts": counts, "problems": problems, "skips": skips}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
                message = (child.get("message") or child.text or "").strip().splitlines()
                problems.append({"test": name, "outcome": outcome, "message": message[0][:300] if message else ""})
                break
            if child.tag == "skipped":
                outcome = "skipped"
                skips.append({"test": name, "reason": (child.get("message") or "").strip()[:300]})
                break
        counts[outcome] += 1
    return {"counts": counts, "problems": problems, "skips": skips}


def run_suite(library: str, dest: Path, args: argparse.Namespace) -> dict:
    results = PEER / "results"
    results.mkdir(exist_ok=True)
    junit = results / f"{library}.xml"
    junit.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(dest / "pytest.ini"),
        "--rootdir", str(dest), "--junitxml", str(junit), "-o", "junit_family=xunit1", "-rfEs",
        "--timeout", str(args.timeout), *TEST_PATHS[library],
    ]
    if args.k:
        command += ["-k", args.k]
    command += args.pytest_args
    env = dict(os.environ)
    if args.mage_src:  # test another mage_hf tree (e.g. `git archive HEAD src`) without touching the editable install
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(args.mage_src).resolve()), env.get("PYTHONPATH")]))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    env.setdefault("OMP_NUM_THREADS", str(args.threads))
    env.setdefault("MKL_NUM_THREADS", str(args.threads))
    log(f"{library}: {' '.join(command[1:])}  (cwd {dest})")
    with open(results / f"{library}.log", "w") as out:
        proc = subprocess.run(command, cwd=dest, env=env, stdout=out, stderr=subprocess.STDOUT)
    summary = parse_junit(junit)
    summary["returncode"] = proc.returncode
    summary["log"] = str(results / f"{library}.log")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=("transformers", "diffusers", "all"), default="all")
    parser.add_argument("--refresh", action="store_true", help="re-copy the peer libraries' tests into .peer/")
    parser.add_argument("--setup-only", action="store_true", help="prepare .peer/ and stop")
    parser.add_argument("--no-install", action="store_true", help="fail instead of pip-installing test deps")
    parser.add_argument("-k", default=None, help="pytest -k expression")
    parser.add_argument("--timeout", type=int, default=300, help="per-test timeout in seconds (pytest-timeout)")
    parser.add_argument("--threads", type=int, default=1, help="OMP/MKL threads for the test processes")
    parser.add_argument("--transformers-src", dest="transformers_src", help="extracted transformers sdist")
    parser.add_argument("--transformers-helpers", dest="transformers_helpers", help="folder of helper modules")
    parser.add_argument("--diffusers-src", dest="diffusers_src", help="diffusers checkout or bare git dir")
    parser.add_argument("--diffusers-rev", dest="diffusers_rev", help="revision, for a git dir (default HEAD)")
    parser.add_argument("--mage-src", dest="mage_src", help="a src/ folder holding mage_hf to test instead of the "
                        "installed one (put first on PYTHONPATH)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args()

    ensure_test_deps(args.no_install)
    libraries = ["transformers", "diffusers"] if args.suite == "all" else [args.suite]
    PEER.mkdir(exist_ok=True)
    dests = {}
    for library in libraries:
        dest = setup_transformers(args) if library == "transformers" else setup_diffusers(args)
        place_our_modules(library, dest)
        dests[library] = dest
    if args.setup_only:
        return 0

    summaries = {library: run_suite(library, dest, args) for library, dest in dests.items()}
    (PEER / "results" / "summary.json").write_text(json.dumps(summaries, indent=2) + "\n")
    print()
    for library, summary in summaries.items():
        c = summary["counts"]
        print(f"== {library}: {c['passed']} passed, {c['failed']} failed, {c['error']} errors, {c['skipped']} skipped"
              f"  (pytest exit {summary['returncode']}; log {summary['log']})")
        for problem in summary["problems"]:
            print(f"   {problem['outcome'].upper():6} {problem['test']}: {problem['message']}")
    print(f"\nJUnit XML, logs and summary.json under {PEER / 'results'}")
    return 0 if all(s["returncode"] == 0 for s in summaries.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

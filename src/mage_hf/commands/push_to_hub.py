"""`mage-hf push-to-hub DIR --repo-id USER/NAME`: upload a saved mage_hf folder (model, pipeline or tokenizer).

    mage-hf push-to-hub mage-vit-b --repo-id user/mage-vit-b

The folder is checked first: it must be a `save_pretrained` folder (config.json or model_index.json), hold only
safetensors weights and a model card (README.md: `mage-hf convert` and the training commands write one, a plain
`save_pretrained` does not; `mage_hf.model_card.write_model_card` adds one).
"""

import argparse
from pathlib import Path

UNSAFE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="a folder written by save_pretrained / mage-hf convert / training")
    parser.add_argument("--repo-id", required=True, help="Hub repository, `user/name`")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", help="branch to push to (default: main)")
    parser.add_argument("--commit-message", default="Upload MAGE (mage_hf)")
    parser.add_argument("--token", help="Hub token (default: the logged-in token / HF_TOKEN)")


def check_folder(folder: Path) -> None:
    """Raise ValueError unless `folder` is a complete mage_hf folder with a model card and safetensors only."""
    if not folder.is_dir():
        raise ValueError(f"`folder` {folder} is not a directory")
    if not any((folder / name).is_file() for name in ("config.json", "model_index.json")):
        raise ValueError(f"`folder` {folder} has no config.json or model_index.json: not a save_pretrained folder")
    if not (folder / "README.md").is_file():
        raise ValueError(f"`folder` {folder} has no README.md model card")
    unsafe = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix in UNSAFE_WEIGHT_SUFFIXES)
    if unsafe:
        raise ValueError(f"`folder` holds pickled weights {unsafe}; mage_hf pushes safetensors only")
    if not any(folder.rglob("*.safetensors")):
        raise ValueError(f"`folder` {folder} holds no .safetensors weights")


def push_folder(folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                commit_message: str = "Upload MAGE (mage_hf)", token: str | None = None) -> str:
    """Create `repo_id` if needed and upload `folder`; returns the commit URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    check_folder(folder)
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"`repo_id` must look like `user/name`, got {repo_id!r}")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, revision=revision,
                               commit_message=commit_message)
    return str(commit.commit_url)


def run(args: argparse.Namespace) -> int:
    url = push_folder(args.folder, args.repo_id, private=args.private, revision=args.revision,
                      commit_message=args.commit_message, token=args.token)
    print(f"pushed {args.folder} -> {url}")
    return 0


__all__ = ["add_arguments", "check_folder", "push_folder", "run"]

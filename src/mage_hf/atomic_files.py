"""Writing outputs atomically: a folder or file appears complete, or not at all (a temporary sibling is renamed into
place only on success), so an interrupted command never leaves a half-written model, checkpoint or results file."""

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False, flag: str = "output directory") -> Iterator[Path]:
    """Yield a temporary folder beside `path` that replaces `path` when the block succeeds (removed otherwise).

    A non-empty existing `path` is refused (`FileExistsError`) unless `overwrite`; the old folder is moved aside
    before the new one is renamed in, so a failure never leaves neither.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{flag} `{path}` exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{flag} `{path}` exists and is not empty (pass --overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    umask = os.umask(0)  # mkdtemp creates 0o700; give the final folder the permissions of a plain `mkdir`
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def shared_atomic_directory(path: str | os.PathLike, state, overwrite: bool = False) -> Iterator[Path]:
    """`atomic_directory` for every process of an accelerate run (`state`: a `PartialState`): the main process
    makes the temporary folder and tells the others its path; all write into it; once every process is done the
    main process renames it into place."""
    from accelerate.utils import broadcast_object_list

    with contextlib.ExitStack() as stack:
        tmp = [stack.enter_context(atomic_directory(path, overwrite)) if state.is_main_process else None]
        if state.num_processes > 1:
            broadcast_object_list(tmp)
        yield Path(tmp[0])
        state.wait_for_everyone()


def write_json_atomically(path: str | os.PathLike, data: dict) -> Path:
    """Write `data` as indented JSON to `path` through a temporary file in the same folder and `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(data, file, indent=2)
            file.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


__all__ = ["atomic_directory", "shared_atomic_directory", "write_json_atomically"]

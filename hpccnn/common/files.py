"""Files written whole or not at all: every file hpccnn writes goes through write_atomic.

A reader (another rank, the guard, hpccnn.report, a job killed half-way and resumed) never
sees a truncated CSV, JSON, plot, model or checkpoint: each is written under a temporary name
beside its place and renamed into it.
"""

import json
import os
import shutil
from pathlib import Path


def write_atomic(path, write, replace=True) -> None:
    """Calls write(tmp) with a temporary path beside path, then renames tmp to path.

    write may make tmp a file or a folder (a checkpoint). replace=False keeps an existing path:
    the first writer wins (os.link).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    _remove(tmp)  # a stale one from an attempt that died with this pid
    try:
        write(tmp)
        if not replace:
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        elif tmp.is_dir():
            _remove(path)  # os.replace can't replace a folder that has files in it
            os.replace(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_bytes(path, data: bytes) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path, text: str, replace=True) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_text(text), replace)


def write_json(path, obj, replace=True) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n", replace)


def read_json(path):
    """A JSON file's content, or None when it is missing or unreadable (a run still being written)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None

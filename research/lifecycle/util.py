"""Small helpers shared by the lifecycle modules: hashing, canonical JSON (both defined once in
:mod:`engine.hashing`), the operator's name, UTC timestamps, atomic durable file writes."""

from __future__ import annotations

import datetime as _dt
import getpass
import os
from pathlib import Path

from engine.hashing import canonical_json, sha256_file
from engine.paths import fsync_dir

__all__ = [
    "ZERO_HASH",
    "atomic_write_text",
    "canonical_json",
    "fsync_dir",
    "operator_name",
    "sha256_file",
    "utc_now_iso",
]

ZERO_HASH = "0" * 64


def utc_now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def operator_name() -> str:
    """Who acts: ``KQ_OPERATOR`` if set, else the OS user."""
    who = os.environ.get("KQ_OPERATOR", "").strip()
    if who:
        return who
    try:
        return getpass.getuser()
    except Exception:  # no user database entry (containers)
        return f"uid-{os.getuid()}"


def atomic_write_text(path: str | Path, text: str, *, tmp_dir: str | Path | None = None) -> None:
    """Write ``text`` to ``path`` all-or-nothing: a temporary file (in ``tmp_dir``, default the same
    folder; it must be on the same filesystem), flushed and fsynced, then ``os.replace``; the folder
    is fsynced so the rename survives a crash."""
    path = Path(path)
    d = Path(tmp_dir) if tmp_dir is not None else path.parent
    tmp = d / f".{path.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)

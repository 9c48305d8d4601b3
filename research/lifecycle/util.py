"""Small helpers shared by the lifecycle modules: hashing, canonical JSON, atomic durable writes."""

from __future__ import annotations

import datetime as _dt
import getpass
import hashlib
import json
import os
from pathlib import Path
from typing import Any

ZERO_HASH = "0" * 64


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    """One spelling per value: sorted keys, no spaces, ASCII only (what the chain hashes)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def utc_now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def operator_name() -> str:
    """Who acts: ``KQ_OPERATOR`` if set, else the OS user."""
    who = os.environ.get("KQ_OPERATOR", "").strip()
    if who:
        return who
    try:
        return getpass.getuser()
    except Exception:  # no user database entry (containers)
        return f"uid-{os.getuid()}"


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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

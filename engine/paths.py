"""Where things live: the repository, the embedded stores and the shared real data; and how an
output folder is written (:func:`check_out_dir`, :func:`atomic_folder`).

``KQ_SHARED`` overrides the location of the shared folder (default: ``../shared`` next to the
repository root). ``KQ_STORE`` overrides the market store path (default ``data/market.duckdb``).
``KQ_DATA`` and ``KQ_CONFIGS`` override the data and configs folders: a checkout (or an editable
install) uses its own ``data/`` and ``configs/``; an installed package (the Docker image) has neither
beside it, so the image sets both (``/app/data``, ``/app/configs``), and otherwise the current
folder's ``configs/`` is used when it exists.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """The shared folder (real market data, Kraken spec). May not exist on a fresh machine."""
    env = os.environ.get("KQ_SHARED")
    return Path(env).expanduser().resolve() if env else (REPO_ROOT.parent / "shared").resolve()


def shared_ohlcv_dir() -> Path:
    return shared_dir() / "data" / "ohlcv"


def data_dir() -> Path:
    env = os.environ.get("KQ_DATA")
    return Path(env).expanduser() if env else REPO_ROOT / "data"


def default_store_path() -> Path:
    env = os.environ.get("KQ_STORE")
    return Path(env).expanduser() if env else data_dir() / "market.duckdb"


def configs_dir() -> Path:
    env = os.environ.get("KQ_CONFIGS")
    if env:
        return Path(env).expanduser()
    here = REPO_ROOT / "configs"
    if here.is_dir():
        return here
    cwd = Path.cwd() / "configs"
    return cwd if cwd.is_dir() else here


def check_out_dir(out: str | Path, option: str = "--out") -> Path:
    """An output folder a command may write: absent or a folder, inside an existing parent.

    Commands call it before any work, so a bad path fails at once; the writers call it again.
    """
    from engine.errors import InputError

    p = Path(out)
    if p.exists() and not p.is_dir():
        raise InputError(f"{option} {out}: exists and is not a folder")
    if not p.parent.exists():
        raise InputError(f"{option} {out}: parent folder {p.parent} does not exist")
    return p


def fsync_dir(path: str | Path) -> None:
    """fsync a folder (its entries: a rename into it survives a crash); a no-op where unsupported."""
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


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(dirpath)


def _unique_sibling(dst: Path, tag: str) -> Path:
    """A new empty hidden folder beside ``dst``, unique to this call (process, thread, time), made
    with the usual permissions (umask), so the folder renamed into place reads like any other."""
    p = dst.parent / f".{dst.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    p.mkdir()
    return p


@contextmanager
def atomic_folder(out: str | Path, option: str = "--out", drop: tuple[str, ...] = ()) -> Iterator[Path]:
    """Write an output folder all-or-nothing: yields a new temporary folder beside ``out`` (a unique
    hidden sibling, so parallel writers never share one); on a clean exit every file in it is
    fsynced and it is moved into place:

    * ``out`` absent (or an empty folder): renamed to ``out`` in one step;
    * ``out`` an existing folder: each top-level entry replaces its namesake (a sub-folder is
      replaced whole), entries of ``out`` that the new output does not have are kept, except those
      named in ``drop`` (an earlier run's outputs that must not sit beside the new ones).

    On an exception the temporary folder is removed and ``out`` is untouched. ``out`` is checked
    with :func:`check_out_dir` first (``option`` names it in the error)."""
    dst = check_out_dir(out, option)
    tmp = _unique_sibling(dst, "tmp")
    try:
        yield tmp
        _fsync_tree(tmp)
        if dst.is_dir() and not any(dst.iterdir()):
            dst.rmdir()
        if not dst.exists():
            os.replace(tmp, dst)
        else:
            old = _unique_sibling(dst, "old")
            try:
                for name in drop:
                    stale = dst / name
                    if (tmp / name).exists() or not (stale.exists() or stale.is_symlink()):
                        continue
                    if stale.is_dir() and not stale.is_symlink():
                        os.replace(stale, old / name)
                    else:
                        stale.unlink()
                for f in sorted(tmp.iterdir()):
                    target = dst / f.name
                    if target.is_dir() and not target.is_symlink():
                        os.replace(target, old / f.name)  # a folder is replaced whole
                    elif f.is_dir() and target.exists():
                        target.unlink()
                    os.replace(f, target)
                fsync_dir(dst)
            finally:
                shutil.rmtree(old, ignore_errors=True)
        fsync_dir(dst.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

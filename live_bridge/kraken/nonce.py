"""One monotonic nonce counter per API key, persisted and locked across threads and processes.

python-kraken-sdk's default nonce is ``int(time.time() * 1e8)`` with no lock: two threads, two
processes or a restart on a slower clock can send a nonce that is not above the last one Kraken
saw, which Kraken answers with ``EAPI:Invalid nonce`` and, when repeated, ``EGeneral:Temporary
lockout``. The SDK asks :meth:`SpotClient.get_nonce` for every private request, so the adapter's
SDK clients override that method with :meth:`NonceCounter.next`.

The counter lives in ``<state_dir>/kraken-nonce-<fingerprint>`` (mode 0600; the fingerprint is a
truncated SHA-256 of the API key, never the key). Each nonce is ``max(last + 1, now * 1e8)`` (the
SDK's scale, so a key used before with the SDK's default stays valid), written and fsynced before
the request leaves. :meth:`NonceCounter.hold` takes a per-path thread lock and an ``flock`` on
``<file>.lock`` and is held from the moment the nonce is drawn until the answer arrives, so
nonces reach Kraken in the order they were drawn, even from parallel callers.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .outcome import Halt, KrakenHalt

SCALE = 100_000_000  # nonces per second, as python-kraken-sdk


def key_fingerprint(key: str) -> str:
    """A short, non-reversible name for an API key (for file names and reprs)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class _PathLock:
    """Re-entrant in-process lock plus an exclusive flock, shared by every counter on one path."""

    def __init__(self, lock_path: Path) -> None:
        self.rlock = threading.RLock()
        self.depth = 0
        self.lock_path = lock_path
        self.fd: int | None = None
        self.owner: int | None = None

    def acquire(self) -> None:
        self.rlock.acquire()
        try:
            if self.depth == 0:
                if self.fd is None:
                    self.fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(self.fd, fcntl.LOCK_EX)
                self.owner = threading.get_ident()
            self.depth += 1
        except BaseException:
            self.rlock.release()
            raise

    def release(self) -> None:
        try:
            self.depth -= 1
            if self.depth == 0 and self.fd is not None:
                self.owner = None
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            self.rlock.release()

    def owned(self) -> bool:
        return self.owner == threading.get_ident()


_LOCKS: dict[str, _PathLock] = {}
_LOCKS_GUARD = threading.Lock()


def _path_lock(path: Path) -> _PathLock:
    k = str(path.resolve())
    with _LOCKS_GUARD:
        pl = _LOCKS.get(k)
        if pl is None:
            pl = _LOCKS[k] = _PathLock(Path(k + ".lock"))
        return pl


class NonceCounter:
    """The persisted counter of one key. Use ``with counter.hold(): ... counter.next() ...``."""

    def __init__(self, state_dir: str | Path, key: str, clock: Callable[[], float] = time.time) -> None:
        d = Path(state_dir)
        d.mkdir(parents=True, exist_ok=True)
        self.path = d / f"kraken-nonce-{key_fingerprint(key)}"
        self.clock = clock
        self._lock = _path_lock(self.path)
        self.last_issued: int | None = None

    @contextmanager
    def hold(self) -> Iterator[None]:
        self._lock.acquire()
        try:
            yield
        finally:
            self._lock.release()

    def _read(self) -> int:
        try:
            text = self.path.read_text(encoding="ascii")
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as e:
            raise KrakenHalt(Halt.NONCE_STATE, f"nonce file {self.path} unreadable ({type(e).__name__})") from None
        s = text.strip()
        if not s.isdigit() or len(s) > 20:
            raise KrakenHalt(
                Halt.NONCE_STATE, f"nonce file {self.path} is corrupt: fix or remove it and use a fresh API key"
            )
        return int(s)

    def _write(self, n: int) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{n}\n".encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def current(self) -> int:
        """The last nonce persisted (0 if none yet)."""
        with self.hold():
            return self._read()

    def next(self) -> int:
        """Draw, persist and return the next nonce. Must be called inside :meth:`hold`."""
        if not self._lock.owned():
            raise RuntimeError("NonceCounter.next() outside hold(): the nonce would race its request")
        n = max(self._read() + 1, int(self.clock() * SCALE))
        self._write(n)
        self.last_issued = n
        return n

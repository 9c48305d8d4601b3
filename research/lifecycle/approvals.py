"""The approvals store: what is approved per environment, and the hash-chained approvals log.

Layout (``lifecycle.approvals_dir``, default ``data/approvals/``)::

    approvals.log         JSON lines, append-only; one entry per state change (promote, rollback)
    paper/state.json      {"current": APPROVAL | null, "previous": [APPROVAL, ...], "last_seq", "last_hash"}
    live/state.json       the same for live; the two environments are independent
    .lock                 fcntl lock file: every read-modify-write holds it exclusively, readers shared

Each log entry carries ``prev_hash`` (the previous entry's ``hash``; 64 zeros for the first) and
``hash = sha256(prev_hash + canonical JSON of the entry without "hash")``, and a ``seq`` counting
from 1. An edited line no longer hashes to its ``hash``; a deleted or reordered line breaks the next
``prev_hash``/``seq``; a deleted LAST line (or any edit of ``state.json``) is caught because the
state files must equal what replaying the whole log produces. :meth:`ApprovalStore.audit` checks both.

The log is written first (append, flush, fsync), then ``state.json`` is replaced atomically: the log
is the truth and the state files are its cache. A crash between the two leaves a state file one
entry behind the log, which the audit reports; ``kq models audit --rebuild-state`` then rewrites the
state files from a log whose chain verifies (never the reverse).

Limits: the chain proves the log is internally consistent, not that nobody rewrote the WHOLE log and
the state files together (there is no external anchor). The hash of every entry is printed by
``kq models promote|rollback``; keeping those lines elsewhere (a ticket, a chat message) anchors it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InputError, IntegrityError
from research.lifecycle.util import ZERO_HASH, atomic_write_text, canonical_json, fsync_dir

__all__ = ["ENVS", "ApprovalStore", "AuditReport", "empty_state", "entry_hash", "replay"]

ENVS = ("paper", "live")
STATE_FORMAT = "krakenquant-approvals-state/1"
LOG_NAME = "approvals.log"


def entry_hash(prev_hash: str, entry: dict) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256((prev_hash + canonical_json(body)).encode()).hexdigest()


def empty_state(env: str) -> dict:
    return {"format": STATE_FORMAT, "env": env, "current": None, "previous": [], "last_seq": 0, "last_hash": ZERO_HASH}


def _approval_of(entry: dict) -> dict:
    """The APPROVAL record a promote entry creates (what state.json keeps per approved model)."""
    return {
        "model": entry["model"],
        "path": entry["path"],
        "manifest_sha256": entry["manifest_sha256"],
        "verdict_sha256": entry.get("verdict_sha256"),
        "seq": entry["seq"],
        "hash": entry["hash"],
        "approved_utc": entry["ts_utc"],
        "who": entry["who"],
    }


def replay(entries: list[dict]) -> tuple[dict[str, dict], list[str]]:
    """State of every environment after applying ``entries`` in order, and replay problems."""
    states = {e: empty_state(e) for e in ENVS}
    probs: list[str] = []
    for en in entries:
        env = en.get("env")
        if env not in states:
            probs.append(f"entry {en.get('seq')}: unknown environment {env!r}")
            continue
        st = states[env]
        act = en.get("action")
        if act == "promote":
            if st["current"] is not None:
                st["previous"].append(st["current"])
            st["current"] = _approval_of(en)
        elif act == "rollback":
            if not st["previous"]:
                probs.append(f"entry {en.get('seq')}: rollback in {env} with nothing to roll back to")
                continue
            if st["previous"][-1]["model"] != en.get("model"):
                probs.append(
                    f"entry {en.get('seq')}: rollback in {env} restores {en.get('model')}, but the "
                    f"previous approval is {st['previous'][-1]['model']}"
                )
                continue
            st["current"] = st["previous"].pop()
        else:
            probs.append(f"entry {en.get('seq')}: unknown action {act!r}")
            continue
        st["last_seq"] = en["seq"]
        st["last_hash"] = en["hash"]
    return states, probs


@dataclass(frozen=True)
class AuditReport:
    ok: bool
    n_entries: int
    problems: tuple[str, ...]
    states: dict  # env -> state replayed from the log
    head_hash: str

    @property
    def message(self) -> str:
        if self.ok:
            return f"approvals log ok: {self.n_entries} entries, chain head {self.head_hash[:16]}"
        return (
            "approvals log FAILED its audit: "
            + "; ".join(self.problems[:5])
            + (f" (+{len(self.problems) - 5} more)" if len(self.problems) > 5 else "")
        )


class ApprovalStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ---- paths and locking
    @property
    def log_path(self) -> Path:
        return self.root / LOG_NAME

    def state_path(self, env: str) -> Path:
        _check_env(env)
        return self.root / env / "state.json"

    @contextmanager
    def locked(self, shared: bool = False) -> Iterator[None]:
        if shared and not self.root.is_dir():
            yield  # nothing to read yet, nothing to protect
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # ---- reading
    def read_log(self) -> tuple[list[dict], list[str]]:
        """(entries, problems): a line that is not a JSON object is a problem, not an exception."""
        if not self.log_path.exists():
            return [], []
        entries, probs = [], []
        raw = self.log_path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            probs.append("approvals.log does not end with a newline (truncated or edited)")
        for i, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
            try:
                e = json.loads(line)
                if not isinstance(e, dict):
                    raise ValueError
            except ValueError:
                probs.append(f"line {i}: not a JSON object")
                entries.append({"_line": i, "_bad": True})
                continue
            entries.append(e)
        return entries, probs

    def read_state(self, env: str) -> dict | None:
        p = self.state_path(env)
        if not p.exists():
            return None
        try:
            s = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise IntegrityError(f"{p}: damaged state file") from None
        if not isinstance(s, dict) or s.get("format") != STATE_FORMAT or s.get("env") != env:
            raise IntegrityError(f"{p}: not a {STATE_FORMAT} state for {env}")
        return s

    def state(self, env: str) -> dict:
        return self.read_state(env) or empty_state(env)

    # ---- audit
    def _chain(self) -> tuple[list[dict], list[str]]:
        """(entries, problems of the hash chain itself: parse, seq, prev_hash, hash)."""
        entries, probs = self.read_log()
        probs = list(probs)
        prev: str | None = ZERO_HASH
        good: list[dict] = []
        for i, e in enumerate(entries, start=1):
            if e.get("_bad"):
                prev = None
                continue
            if e.get("seq") != i:
                probs.append(f"line {i}: seq {e.get('seq')} (expected {i}): a line was deleted, inserted or moved")
            if prev is not None and e.get("prev_hash") != prev:
                probs.append(
                    f"line {i}: prev_hash does not match the hash of line {i - 1}: a line before it was "
                    f"edited, deleted or moved"
                )
            if e.get("hash") != entry_hash(str(e.get("prev_hash")), e):
                probs.append(f"line {i}: content does not match its hash: the line was edited")
            prev = e.get("hash")
            good.append(e)
        return good, probs

    def audit(self) -> AuditReport:
        good, probs = self._chain()
        n = self._n_lines()
        states = {e: empty_state(e) for e in ENVS}
        if not probs:
            states, rprobs = replay(good)
            probs += rprobs
            for env in ENVS:
                try:
                    s = self.read_state(env)
                except IntegrityError as ex:
                    probs.append(str(ex))
                    continue
                want = states[env]
                if s is None:
                    if want["last_seq"] != 0:
                        probs.append(f"{env}/state.json is missing but the log has {env} approvals")
                    continue
                diff = [k for k in ("current", "previous", "last_seq", "last_hash") if s.get(k) != want.get(k)]
                if diff:
                    probs.append(
                        f"{env}/state.json differs from the log replay in {', '.join(diff)} (edited, or a "
                        f"promote/rollback was interrupted: kq models audit --rebuild-state)"
                    )
        head = good[-1]["hash"] if good and isinstance(good[-1].get("hash"), str) else ZERO_HASH
        return AuditReport(not probs, n, tuple(probs), states, head)

    def _n_lines(self) -> int:
        return len(self.read_log()[0])

    def require_clean(self, what: str) -> AuditReport:
        rep = self.audit()
        if not rep.ok:
            raise IntegrityError(f"{what} refused: {rep.message}; nothing changed")
        return rep

    # ---- writing (callers hold the exclusive lock)
    def _append(self, entry: dict, prev_hash: str, seq: int) -> dict:
        e = dict(entry, seq=seq, prev_hash=prev_hash)
        e["hash"] = entry_hash(prev_hash, e)
        line = canonical_json(e) + "\n"
        new = not self.log_path.exists()
        with open(self.log_path, "a", encoding="ascii") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        if new:
            fsync_dir(self.root)
        return e

    def _write_state(self, env: str, state: dict) -> None:
        p = self.state_path(env)
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(p, json.dumps(state, indent=2, sort_keys=True, allow_nan=False) + "\n")

    def apply(self, entry: dict, rep: AuditReport) -> tuple[dict, dict]:
        """Append ``entry`` (a promote or rollback for one env) and write that env's new state.
        ``rep`` is the clean audit taken under the same lock. Returns (logged entry, new state)."""
        e = self._append(entry, rep.head_hash, rep.n_entries + 1)
        states, probs = replay(self.read_log()[0])
        if probs:  # the caller checked the action first; this is a bug, and the audit will show it
            raise IntegrityError("; ".join(probs))
        self._write_state(entry["env"], states[entry["env"]])
        return e, states[entry["env"]]

    def rebuild_states(self) -> list[str]:
        """Rewrite every state file from the log; only when the chain itself verifies (callers hold
        the exclusive lock). Returns the environments rewritten."""
        good, probs = self._chain()
        if probs:
            raise IntegrityError("state rebuild refused: the log's own chain fails: " + "; ".join(probs[:3]))
        states, rprobs = replay(good)
        if rprobs:
            raise IntegrityError("state rebuild refused: " + "; ".join(rprobs[:3]))
        done = []
        for env in ENVS:
            try:
                cur = self.read_state(env)
            except IntegrityError:
                cur = None
            if cur != states[env] and (cur is not None or states[env]["last_seq"]):
                self._write_state(env, states[env])
                done.append(env)
        return done


def _check_env(env: str) -> None:
    if env not in ENVS:
        raise InputError(f"--env {env}: must be one of {', '.join(ENVS)}")

"""One writer per output: a lease object ``OUTPUT/.annotator.lock`` that works on local
disks and on object storage (no file-system locks, no conditional writes needed).

A holder writes ``{"holder", "token", "acquired", "host", "pid", "heartbeat"}`` and
rewrites the heartbeat every ``HEARTBEAT_S`` seconds from a background thread. A lease
whose heartbeat is older than ``STALE_S``, or whose holder ran on this host and is no
longer alive, is stale (its holder died without releasing it) and is taken over. Taking the lease is write-then-read-back: of two writers racing for
a free lease, the one whose token is read back wins; the other is refused. Released (the
object deleted) when the holder finishes, also on an error or an interruption.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone

from annotator.storage.layout import LOCK_NAME, join_url, url_to_fs

log = logging.getLogger(__name__)

__all__ = ["HEARTBEAT_S", "STALE_S", "OutputLock", "OutputLockedError"]

HEARTBEAT_S = 10.0
#: A lease not refreshed for this long is taken over (a holder refreshes every HEARTBEAT_S).
STALE_S = 120.0
#: Between writing a lease and reading it back: long enough for a racing writer's object
#: to land (object stores are read-after-write consistent).
SETTLE_S = 0.2


class OutputLockedError(RuntimeError):
    """Another run or reducer holds the output."""


def _now_s() -> float:
    return time.time()


def _holder_gone(doc: dict) -> bool:
    """The holder ran on this host and its process is no longer alive (killed, crashed):
    its lease is stale at once, with no need to wait for STALE_S."""
    if doc.get("host") != socket.gethostname() or not isinstance(doc.get("pid"), int):
        return False
    try:
        os.kill(doc["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class OutputLock:
    """``with OutputLock(output, so, what="run"):`` holds the lease for the block."""

    def __init__(self, output: str, storage_options: dict | None = None, what: str = "run", create: bool = True):
        self.output = output
        self.storage_options = storage_options
        self.fs, root = url_to_fs(output, storage_options)
        self.path = join_url(root, LOCK_NAME)
        self.token = uuid.uuid4().hex
        self.holder = f"{what} by {os.environ.get('USER', 'user')}@{socket.gethostname()} pid {os.getpid()}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._root, self._create = root, create

    # -- lease document

    def _doc(self, acquired: str) -> bytes:
        return json.dumps({"holder": self.holder, "token": self.token, "acquired": acquired,
                           "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": _now_s()}).encode("utf-8")

    def _read(self) -> dict | None:
        try:
            with self.fs.open(self.path, "rb") as f:
                return json.loads(f.read() or b"{}")
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return {}  # half-written or unreadable: treated as stale

    def _write(self, data: bytes) -> None:
        self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(self.path, "wb") as f:
            f.write(data)

    # -- acquire / release

    def acquire(self) -> OutputLock:
        if not self._create and not self.fs.isdir(self._root):
            raise FileNotFoundError(f"output {self.output} does not exist")
        current = self._read()
        if current and not _holder_gone(current) and _now_s() - float(current.get("heartbeat", 0)) < STALE_S:
            raise OutputLockedError(self._busy_message(current))
        if current:
            log.warning("taking over a stale lock of %s (%s, last heartbeat %.0f s ago)", self.output,
                        current.get("holder", "?"), _now_s() - float(current.get("heartbeat", 0)))
        acquired = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._acquired = acquired
        self._write(self._doc(acquired))
        time.sleep(SETTLE_S)
        back = self._read() or {}
        if back.get("token") != self.token:
            raise OutputLockedError(self._busy_message(back))
        self._thread = threading.Thread(target=self._heartbeat, name="output-lock", daemon=True)
        self._thread.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                back = self._read() or {}
                if back.get("token") != self.token:
                    log.error("the lock of %s was taken by %s", self.output, back.get("holder", "?"))
                    return
                self._write(self._doc(self._acquired))
            except Exception as e:  # noqa: BLE001 - a missed heartbeat is retried next time
                log.warning("could not refresh the lock of %s: %s", self.output, e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            back = self._read()
            if back is not None and back.get("token") == self.token:
                self.fs.rm(self.path)
        except Exception as e:  # noqa: BLE001 - stale after STALE_S anyway
            log.warning("could not release the lock of %s: %s", self.output, e)

    def _busy_message(self, doc: dict) -> str:
        age = _now_s() - float(doc.get("heartbeat", 0) or 0)
        return (f"output {self.output} is in use by another {doc.get('holder', 'writer')} (since "
                f"{doc.get('acquired', '?')}, last heartbeat {age:.0f} s ago); wait for it to finish, or choose "
                f"another output. A lock not refreshed for {STALE_S:.0f} s is taken over "
                f"({LOCK_NAME} in the output).")

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

"""One writer per output: a fenced lease, taken with the storage's own atomic create.

Objects: ``OUTPUT/.annotator.lock/lease-NNNNNNNN.json`` (``layout.lease_name``), one per
holder; ``N`` is the holder's **fencing token**. The current lease is the one with the
highest token.

- **Acquire**: with no lease, create ``lease-1``; over a lease whose holder is gone
  (below), create ``lease-(N+1)``. The create is atomic on the store itself, so of two
  writers racing for the same token exactly one wins and the other is refused naming it:
  an exclusive create on a local disk (a hard link of a complete temporary file, else
  ``open(..., 'x')``), a conditional put ``If-None-Match: *`` on S3 and compatible stores
  (s3fs ``pipe_file(mode='create')``, or with an s3fs without that mode the botocore
  client it holds, ``put_object(..., IfNoneMatch='*')``; a store that ignores the header
  is not safe), a generation precondition (``ifGenerationMatch=0``) on GCS through a
  gcsfs whose ``pipe_file`` takes ``mode='create'``. Any other store is refused (exit 2) unless the
  user accepts a **best-effort** lease (``best_effort=True`` or ``ANNOTATOR_BEST_EFFORT_LEASE=1``):
  write, wait ``SETTLE_S``, read back, which two racing writers can both pass.
- **Heartbeat**: the holder rewrites its own lease every ``HEARTBEAT_S`` seconds with an
  incremented counter ``beat``. Staleness is judged from that progress alone, over the
  *waiter's* monotonic clock: a lease whose ``beat`` does not change for ``STALE_S``
  seconds of watching is taken over; one whose ``beat`` moves is alive and the waiter is
  refused (after at most one heartbeat of watching). No two machines' clocks are
  compared, so a lease whose wall-clock time lies in the future locks nothing. A lease
  whose holder ran on this machine and whose process is gone is taken over at once.
- **Fence**: :meth:`OutputLock.check_fence` (before every manifest write) raises
  :class:`LeaseLostError` naming the new holder once a higher token exists, or when this
  holder could not refresh its lease for ``STALE_S`` (others may have taken it over); the
  heartbeat notices a take-over too and stops. So a writer that was paused past
  ``STALE_S`` (a stopped VM, a long GC, a partition) stops before its next write and
  records nothing more.
- **Release**: the holder deletes its lease and older ones (never a newer one), and on a
  local disk the empty ``.annotator.lock`` folder.

A lease of an older version (``.annotator.lock`` as one file) is taken over when its
holder ran on this machine and is gone, when its heartbeat is more than ``STALE_S`` old,
or when its heartbeat value does not change for ``STALE_S`` of watching.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from datetime import UTC, datetime

import fsspec
import fsspec.asyn

from annotator.errors import RefusedOutputError
from annotator.storage.layout import LEASE_NAME_RE, LOCK_NAME, join_url, lease_name, url_to_fs
from annotator.storage.redact import redact_uri
from annotator.storage.state_schema import validate_lock_doc

log = logging.getLogger(__name__)

__all__ = [
    "BEST_EFFORT_ENV",
    "HEARTBEAT_S",
    "STALE_S",
    "LeaseLostError",
    "NoAtomicCreateError",
    "OutputLock",
    "OutputLockedError",
    "current_holder",
    "supports_atomic_create",
]

#: The holder increments and rewrites its lease this often.
HEARTBEAT_S = 2.0
#: A lease whose heartbeat does not advance for this long (watched by the waiter) is taken over.
STALE_S = 120.0
#: How often a waiter reads the lease it watches.
POLL_S = 0.5
#: Best-effort lease only: between writing a lease and reading it back.
SETTLE_S = 0.2
#: ``1``/``true``/``yes``: accept a best-effort lease on a store without an atomic create.
BEST_EFFORT_ENV = "ANNOTATOR_BEST_EFFORT_LEASE"

_MEMORY_LOCK = threading.Lock()  # memory:// lives in this process: a mutex makes its create atomic


class OutputLockedError(RefusedOutputError):
    """Another run or reducer holds the output."""


class LeaseLostError(OutputLockedError):
    """This writer's lease was taken over (or could not be refreshed): it must stop writing."""


class NoAtomicCreateError(RefusedOutputError):
    """The output's store has no atomic create, and a best-effort lease was not accepted."""


# ----------------------------------------------------------------------------- the store's atomic create


def _protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    proto = fs.protocol
    return {proto} if isinstance(proto, str) else set(proto)


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _pipe_takes_create(fs: fsspec.AbstractFileSystem) -> bool:
    """The store's own ``pipe_file`` implements ``mode='create'`` (fsspec's generic one
    checks existence first, which is not atomic)."""
    own = getattr(type(fs), "_pipe_file", None)
    base = getattr(fsspec.asyn.AsyncFileSystem, "_pipe_file", None)
    return own is not None and own is not base and "mode" in inspect.signature(own).parameters


def _s3_client_create(fs: fsspec.AbstractFileSystem) -> bool:
    """An s3fs whose ``pipe_file`` has no ``mode``: its botocore client does the
    conditional put itself (``put_object(..., IfNoneMatch='*')``)."""
    return bool(_protocols(fs) & {"s3", "s3a"}) and hasattr(fs, "call_s3") and not _pipe_takes_create(fs)


def supports_atomic_create(fs: fsspec.AbstractFileSystem) -> bool:
    """Local disks, S3 (s3fs), GCS (a gcsfs with ``pipe_file(mode='create')``), memory://."""
    protos = _protocols(fs)
    if _is_local(fs) or "memory" in protos:
        return True
    if protos & {"s3", "s3a", "gs", "gcs"}:
        return _pipe_takes_create(fs) or _s3_client_create(fs)
    return False


def _create_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes, best_effort: bool) -> bool:
    """Create ``path`` holding ``data`` unless it exists: True when this call created it."""
    if _is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and the lease is complete when it appears
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links
            try:
                with open(path, "xb") as f:
                    f.write(data)
                return True
            except FileExistsError:
                return False
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    protos = _protocols(fs)
    if "memory" in protos:
        with _MEMORY_LOCK:
            if fs.exists(path):
                return False
            fs.pipe_file(path, data)
            return True
    if supports_atomic_create(fs):
        try:
            if _s3_client_create(fs):
                bucket, key, _ = fs.split_path(path)
                fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
                fs.invalidate_cache(path)
            else:
                fs.pipe_file(path, data, mode="create")  # S3: If-None-Match: *; GCS: ifGenerationMatch=0
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if _is_conflict(exc):  # 409: a concurrent conditional write of the same key won
                return False
            raise
    if not best_effort:
        raise NoAtomicCreateError("no atomic create")  # the caller words it
    if fs.exists(path):
        return False
    fs.pipe_file(path, data)
    time.sleep(SETTLE_S)
    return fs.cat_file(path) == data


def _is_conflict(exc: BaseException) -> bool:
    """A create that lost to another: HTTP 409/412 (botocore's ClientError, gcsfs' HttpError)."""
    e: BaseException | None = exc
    while e is not None:
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            code = (response.get("Error") or {}).get("Code")
            return status in (409, 412) or code in ("ConditionalRequestConflict", "PreconditionFailed")
        if not isinstance(e, OSError) and getattr(e, "code", None) in (409, 412):
            return True
        e = e.__cause__
    return False


def _overwrite(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Replace the holder's own lease object (a single put; a rename locally)."""
    if _is_local(fs):
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


# ----------------------------------------------------------------------------- reading leases


def _holder_gone(doc: dict) -> bool:
    """The holder ran on this host and its process is no longer alive (killed, crashed):
    its lease is stale at once, with no need to watch its heartbeat."""
    if doc.get("host") != socket.gethostname() or not isinstance(doc.get("pid"), int):
        return False
    try:
        os.kill(doc["pid"], 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):  # alive, another user's
        return False
    return False


class _Leases:
    """The lease objects of one output."""

    def __init__(self, fs: fsspec.AbstractFileSystem, lock_dir: str):
        self.fs, self.dir = fs, lock_dir

    def path(self, token: int) -> str:
        return posixpath.join(self.dir, lease_name(token))

    def tokens(self) -> list[int]:
        """The tokens of the leases present, ascending."""
        self.fs.invalidate_cache(self.dir)
        try:
            names = [posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self.dir, detail=False)]
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(int(m.group(1)) for m in map(LEASE_NAME_RE.match, names) if m)

    def read(self, token: int) -> dict | None:
        """The lease document; None when it is gone; {} when it cannot be parsed."""
        try:  # cat_file: a plain GET (s3fs' open() pins the ETag of a cached listing)
            doc = json.loads(self.fs.cat_file(self.path(token)) or b"{}")
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def remove(self, token: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path(token))


def current_holder(output: str, storage_options: dict | None = None) -> str | None:
    """Who holds ``output`` now, read only (what an export asks): the holder of the
    highest lease, unless it ran on this machine and is gone; None when no lease is held.
    Whether a holder on another machine is alive cannot be told without watching its
    heartbeat, so its lease counts as held."""
    fs, root = url_to_fs(output, storage_options)
    leases = _Leases(fs, join_url(root, LOCK_NAME))
    tokens = leases.tokens()
    if not tokens:
        return None
    doc = leases.read(tokens[-1])
    try:  # a lease that is not one of ours holds nothing a reader must wait for (a writer refuses it)
        doc = doc if doc is None else validate_lock_doc(doc, join_url(redact_uri(output), LOCK_NAME,
                                                                      lease_name(tokens[-1])), tokens[-1])
    except ValueError as exc:
        log.warning("%s", exc)
        return None
    if doc is None or _holder_gone(doc):
        return None
    return f"{doc.get('holder', 'another writer')} (lease {tokens[-1]})"


# ----------------------------------------------------------------------------- the lock


def _best_effort_from_env() -> bool:
    return os.environ.get(BEST_EFFORT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class OutputLock:
    """``with OutputLock(output, so, what="run"):`` holds the output's lease for the block.

    ``token``: this holder's fencing token (an integer, higher at every take-over);
    ``create``: False refuses an output that does not exist (the reducer's case);
    ``best_effort``: accept a best-effort lease on a store without an atomic create
    (None: ``$ANNOTATOR_BEST_EFFORT_LEASE``).
    """

    def __init__(self, output: str, storage_options: dict | None = None, what: str = "run", create: bool = True,
                 best_effort: bool | None = None):
        self.output = output
        self.shown = redact_uri(output)
        self.storage_options = storage_options
        self.fs, self._root = url_to_fs(output, storage_options)
        self.lock_dir = join_url(self._root, LOCK_NAME)
        self._leases = _Leases(self.fs, self.lock_dir)
        self.what = what
        self.holder = f"{what} by {os.environ.get('USER', 'user')}@{socket.gethostname()} pid {os.getpid()}"
        self.nonce = uuid.uuid4().hex
        self.token: int | None = None
        self.best_effort = _best_effort_from_env() if best_effort is None else best_effort
        self._create = create
        self._beat = 0
        self._acquired = ""
        self._last_refresh = 0.0  # monotonic time of the last successful heartbeat
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> str:
        """This holder's lease object (once acquired)."""
        return self._leases.path(self.token or 0)

    # -- the lease document

    def _doc(self) -> bytes:
        return json.dumps({"holder": self.holder, "token": self.token, "nonce": self.nonce,
                           "acquired": self._acquired, "host": socket.gethostname(), "pid": os.getpid(),
                           "beat": self._beat, "heartbeat_s": HEARTBEAT_S,
                           "wall_time": time.time()}).encode("utf-8")  # wall_time: for people only

    # -- acquire

    def acquire(self) -> OutputLock:
        if not self._create and not self.fs.isdir(self._root):
            raise RefusedOutputError(f"output {self.shown} does not exist")
        if not supports_atomic_create(self.fs) and not self.best_effort:
            raise NoAtomicCreateError(
                f"output {self.shown}: this store ({'/'.join(sorted(_protocols(self.fs)))}) offers no atomic "
                "create (a conditional write), so one writer per output cannot be guaranteed; accept a "
                f"best-effort lease with --best-effort-lease (or {BEST_EFFORT_ENV}=1), or write to a local "
                "folder, S3 or GCS")
        self._take_over_old_format()
        tokens = self._leases.tokens()
        target = 1
        if tokens:
            top = tokens[-1]
            doc = self._leases.read(top)
            if doc is not None:
                validate_lock_doc(doc, join_url(self.shown, LOCK_NAME, lease_name(top)), top)  # else exit 2, named
                self._refuse_unless_stale(top, doc)
            target = top + 1
        self._acquired = datetime.now(UTC).isoformat(timespec="seconds")
        self.token = target
        try:
            created = _create_exclusive(self.fs, self._leases.path(target), self._doc(), self.best_effort)
        except NoAtomicCreateError:  # pragma: no cover - checked above
            raise
        if not created:
            self.token = None
            winner = self._leases.read(target) or {}
            raise OutputLockedError(self._busy_message(target, winner))
        higher = [t for t in self._leases.tokens() if t > target]
        if higher:  # a racer that saw an older listing took a higher token: it holds the output
            self._leases.remove(target)
            self.token = None
            raise OutputLockedError(self._busy_message(higher[-1], self._leases.read(higher[-1]) or {}))
        for old in (t for t in tokens if t < target):
            self._leases.remove(old)
        self._last_refresh = time.monotonic()
        self._thread = threading.Thread(target=self._heartbeat, name="output-lease", daemon=True)
        self._thread.start()
        return self

    def _refuse_unless_stale(self, token: int, doc: dict) -> None:
        """Watch lease ``token`` until its heartbeat moves (alive: refused) or it has not
        moved for STALE_S (stale: return); a lease that disappears was released."""
        if _holder_gone(doc):
            log.warning("taking over the lease of %s: its holder %s (lease %d) is no longer running",
                        self.shown, doc.get("holder", "?"), token)
            return
        start = time.monotonic()
        seen = (doc.get("beat"), doc.get("nonce"))
        while time.monotonic() - start < STALE_S:
            time.sleep(min(POLL_S, HEARTBEAT_S))
            now = self._leases.read(token)
            if now is None:
                return  # released while we watched
            higher = [t for t in self._leases.tokens() if t > token]
            if higher:  # someone else took it over meanwhile
                raise OutputLockedError(self._busy_message(higher[-1], self._leases.read(higher[-1]) or {}))
            if (now.get("beat"), now.get("nonce")) != seen:
                raise OutputLockedError(self._busy_message(token, now))
        log.warning("taking over a stale lease of %s: %s (lease %d) has not refreshed it for %.0f s",
                    self.shown, doc.get("holder", "?"), token, time.monotonic() - start)

    def _take_over_old_format(self) -> None:
        """A lease file of an older version at ``.annotator.lock``: removed when stale."""
        try:
            if not self.fs.isfile(self.lock_dir):
                return
            doc = json.loads(self.fs.cat_file(self.lock_dir) or b"{}")
        except (FileNotFoundError, ValueError, OSError):
            doc = {}
        doc = doc if isinstance(doc, dict) else {}
        try:
            old = time.time() - float(doc.get("heartbeat", 0)) > STALE_S
        except (TypeError, ValueError):
            old = True
        if not (old or _holder_gone(doc)):
            start, seen = time.monotonic(), doc.get("heartbeat")
            while time.monotonic() - start < STALE_S:
                time.sleep(POLL_S)
                try:
                    now = json.loads(self.fs.cat_file(self.lock_dir) or b"{}")
                except FileNotFoundError:
                    return
                except (ValueError, OSError):
                    continue
                if isinstance(now, dict) and now.get("heartbeat") != seen:
                    raise OutputLockedError(self._busy_message(0, now))
        log.warning("taking over a stale lock of %s (%s, a lease of an older version)", self.shown,
                    doc.get("holder", "?"))
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.lock_dir)

    # -- heartbeat and fence

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                tokens = self._leases.tokens()
                if tokens and tokens[-1] != self.token:
                    self._lost = self._lost_message(tokens[-1])
                    log.error("%s", self._lost)
                    return
                self._beat += 1
                _overwrite(self.fs, self.path, self._doc())
                self._last_refresh = time.monotonic()
            except Exception as e:  # noqa: BLE001 - a missed heartbeat is retried next time
                log.warning("could not refresh the lease of %s: %s", self.shown, e)

    def check_fence(self) -> None:
        """Raise :class:`LeaseLostError` naming the new holder when this holder's lease
        was taken over (a higher token exists, or its lease is gone or replaced), or
        when it could not be refreshed for ``STALE_S``. Call before every write that
        records progress (the manifest)."""
        if self.token is None:
            raise LeaseLostError(f"output {self.shown}: this {self.what} holds no lease")
        if self._lost is None:
            tokens = self._leases.tokens()
            if not tokens or tokens[-1] != self.token:
                self._lost = self._lost_message(tokens[-1] if tokens else None)
            elif (self._leases.read(self.token) or {}).get("nonce") != self.nonce:
                self._lost = self._lost_message(self.token)
            elif time.monotonic() - self._last_refresh > STALE_S:
                self._lost = (f"output {self.shown}: this {self.what} could not refresh its lease (token "
                              f"{self.token}) for {STALE_S:.0f} s, so another writer may have taken the output "
                              "over; stopping before the next write. Run the same command again to resume")
        if self._lost is not None:
            self._stop.set()
            raise LeaseLostError(self._lost)

    @property
    def lost(self) -> bool:
        """The heartbeat or a fence check found the lease taken over."""
        return self._lost is not None

    def _lost_message(self, top: int | None) -> str:
        doc = (self._leases.read(top) if top is not None else None) or {}
        if top is not None and (top != self.token or doc.get("nonce") not in (None, self.nonce)):
            who = f"{doc.get('holder', 'another writer')} (token {top})"
        else:
            who = "nobody (its lease was removed)"
        return (f"output {self.shown}: this {self.what} lost its lease (token {self.token}) to {who}; stopping "
                "before the next write, nothing more of this run is recorded")

    # -- release

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def release(self) -> None:
        """Stop the heartbeat; delete this lease and older ones (never a newer holder's)."""
        self._stop_heartbeat()
        if self.token is None:
            return
        try:
            tokens = self._leases.tokens()
            if (self._leases.read(self.token) or {}).get("nonce") == self.nonce:
                for t in (t for t in tokens if t < self.token):
                    self._leases.remove(t)
                self._leases.remove(self.token)
            if _is_local(self.fs):
                with contextlib.suppress(OSError):
                    os.rmdir(self.lock_dir)  # only when empty
        except Exception as e:  # noqa: BLE001 - a left lease is taken over once its heartbeat stops
            log.warning("could not release the lease of %s: %s", self.shown, e)

    def _busy_message(self, token: int, doc: dict) -> str:
        return (f"output {self.shown} is in use by another {doc.get('holder', 'writer')} (lease {token}, since "
                f"{doc.get('acquired', '?')}; its heartbeat is advancing); wait for it to finish, or choose "
                f"another output. A lease whose heartbeat stops for {STALE_S:.0f} s is taken over "
                f"({LOCK_NAME} in the output)")

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

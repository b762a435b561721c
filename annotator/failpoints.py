"""Failpoints: named places in the code that fail on purpose, for tests of the failure
paths (README, "Failure behaviour").

Off by default. The environment variable ``ANNOTATOR_FAILPOINTS`` turns them on; it is
read once, when this module is imported (Ray workers inherit it from the driver's
environment, or from ``ray start``'s on another node)::

    ANNOTATOR_FAILPOINTS='engine.forward=torch.cuda.OutOfMemoryError:CUDA out of memory*2;parts.write=OSError(EIO)'

Grammar: entries separated by ``;``, each ``POINT=TYPE[(ERRNO)][:MESSAGE][*COUNT]``

- ``POINT``: one of :data:`POINTS` (``engine.forward``: the engine's batch forward;
  ``parts.write``: a part file's write; ``actor.start``: an actor's start-up;
  ``listing``: the listing of the source; ``image.read``: each attempt at reading one
  image file).
- ``TYPE``: one of :data:`ERROR_TYPES`: ``RuntimeError``, ``OSError``, ``MemoryError``,
  ``TimeoutError``, ``ConnectionError``, or ``torch.cuda.OutOfMemoryError`` (raised as
  such when torch is already imported in the failing process, else as its base class
  ``RuntimeError``; this module never imports torch); or one of :data:`SIGNALS`,
  ``SIGINT`` / ``SIGTERM``: the point raises nothing, the process sends itself that
  signal, at once or, with ``:SECONDS``, that many seconds later from a timer thread
  (so that it arrives while the code after the point runs: inside ``ray.init``, a wait).
  E.g. ``ray.start=SIGTERM:0.5`` is a SIGTERM half a second into Ray's start-up.
- ``(ERRNO)``: for ``OSError`` only, an errno name (``ENOSPC``, ``EIO``, ...): the error's
  ``errno``, as a real one would carry.
- ``MESSAGE``: the error's message (default: ``failpoint POINT``); it may hold ``:``
  and ``=``, not ``;``. For a signal: the delay in seconds (default 0).
- ``COUNT``: how many times the point fires in the whole run (default 1), all actors,
  processes and attempts together; after that it passes.

The shared count lives in a state folder, ``ANNOTATOR_FAILPOINTS_DIR`` (default
``$TMPDIR/annotator-failpoints-<first 16 hex of the spec's sha256>``): firing number k
of a point claims the file ``POINT.k`` there by an exclusive create (``O_CREAT|O_EXCL``),
so every process on one machine (Ray workers of one or several nodes started there)
counts against the same budget. The folder outlives the run: remove it, or set
``ANNOTATOR_FAILPOINTS_DIR`` to a fresh folder, to arm the points again. Counts do not
span machines.

An invalid spec is a :class:`~annotator.config.ConfigError` naming the bad entry, raised
by :func:`validate` (call it at start-up) and by every :func:`failpoint` call.

With the variable unset, :func:`failpoint` returns at once (one global read).
"""

from __future__ import annotations

import errno as _errno
import hashlib
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DIR_ENV",
    "ENV",
    "ERROR_TYPES",
    "POINTS",
    "SIGNALS",
    "Failpoint",
    "configure",
    "failpoint",
    "parse",
    "runtime_env",
    "state_dir",
    "validate",
]

ENV = "ANNOTATOR_FAILPOINTS"
DIR_ENV = "ANNOTATOR_FAILPOINTS_DIR"

#: The points, and where they are.
POINTS = {
    "engine.forward": "the engine's batch forward (annotator.engine)",
    "parts.write": "a part file's write (annotator.storage.parts.write_part)",
    "actor.start": "an actor's start-up (annotator.distributed.ray_runner)",
    "listing": "the listing of the source (annotator.inputs.listing)",
    "image.read": "one image file's read, each attempt (annotator.inputs.listing.read_image_bytes)",
    # The phases of a command, for the interruption tests (a signal TYPE), in the driver:
    "ray.start": "just before Ray starts or is joined (annotator.distributed.ray_runner.init_ray)",
    "actors.wait": "the driver's wait for the actors' engines (annotator.distributed.ray_runner)",
    "shard.done": "the driver's record of a finished shard, other shards still running (annotator.job)",
    "merge": "the final merge of the parts, before it starts (annotator.job.finish)",
    "run.done": "after the run's done: line, before the command returns (annotator.run)",
    "report": "python -m annotator.report, before the report is written (annotator.report)",
    "export": "python -m annotator.export, before the export or the Label Studio push (annotator.export)",
    "push.page": "a Label Studio push, after each page of tasks is imported (annotator.export.ls_push)",
}
TORCH_OOM = "torch.cuda.OutOfMemoryError"
_BUILTIN_TYPES: dict[str, type[BaseException]] = {
    "RuntimeError": RuntimeError,
    "OSError": OSError,
    "MemoryError": MemoryError,
    "TimeoutError": TimeoutError,
    "ConnectionError": ConnectionError,
}
#: The signals a failpoint may send to its own process instead of raising.
SIGNALS = ("SIGINT", "SIGTERM")
#: The error types a failpoint may raise (and the signals it may send).
ERROR_TYPES = (*_BUILTIN_TYPES, TORCH_OOM, *SIGNALS)

_ENTRY_RE = re.compile(
    r"^(?P<point>[^=]+)=(?P<type>[A-Za-z_][A-Za-z0-9_.]*)(?:\((?P<errno>[A-Z][A-Z0-9]*)\))?"
    r"(?::(?P<message>.*?))?(?:\*(?P<count>[^*]*))?$",
    re.S,
)


@dataclass(frozen=True)
class Failpoint:
    """One entry of the spec: raise ``error_type(message)`` at ``point``, ``count`` times."""

    point: str
    error_type: str
    message: str
    count: int
    errno: int | None = None

    def make_error(self) -> BaseException:
        """The error to raise (see the module docstring for ``torch.cuda.OutOfMemoryError``)."""
        if self.error_type == TORCH_OOM:
            torch = sys.modules.get("torch")
            cls = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch else None
            exc = (cls or RuntimeError)(self.message)
        elif self.errno is not None:
            exc = OSError(self.errno, self.message)
        else:
            exc = _BUILTIN_TYPES[self.error_type](self.message)
        setattr(exc, "failpoint", self.point)  # which point raised it  # noqa: B010
        return exc


def _config_error(message: str) -> Exception:
    from annotator.config import ConfigError

    return ConfigError(message)


def parse(spec: str) -> dict[str, Failpoint]:
    """The points of a spec (see the module docstring); ConfigError naming a bad entry."""
    out: dict[str, Failpoint] = {}
    for raw in spec.split(";"):
        entry = raw.strip()
        if not entry:
            continue
        where = f"{ENV}: entry {entry!r}"
        m = _ENTRY_RE.match(entry)
        if not m:
            raise _config_error(f"{where}: expected POINT=TYPE[(ERRNO)][:MESSAGE][*COUNT], e.g. "
                                "'engine.forward=RuntimeError:CUDA out of memory*2'")
        point = m["point"].strip()
        if point not in POINTS:
            raise _config_error(f"{where}: expected a point among {sorted(POINTS)}, received {point!r}")
        if point in out:
            raise _config_error(f"{where}: point {point!r} is given twice")
        if m["type"] not in ERROR_TYPES:
            raise _config_error(f"{where}: expected an error type among {list(ERROR_TYPES)}, "
                                f"received {m['type']!r}")
        code = None
        if m["errno"] is not None:
            if m["type"] != "OSError":
                raise _config_error(f"{where}: an errno ({m['errno']}) is for OSError only, received "
                                    f"{m['type']}")
            code = getattr(_errno, m["errno"], None)
            if not isinstance(code, int):
                raise _config_error(f"{where}: expected an errno name such as ENOSPC or EIO, received "
                                    f"{m['errno']!r}")
        count_text = m["count"]
        if count_text is None:
            count = 1
        elif re.fullmatch(r"\d+", count_text.strip()) and int(count_text) >= 1:
            count = int(count_text)
        else:
            raise _config_error(f"{where}: expected a count *N with N an integer >= 1, received "
                                f"*{count_text!r}")
        message = m["message"] if m["message"] is not None else f"failpoint {point}"
        if m["type"] in SIGNALS:
            message = m["message"] if m["message"] is not None else "0"
            try:
                delay = float(message)
            except ValueError:
                delay = -1.0
            if not 0 <= delay <= 3600:
                raise _config_error(f"{where}: expected a delay in seconds in [0, 3600] after {m['type']}:, "
                                    f"received {message!r}")
        out[point] = Failpoint(point, m["type"], message, count, code)
    return out


def default_state_dir(spec: str) -> Path:
    """``$TMPDIR/annotator-failpoints-<16 hex of sha256(spec)>``."""
    digest = hashlib.sha256(spec.encode("utf-8")).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"annotator-failpoints-{digest}"


# The parsed spec: None = off (the fast path), else (points, state folder) or the error.
_active: dict[str, Failpoint] | None = None
_spec: str | None = None
_state_dir: Path | None = None
_error: Exception | None = None
_exhausted: set[str] = set()


def configure(spec: str | None, directory: str | os.PathLike | None = None) -> None:
    """(Re)arm this process from ``spec`` (None or empty: off) and the state folder
    ``directory`` (None: ``$ANNOTATOR_FAILPOINTS_DIR`` or the default). Done at import
    from the environment; tests call it directly. An invalid spec is kept and raised by
    :func:`validate` and :func:`failpoint`."""
    global _active, _spec, _state_dir, _error
    _exhausted.clear()
    _active, _spec, _state_dir, _error = None, None, None, None
    if not spec or not spec.strip():
        return
    try:
        points = parse(spec)
    except Exception as exc:  # noqa: BLE001 - raised where a run checks it (validate)
        _error, _active = exc, {}
        return
    directory = directory or os.environ.get(DIR_ENV) or default_state_dir(spec)
    _spec, _state_dir, _active = spec, Path(directory), points


def validate() -> None:
    """Raise the ConfigError of an invalid ``ANNOTATOR_FAILPOINTS``; nothing when it is
    unset or valid. Call it at start-up, before any work."""
    if _error is not None:
        raise _error


def state_dir() -> Path | None:
    """The folder holding the shared counts (None when off)."""
    return _state_dir


def runtime_env() -> dict | None:
    """The Ray ``runtime_env`` that arms this process's failpoints in Ray workers too
    (``{"env_vars": {ANNOTATOR_FAILPOINTS, ANNOTATOR_FAILPOINTS_DIR}}``), or None when they
    are off. Workers of a Ray started before the variable was set, or of a cluster joined
    with ``--address``, do not inherit the driver's environment: the actors get this."""
    if not _active or _spec is None or _state_dir is None:
        return None
    return {"env_vars": {ENV: _spec, DIR_ENV: str(_state_dir)}}


def _claim(fp: Failpoint) -> bool:
    """Claim one of the point's ``count`` firings for this call; False when all are taken."""
    assert _state_dir is not None
    _state_dir.mkdir(parents=True, exist_ok=True)
    for k in range(fp.count):
        try:
            fd = os.open(_state_dir / f"{fp.point}.{k}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        os.close(fd)
        return True
    _exhausted.add(fp.point)
    return False


def failpoint(name: str) -> None:
    """Raise the error configured for point ``name`` if it has firings left in the whole
    run; else (and always when failpoints are off) return."""
    if _active is None:
        return
    if _error is not None:
        raise _error
    fp = _active.get(name)
    if fp is None or name in _exhausted or not _claim(fp):
        return
    if fp.error_type in SIGNALS:
        _send_signal(fp)
        return
    raise fp.make_error()


def _send_signal(fp: Failpoint) -> None:
    """The process sends itself ``fp``'s signal, now or ``fp.message`` seconds later."""
    import signal
    import threading

    signum, delay = getattr(signal, fp.error_type), float(fp.message)
    if delay <= 0:
        os.kill(os.getpid(), signum)
        return
    timer = threading.Timer(delay, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()


configure(os.environ.get(ENV))

"""How the commands fail: the project's own error types, their exit codes, the one-line
description of an error, and interruption by a signal. The foundation: it imports nothing
of the package.

The taxonomy (README, "Failure behaviour"):

- **exit 2, refused**: an error the project raises on purpose, an :class:`AnnotatorError`
  (bad configuration: :class:`~annotator.config.ConfigError`; an output the run may not
  write: :class:`RefusedOutputError`; missing weights: :class:`MissingWeightsError`;
  storage I/O classified as such: :class:`StorageError`, transient or permanent; shards
  that failed every attempt: :class:`FailedShardsError`). One ``error:`` line naming the
  file and the cause, no traceback.
- **exit 3, internal error**: anything else (a ``RuntimeError`` from our own code, a
  ``KeyError``, ...): one ``error:`` line that names a crash log holding the traceback
  (:func:`annotator.storage.crashlog.write_crash_report`: next to the output when there
  is one, else in the temporary directory), so that it can be reported.
- **130 / 143**: SIGINT / SIGTERM (:class:`Interrupted`).

Every command ends in :func:`annotator.cli.report_error` (``except Exception as e: return
report_error(e, output, storage_options)``), so run, reduce, export, report and serve
follow the same rules; it lives in ``cli`` because it writes crash logs (storage).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from typing import TextIO

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERNAL",
    "PERMANENT",
    "TRANSIENT",
    "AnnotatorError",
    "FailedShardsError",
    "Interrupted",
    "MissingWeightsError",
    "RefusedOutputError",
    "StorageError",
    "describe_error",
    "exit_code_for",
    "install_interrupt_handlers",
    "is_expected_error",
    "is_own_error",
    "report_interrupt",
    "run_command",
]

#: Exit codes (README, "Failure behaviour").
EXIT_ERROR, EXIT_INTERNAL = 2, 3

#: The redaction every message rendered here passes through (:func:`describe_error`, a
#: :class:`StorageError`'s message). The foundation imports nothing of the package, so
#: :mod:`annotator.storage.redact` installs its ``redact_text`` here when it is imported;
#: everything that raises a StorageError or reports an error imports it first.
_redact: Callable[[str], str] = str


def set_redactor(redact: Callable[[str], str]) -> None:
    """Install the text redaction of :func:`describe_error` (see :data:`_redact`)."""
    global _redact
    _redact = redact

#: The two kinds of :class:`StorageError`.
TRANSIENT, PERMANENT = "transient", "permanent"


class AnnotatorError(Exception):
    """An error the project raises on purpose: exit 2 with one ``error:`` line (its
    message), no traceback. Subclass it (first base) for every refusal the project makes;
    anything that is not one is a bug (exit 3)."""

    exit_code = EXIT_ERROR


class RefusedOutputError(AnnotatorError):
    """The output may not be written: in use by another writer, a lease lost to a new
    holder, another run's manifest, a store without an atomic create."""


class MissingWeightsError(AnnotatorError):
    """Model weights that cannot be found, downloaded or verified."""


class FailedShardsError(AnnotatorError):
    """Shards that failed every attempt, or listed images left without a row."""


class StorageError(AnnotatorError, OSError):
    """Storage I/O that failed, classified: ``kind`` is :data:`TRANSIENT` (it outlasted the
    retries: a timeout, a dropped connection, HTTP 5xx/429) or :data:`PERMANENT` (missing,
    denied, full disk, HTTP 4xx); ``cause`` is the underlying error (also ``__cause__``).

    Raised by the storage layer (:func:`annotator.storage.retry.retry`), wrapping the
    client's error; its message names the operation and the cause. An ``OSError`` too,
    so that code catching I/O errors still catches it."""

    def __init__(self, what: str, cause: BaseException, kind: str, attempts: int = 1):
        if kind not in (TRANSIENT, PERMANENT):  # a bug in the caller
            raise ValueError(f"kind: expected {TRANSIENT!r} or {PERMANENT!r}, received {kind!r}")
        self.what, self.kind, self.attempts = what, kind, attempts
        self.cause: BaseException | None = cause
        after = f" (gave up after {attempts} attempts)" if kind == TRANSIENT and attempts > 1 else ""
        super().__init__(f"{what}: {kind} storage error{after}: {describe_error(cause)}")

    @property
    def transient(self) -> bool:
        return self.kind == TRANSIENT

    def __reduce__(self):  # crosses process boundaries (Ray) with its message; the cause stays behind
        return (_rebuild_storage_error, (str(self), self.what, self.kind, self.attempts))


def _rebuild_storage_error(message: str, what: str, kind: str, attempts: int) -> StorageError:
    exc = StorageError.__new__(StorageError)
    OSError.__init__(exc, message)
    exc.what, exc.cause, exc.kind, exc.attempts = what, None, kind, attempts
    return exc


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; raised in the main thread."""

    def __init__(self, signal_name: str = "SIGINT"):
        super().__init__(signal_name)
        self.signal_name = signal_name


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted(signal.Signals(signum).name)


def install_interrupt_handlers() -> None:
    """SIGINT and SIGTERM raise :class:`Interrupted` (call again after anything that
    installs its own handlers, such as ``ray.init``). No-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_interrupted)


#: Exit codes of an interruption (README, "Failure behaviour").
EXIT_SIGINT, EXIT_SIGTERM = 130, 143


def report_interrupt(exc: BaseException, after: str, *, stream: TextIO | None = None) -> int:
    """The end of every command's ``except KeyboardInterrupt``: one ``error:`` line,
    "interrupted by SIGINT|SIGTERM; ``after``" (what is kept, what to do), and the exit
    code, 130 for SIGINT (a plain ``KeyboardInterrupt`` too), 143 for SIGTERM."""
    name = getattr(exc, "signal_name", "SIGINT")
    print(f"error: interrupted by {name}; {after}", file=stream if stream is not None else sys.stderr, flush=True)
    return EXIT_SIGTERM if name == "SIGTERM" else EXIT_SIGINT


def _exit_quietly(signum, frame) -> None:
    """A signal after the command returned (in the interpreter's exit, its atexit
    handlers): one line and the exit code, no traceback, no "Exception ignored"."""
    import os

    name = signal.Signals(signum).name
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001, S110 - exiting anyway
            pass
    os.write(2, f"error: interrupted by {name} after the command ended; what it wrote is complete\n".encode())
    os._exit(EXIT_SIGTERM if name == "SIGTERM" else EXIT_SIGINT)


def run_command(main, after: str = "run the same command again") -> None:
    """``python -m annotator.X``'s last line: ``sys.exit(main())``, where a SIGINT or
    SIGTERM that arrives after ``main`` returned (while Python exits) still ends in one
    ``error:`` line and 130/143, never a traceback or "Exception ignored in atexit"."""
    try:
        code = main()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, _exit_quietly)
    except KeyboardInterrupt as e:  # between main's return and the quiet handlers
        code = report_interrupt(e, after)
    sys.exit(code)


def is_own_error(exc: BaseException) -> bool:
    """One of the project's own refusals (exit 2), as opposed to a bug (exit 3): an
    :class:`AnnotatorError`, by type, never by its message."""
    return isinstance(exc, AnnotatorError)


def exit_code_for(exc: BaseException) -> int:
    """2 for an :class:`AnnotatorError`, 3 for anything else."""
    return EXIT_ERROR if is_own_error(exc) else EXIT_INTERNAL


def is_expected_error(exc: BaseException) -> bool:
    """Deprecated (the commands move to :func:`report_error`, which uses
    :func:`is_own_error`): the old rule, every ValueError/OSError/RuntimeError/ImportError
    counted as a refusal. Kept until every command calls :func:`report_error`."""
    if isinstance(exc, (AnnotatorError, ValueError, OSError, RuntimeError, ImportError)):
        return True
    return any(c.__name__ in ("ClientError", "NoCredentialsError", "BotoCoreError", "ArrowException")
               for c in type(exc).__mro__)


def describe_error(exc: BaseException) -> str:
    """One line: the file involved (for an OSError) and the cause; credentials removed.
    The project's own errors are their message; anything else is prefixed by its type."""
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        text = f"{where}: {exc.strerror}" if where else exc.strerror
        if exc.filename2:
            text += f" (and {exc.filename2})"
    else:
        text = str(exc) or type(exc).__name__
        if not is_own_error(exc) and (not is_expected_error(exc) or isinstance(exc, OSError)):
            text = f"{type(exc).__name__}: {text}"
    return " ".join(_redact(text.strip()).split())  # one line

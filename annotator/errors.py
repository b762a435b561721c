"""How the commands fail: interruption by a signal, and one line for every error.

Every command maps what it cannot do to exit code 2 and one ``error:`` line naming the
file and the cause (never a traceback); SIGINT and SIGTERM both stop a run the same way
(``Interrupted``: the finished shards are recorded, the state is resumable).
"""

from __future__ import annotations

import signal
import threading

from annotator.storage.redact import redact_text

__all__ = ["Interrupted", "describe_error", "install_interrupt_handlers", "is_expected_error"]


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


def is_expected_error(exc: BaseException) -> bool:
    """A refusal or an I/O failure (exit 2), as opposed to a bug (exit 3)."""
    from annotator.config import ConfigError

    if isinstance(exc, (ConfigError, ValueError, OSError, RuntimeError, ImportError)):
        return True
    return any(c.__name__ in ("ClientError", "NoCredentialsError", "BotoCoreError", "ArrowException")
               for c in type(exc).__mro__)


def describe_error(exc: BaseException) -> str:
    """One line: the file involved (for an OSError) and the cause; credentials removed."""
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        text = f"{where}: {exc.strerror}" if where else exc.strerror
        if exc.filename2:
            text += f" (and {exc.filename2})"
    else:
        text = str(exc) or type(exc).__name__
        if not is_expected_error(exc) or isinstance(exc, OSError):
            text = f"{type(exc).__name__}: {text}"
    return redact_text(text.strip())

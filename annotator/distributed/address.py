"""Where the Ray cluster is, without Ray: the address a run joins (``--address``,
``$RAY_ADDRESS``, the one ``ray start`` recorded), a bounded reachability check, and
the one-line form of an error for messages (used by :mod:`annotator.distributed.ray_runner`,
which joins it).
"""

from __future__ import annotations

import os
import re

from annotator.config import ConfigError

__all__ = ["RayConnectError", "check_reachable", "ray_address_file", "resolve_ray_address", "short_error"]


class RayConnectError(ConfigError, RuntimeError):
    """The Ray cluster named by ``--address`` / ``$RAY_ADDRESS`` could not be joined."""


def ray_address_file() -> str:
    """Where ``ray start`` records the last cluster's address (Ray's temp dir:
    ``$RAY_TMPDIR``, else ``$TMPDIR`` on Linux, else ``/tmp``, then ``ray/``)."""
    import sys
    import tempfile

    base = os.environ.get("RAY_TMPDIR") or (os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None)
    if not base:
        base = "/tmp" if sys.platform.startswith(("linux", "darwin")) else tempfile.gettempdir()
    return os.path.join(base, "ray", "ray_current_cluster")


def resolve_ray_address(address: str | None) -> str | None:
    """The cluster to join, or ``None`` to start a local Ray.

    ``None`` (no ``--address``): ``$RAY_ADDRESS`` if set (as under ``ray job submit``),
    else a new local Ray, never the cluster recorded by an earlier ``ray start``
    (which may be dead). ``"auto"``: the recorded cluster, explicitly. Anything else:
    that address (``host:port`` of the GCS, or ``ray://host:port``).
    """
    if address is None:
        address = os.environ.get("RAY_ADDRESS") or None
        if address is None:
            return None
    if address == "auto":
        record = ray_address_file()
        try:
            with open(record, encoding="utf-8") as f:
                recorded = f.read().strip()
        except OSError:
            recorded = ""
        if not recorded:
            raise RayConnectError(f"--address auto: expected a running cluster recorded in {record} by "
                                  "`ray start --head`, got none (omit --address to start a local Ray)")
        return recorded
    return address


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A TCP connection to the cluster's ``host:port``, so that a dead address is one
    line after ``timeout_s`` instead of Ray's endless GCS retries."""
    import socket

    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RayConnectError(f"--address {address}: expected host:port (or ray://host:port, or auto), got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise RayConnectError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}); is it running? "
                              "Omit --address (and unset RAY_ADDRESS) to start a local Ray") from None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def short_error(e: BaseException) -> str:
    """One line for a message: the error's type and the last line of its text (for a
    Ray error carrying a remote traceback, that line is the remote exception)."""
    lines = [ln.strip() for ln in _ANSI.sub("", str(e)).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {(lines[-1] if lines else '')[:300]}"

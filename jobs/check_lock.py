"""Fail when constraints.txt (the lock) and pyproject.toml disagree.

Every requirement of ``pyproject.toml`` (the dependencies and every extra) and of
``jobs/lock.in`` must be pinned in ``constraints.txt`` to a version its range admits.
Run by ``.ci/run`` before anything is installed, and by ``tests/test_lock.py``.
Standard library + ``packaging`` (pip's own copy when it is not installed).

    python jobs/check_lock.py            # exit 0, or 1 listing each disagreement
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a bare interpreter: pip vendors packaging
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
#: The interpreter and platform the lock is generated for (jobs/lock.sh).
LOCK_ENVIRONMENT = {"python_version": "3.11", "python_full_version": "3.11.7", "sys_platform": "linux",
                    "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                    "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def read_lock(path: Path) -> dict[str, str]:
    """{canonical name: pinned version} of a ``name==version`` file."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        spec = list(req.specifier)
        if len(spec) != 1 or spec[0].operator != "==":
            raise SystemExit(f"{path.name}: expected 'name==version' lines, got {line!r}")
        pins[canonicalize_name(req.name)] = spec[0].version
    return pins


def project_requirements(root: Path = ROOT) -> list[tuple[str, Requirement]]:
    """(where, requirement) for pyproject.toml's dependencies, every extra, and jobs/lock.in."""
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    out = [("dependencies", Requirement(r)) for r in project.get("dependencies", [])]
    for extra, reqs in project.get("optional-dependencies", {}).items():
        out += [(f"extra '{extra}'", Requirement(r)) for r in reqs]
    lock_in = root / "jobs" / "lock.in"
    for line in lock_in.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(("jobs/lock.in", Requirement(line)))
    return out


def disagreements(root: Path = ROOT) -> list[str]:
    """One line per requirement that the lock does not satisfy (empty when they agree)."""
    pins = read_lock(root / "constraints.txt")
    problems = []
    for where, req in project_requirements(root):
        env = dict(LOCK_ENVIRONMENT, extra="")
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req} ({where}): not in constraints.txt")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{req} ({where}): constraints.txt pins {name}=={pins[name]}")
    return problems


def main() -> int:
    problems = disagreements()
    if problems:
        print("error: constraints.txt disagrees with pyproject.toml / jobs/lock.in; regenerate it with "
              "`bash jobs/lock.sh`:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"constraints.txt satisfies pyproject.toml ({len(read_lock(ROOT / 'constraints.txt'))} pins)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

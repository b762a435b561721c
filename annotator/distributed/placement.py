"""Placing the engines, without Ray: how many actors, with which resources, on which
device, from the cluster's resources; and a CPU actor's torch threads (used by
:mod:`annotator.distributed.ray_runner`, which creates the actors).
"""

from __future__ import annotations

import math

from annotator.config import ConfigError

__all__ = ["actors_that_fit", "plan_placement", "threads_for_cpus"]


def threads_for_cpus(assigned_cpus: float | None, planned: int) -> int:
    """torch intra-op threads for a CPU actor: the CPUs Ray assigned it, rounded down, at
    least 1 (``planned`` when Ray reports none). Two actors of 1 CPU on 2 cores get 1
    thread each, not 2 each (which would oversubscribe the cores)."""
    if assigned_cpus is None or assigned_cpus <= 0:
        return max(1, int(planned))
    return max(1, int(assigned_cpus + 1e-9))


def plan_placement(device: str, num_actors: int | None, resources: dict) -> tuple[int, dict, str]:
    """How many actors, with which resources, on which device ('cuda' or 'cpu'), for
    ``--device device`` on a cluster with ``resources`` (``ray.cluster_resources()``).

    CPU actors share the cluster's CPUs evenly (fractional when ``num_actors`` exceeds
    the CPU count, so that every actor can be scheduled).
    """
    if num_actors is not None and num_actors < 1:
        raise ConfigError(f"--num-actors: expected >= 1, got {num_actors}")
    gpus = int(resources.get("GPU", 0))
    if device in ("auto",) and gpus > 0 or device.startswith("cuda"):
        if gpus == 0:
            raise ConfigError(f"--device {device}: the Ray cluster has no GPUs")
        n = min(num_actors or gpus, gpus)
        return n, {"num_gpus": 1, "num_cpus": 1}, "cuda"
    cpus = float(resources.get("CPU", 1))
    n = num_actors or max(1, int(cpus) // 2)
    per_actor = max(1, int(cpus) // n) if n <= cpus else math.floor(cpus / n * 1e4) / 1e4
    return n, {"num_cpus": per_actor}, "cpu"


def actors_that_fit(device: str, num_actors: int | None, resources: dict, per_actor: dict) -> int:
    """How many actors of ``per_actor`` resources (as :func:`plan_placement` gave them at
    the start) the cluster's ``resources`` hold now, capped as :func:`plan_placement` caps
    them: the target when nodes join a run in progress (one more actor per new GPU; on
    CPUs, more only while ``--num-actors`` is not given)."""
    n, _, _ = plan_placement(device, num_actors, resources)
    if per_actor.get("num_gpus"):
        return min(n, int(float(resources.get("GPU", 0)) / per_actor["num_gpus"] + 1e-9))
    cpus = float(per_actor.get("num_cpus") or 0)
    return min(n, int(float(resources.get("CPU", 0)) / cpus + 1e-9)) if cpus else n

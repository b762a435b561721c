"""The Ray layer (thin): place one engine per GPU (or N on CPUs) and hand them shards.

Actors load the engine once and process whole shards (:class:`~annotator.worker.ShardProcessor`);
the driver only holds the listing (names, not pixels), keeps a few shards in flight per
actor, records finished shards in the manifest, and requeues a shard whose actor died.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import asdict
from typing import Callable

from .config import EngineConfig
from .vocab import Vocabulary
from .worker import RunOptions, ShardTask

log = logging.getLogger(__name__)

MAX_SHARD_ATTEMPTS = 3


class ShardFailedError(RuntimeError):
    """Shards that failed on every attempt (listed; never silently dropped)."""


class _ShardActor:
    """Holds one engine; ``process`` runs one shard and returns a ShardResult dict."""

    def __init__(self, engine_config: EngineConfig, vocabulary: Vocabulary, options: RunOptions, threads: int | None):
        import torch

        from .engine import Engine
        from .worker import ShardProcessor

        if threads:
            torch.set_num_threads(threads)
        self.processor = ShardProcessor(Engine(engine_config, vocabulary), options)

    def process(self, task: ShardTask) -> dict:
        return asdict(self.processor.process(task))

    def pid(self) -> int:
        return os.getpid()

    def ready(self) -> bool:
        return True


def init_ray(address: str | None) -> None:
    """Join ``address`` / ``$RAY_ADDRESS`` (e.g. under ``ray job submit``) or start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    kwargs = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init(**kwargs)
    else:
        ray.init(include_dashboard=False, **kwargs)


def plan_actors(engine_config: EngineConfig, num_actors: int | None) -> tuple[int, dict, str]:
    """How many actors, with which resources, on which device ('cuda' or 'cpu')."""
    import ray

    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    if engine_config.device in ("auto",) and gpus > 0 or engine_config.device.startswith("cuda"):
        if gpus == 0:
            raise RuntimeError(f"--device {engine_config.device}: the Ray cluster has no GPUs")
        n = min(num_actors or gpus, gpus)
        return n, {"num_gpus": 1, "num_cpus": 1}, "cuda"
    cpus = int(res.get("CPU", 1))
    n = num_actors or max(1, cpus // 2)
    per_actor = max(1, cpus // n)
    return n, {"num_cpus": per_actor}, "cpu"


def run_shards(
    tasks: list[ShardTask],
    engine_config: EngineConfig,
    vocabulary: Vocabulary,
    options: RunOptions,
    *,
    num_actors: int | None,
    on_done: Callable[[dict], None],
    in_flight_per_actor: int = 2,
) -> dict:
    """Process ``tasks`` on Ray actors; ``on_done(result_dict)`` is called per finished shard.

    Returns scheduling statistics. Raises :class:`ShardFailedError` listing shards that
    failed ``MAX_SHARD_ATTEMPTS`` times (after all others finished).
    """
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    if not tasks:
        return {"actors": 0, "retries": 0}
    n, resources, device = plan_actors(engine_config, num_actors)
    n = min(n, len(tasks))
    cfg = EngineConfig(**{**engine_config.__dict__, "device": device if engine_config.device == "auto" else engine_config.device})
    threads = resources.get("num_cpus") if device == "cpu" else None
    Actor = ray.remote(max_restarts=MAX_SHARD_ATTEMPTS, max_task_retries=0, **resources)(_ShardActor)
    actors = [Actor.remote(cfg, vocabulary, options, threads) for _ in range(n)]
    # Fail fast with the real error (e.g. missing weights) if engines cannot load.
    ray.get([a.ready.remote() for a in actors])

    queue = deque(tasks)
    attempts: dict[int, int] = {}
    inflight: dict = {}  # ObjectRef -> (actor, task, submitted_at)
    failed: dict[int, str] = {}
    stats = {"actors": n, "device": device, "retries": 0, "driver_overhead_s": 0.0, "shard_seconds": 0.0}

    def submit(actor) -> None:
        if queue:
            task = queue.popleft()
            inflight[actor.process.remote(task)] = (actor, task, time.perf_counter())

    for a in actors:
        for _ in range(in_flight_per_actor):
            submit(a)
    while inflight:
        ready, _ = ray.wait(list(inflight), num_returns=1)
        ref = ready[0]
        actor, task, t_sub = inflight.pop(ref)
        t0 = time.perf_counter()
        try:
            result = ray.get(ref)
        except (RayActorError, RayTaskError) as e:
            k = attempts[task.shard_index] = attempts.get(task.shard_index, 0) + 1
            stats["retries"] += 1
            if k < MAX_SHARD_ATTEMPTS:
                log.warning("shard %d failed (attempt %d: %s); retrying", task.shard_index, k, type(e).__name__)
                queue.appendleft(task)
            else:
                failed[task.shard_index] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            submit(actor)  # a dead actor restarts (max_restarts); calls queue until it is back
            continue
        submit(actor)
        on_done(result)
        stats["shard_seconds"] += result["seconds"]
        stats["driver_overhead_s"] += time.perf_counter() - t0
    if failed:
        raise ShardFailedError(
            "these shards failed on every attempt and have no output: "
            + "; ".join(f"shard {i}: {why}" for i, why in sorted(failed.items()))
            + ". Re-run the same command to retry them."
        )
    return stats

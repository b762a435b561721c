"""The Ray layer (thin; the only module that imports ray): join or start Ray, place one
engine per GPU (or N on CPUs) and hand them shards. The decisions (which shard next,
what a failure costs, when to give up) are :mod:`annotator.distributed.policy`'s.

Actors load the engine once and process whole shards (:class:`~annotator.shards.processor.ShardProcessor`);
the driver only holds the listing (names, not pixels), keeps a few shards in flight per
actor, records finished shards in the manifest, and requeues a shard whose actor died.

Failure handling (see the README, "Failure behaviour"):

- An actor runs ``SHARDS_AT_ONCE`` shards at once (:mod:`annotator.shards.processor`). A shard whose task
  raised (e.g. its part could not be written after the storage retries), or whose actor
  died while it ran alone there, is retried, up to ``MAX_SHARD_ATTEMPTS`` attempts in
  all. When an actor dies running several shards, the culprit is unknown: they are all
  requeued without using up an attempt, each to run ALONE on its actor next time, where
  a death is surely its own. Retried shards run alone too.
- A shard whose actor died is retried *carefully* (``annotator.storage.crashlog``): one image at
  a time, each named in a crash log before it is read, so that the next attempt skips
  the image the worker died on (one ``worker-crashed`` row) instead of losing the shard.
- A dead actor is restarted by Ray (the engine loads again); the driver sends it nothing
  until it answers a ``ready()`` probe, and retires it if it is not back within
  ``ACTOR_RESTART_TIMEOUT_S`` or cannot be restarted. When no actor is left the remaining
  shards fail.
- A shard whose attempt failed on a device fault (out of memory, a CUDA/cuDNN/driver
  error: :class:`~annotator.shards.task.DeviceFaultError`) is retried without using up an
  attempt; an actor whose device fails ``MAX_DEVICE_FAULTS`` attempts in a row is retired
  (:meth:`~annotator.distributed.policy.SchedulePolicy.device_failed`).
- The run starts as soon as one actor has loaded its engine; the others join when they
  are ready. While shards are queued, the driver looks at the cluster's resources every
  ``GROW_INTERVAL_S``: a node that joined gets actors (:func:`~annotator.distributed.placement.actors_that_fit`).
- Shards that failed every attempt are listed in :class:`ShardFailedError`, raised after
  every other shard finished (their parts are written and recorded): never dropped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable

from annotator.config import ConfigError, EngineConfig
from annotator.distributed.address import (
    RayConnectError,
    check_reachable,
    ray_address_file,
    resolve_ray_address,
    short_error,
)
from annotator.distributed.placement import actors_that_fit, plan_placement, threads_for_cpus
from annotator.distributed.policy import ActorSlot, SchedulePolicy
from annotator.errors import FailedShardsError, Interrupted, install_interrupt_handlers
from annotator.failpoints import failpoint
from annotator.failpoints import runtime_env as failpoints_runtime_env
from annotator.inputs.vocab import Vocabulary
from annotator.shards.task import (
    SHARDS_AT_ONCE,
    DeviceFaultError,
    RunOptions,
    SchedulingStats,
    ShardResult,
    ShardTask,
)

__all__ = [
    "ACTOR_RESTART_TIMEOUT_S",
    "ACTOR_START_TIMEOUT_S",
    "RAY_CONNECT_TIMEOUT_S",
    "RayConnectError",
    "ShardFailedError",
    "check_cluster_device",
    "check_reachable",
    "init_ray",
    "plan_actors",
    "ray_address_file",
    "resolve_ray_address",
    "run_shards",
    "shutdown_ray",
    "threads_for_cpus",
]

log = logging.getLogger(__name__)

#: How long a restarting actor may take to come back before it is retired.
ACTOR_RESTART_TIMEOUT_S = 600.0
#: How long actors may take to start (load the engine) before the run is abandoned.
ACTOR_START_TIMEOUT_S = 1800.0
#: How often, while shards are queued, the driver looks for nodes that joined the cluster.
GROW_INTERVAL_S = 2.0


class ShardFailedError(FailedShardsError, RuntimeError):
    """Shards that failed on every attempt (listed; never silently dropped)."""


class _ShardActor:
    """Holds one engine; ``process`` runs one shard and returns a ShardResult dict.

    ``make_processor(engine_config, vocabulary, options)``, when given, builds the object
    whose ``process(task)`` runs the shards instead (the scale simulation's stand-in)."""

    def __init__(self, engine_config: EngineConfig, vocabulary: Vocabulary, options: RunOptions, threads: int | None,
                 make_processor: Callable | None = None):
        import ray
        import torch

        failpoint("actor.start")  # ANNOTATOR_FAILPOINTS (annotator.failpoints): an actor that cannot start
        if threads:  # a CPU actor: as many torch threads as Ray gave it CPUs, not the whole machine
            assigned = ray.get_runtime_context().get_assigned_resources().get("CPU")
            torch.set_num_threads(threads_for_cpus(assigned, threads))
        if make_processor is not None:
            self.processor = make_processor(engine_config, vocabulary, options)
            return
        from annotator.engine import Engine
        from annotator.shards.processor import ShardProcessor

        self.processor = ShardProcessor(Engine(engine_config, vocabulary), options)

    def threads(self) -> int:
        import torch

        return torch.get_num_threads()

    def process(self, task: ShardTask) -> ShardResult:
        result = self.processor.process(task)
        if isinstance(result, ShardResult):
            result.made_by = {**_where(), "attempt": int(task.attempt)}
        return result

    def pid(self) -> int:
        return os.getpid()

    def ready(self) -> bool:
        return True


def _where() -> dict:
    """Where this actor runs (``node_id``, ``host``, ``actor``, ``pid``): a part's provenance."""
    import socket

    import ray

    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "host": socket.gethostname(), "actor": ctx.get_actor_id(),
            "pid": os.getpid()}


#: How long joining an existing Ray cluster may take before the run gives up.
RAY_CONNECT_TIMEOUT_S = 60.0


#: The processes of the local Ray that :func:`init_ray` started (raylet, GCS, dashboard,
#: agents), as psutil.Process objects; [] when Ray was joined or already running.
_LOCAL_RAY: list = []
#: Whether :func:`init_ray` started or joined this process's Ray (what :func:`stop_ray` ends).
_RAY_STARTED_HERE: list[bool] = [False]


@contextlib.contextmanager
def _signals_deferred():
    """SIGINT and SIGTERM wait until the block is over, then raise
    :class:`~annotator.errors.Interrupted` (the first one): ``ray.init`` and
    ``ray.shutdown`` are never cut in the middle (a SIGTERM while Ray started had ended in
    Ray's handler, exit 134 with a C++ stack dump; a Ctrl-C in Ray's atexit shutdown left
    its agents running). Ray's own SIGTERM handler is kept out (its ``set_sigterm_handler``
    is a no-op during the block) and our handlers are installed again afterwards. In a
    thread other than the main one: nothing is deferred."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    import ray._private.utils as ray_utils

    received: list[str] = []

    def record(signum, frame) -> None:
        received.append(signal.Signals(signum).name)

    saved = getattr(ray_utils, "set_sigterm_handler", None)  # Ray's private API: absent in another version
    if saved is not None:
        ray_utils.set_sigterm_handler = lambda handler: None
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, record)
    try:
        yield
    finally:
        if saved is not None:
            ray_utils.set_sigterm_handler = saved
        install_interrupt_handlers()
    if received:
        shutdown_ray()
        raise Interrupted(received[0])


def stop_ray() -> None:
    """:func:`shutdown_ray` if :func:`init_ray` started or joined this process's Ray (a
    command's last step, so that nothing is left for Ray's atexit handler); a Ray that
    was already running in this process (a test's, a notebook's) is left alone."""
    if _RAY_STARTED_HERE[0]:
        shutdown_ray()


def shutdown_ray() -> None:
    """Shut down this process's Ray, if one is initialised, signals deferred; then end
    whatever is left of a local Ray that :func:`init_ray` started, and their children (its
    dashboard and runtime-env agents can outlive ``ray.shutdown``): SIGTERM, then SIGKILL
    after 5 s."""
    import ray

    with _signals_deferred():
        _RAY_STARTED_HERE[0] = False
        left = []
        if _LOCAL_RAY:
            import psutil

            for p in _LOCAL_RAY:  # the tree before ray.shutdown orphans it
                with contextlib.suppress(psutil.Error):
                    if p.is_running():
                        left += [p, *p.children(recursive=True)]
            _LOCAL_RAY.clear()
        if ray.is_initialized():
            ray.shutdown()
        if left:
            import psutil

            left = [p for p in left if p.is_running()]
            for p in left:
                with contextlib.suppress(psutil.Error):
                    p.terminate()
            _, alive = psutil.wait_procs(left, timeout=5)
            for p in alive:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(alive, timeout=5)


def init_ray(address: str | None, timeout_s: float = RAY_CONNECT_TIMEOUT_S) -> str:
    """Join a cluster or start a local Ray (see :func:`resolve_ray_address`); returns
    what happened, for the run's log. Joining is bounded by ``timeout_s``: a cluster
    that does not answer raises :class:`RayConnectError` naming the address."""
    import threading

    import ray

    if ray.is_initialized():
        return "using the Ray already initialised in this process"
    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": True}  # ray.init types each option
    target = resolve_ray_address(address)
    failpoint("ray.start")  # ANNOTATOR_FAILPOINTS: the interruption tests signal here
    # The driver's core worker installs no C++ failure-signal handler: a SIGTERM is ours (exit 143).
    import ray._private.ray_constants as ray_constants

    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    if target is None:
        import psutil

        before = {p.pid for p in psutil.Process().children(recursive=True)}
        with _signals_deferred():
            _RAY_STARTED_HERE[0] = True
            try:
                ray.init(address="local", include_dashboard=False, **kwargs)
            finally:  # what it started, also when it failed half-way: shutdown_ray ends it
                _LOCAL_RAY[:] = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        return f"started a local Ray ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"
    check_reachable(target, min(timeout_s, 10.0))
    outcome: list = []

    def join() -> None:
        try:
            outcome.append(ray.init(address=target, **kwargs))
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            outcome.append(e)

    _RAY_STARTED_HERE[0] = True
    worker = threading.Thread(target=join, name="ray-init", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not outcome:
        raise RayConnectError(f"the Ray cluster at {target} did not answer within {timeout_s:.0f} s")
    if isinstance(outcome[0], BaseException):
        why = short_error(outcome[0])
        if "authentication" in why.lower() or "token" in why.lower():
            why += (" (the cluster uses token authentication: set RAY_AUTH_MODE=token and the cluster's token in "
                    "RAY_AUTH_TOKEN or ~/.ray/auth_token)")
        raise RayConnectError(f"cannot join the Ray cluster at {target}: {why}") from None
    return f"joined the Ray cluster at {target}"


def check_cluster_device(device: str) -> None:
    """``--device cuda[:N]`` on a joined cluster that has no GPU (a ConfigError-like
    :class:`RayConnectError`, raised before the output is opened)."""
    import ray

    if device.startswith("cuda") and int(ray.cluster_resources().get("GPU", 0)) == 0:
        raise RayConnectError(f"--device {device}: expected GPUs in the Ray cluster, got none "
                              f"(resources: {sorted(ray.cluster_resources())})")


def plan_actors(engine_config: EngineConfig, num_actors: int | None) -> tuple[int, dict, str]:
    """How many actors, with which resources, on which device ('cuda' or 'cpu'), on the
    cluster this process joined (:func:`annotator.distributed.placement.plan_placement`)."""
    import ray

    if num_actors is not None and num_actors < 1:
        raise ConfigError(f"--num-actors: expected >= 1, got {num_actors}")
    return plan_placement(engine_config.device, num_actors, ray.cluster_resources())


def run_shards(
    tasks: list[ShardTask],
    engine_config: EngineConfig,
    vocabulary: Vocabulary,
    options: RunOptions,
    *,
    num_actors: int | None,
    on_done: Callable[[ShardResult], None],
    in_flight_per_actor: int | None = None,
    make_processor: Callable | None = None,
) -> SchedulingStats:
    """Process ``tasks`` on Ray actors; ``on_done(result)`` is called per finished shard.
    ``make_processor``: see :class:`_ShardActor` (None: the real engine).

    Returns scheduling statistics (``actors``, ``device``, ``retries``, ``restarts``,
    ``driver_overhead_s``, ``shard_seconds``, ``shards_done``). Raises :class:`ShardFailedError` listing
    the shards that failed ``MAX_SHARD_ATTEMPTS`` times (after all others finished), or
    when the actors cannot start (message carries the actor's error).
    """
    import ray

    if not tasks:
        return SchedulingStats()
    n, resources, device = plan_actors(engine_config, num_actors)
    n = min(n, len(tasks))
    cfg = dataclasses.replace(engine_config, device=device) if engine_config.device == "auto" else engine_config
    threads = max(1, int(resources["num_cpus"])) if device == "cpu" else None
    # Ray restarts a dead actor without limit; the driver bounds the attempts per shard.
    # Two shards at a time per actor: one on the device while the other is read, encoded
    # and written (ShardProcessor serialises the device work; see worker.py).
    # ray's stubs for remote() lack the actor options (max_concurrency, max_restarts)
    Actor = ray.remote(max_restarts=-1, max_task_retries=0, max_concurrency=SHARDS_AT_ONCE,  # type: ignore[call-overload]
                       runtime_env=failpoints_runtime_env(), **resources)(_ShardActor)  # None unless armed
    def spawn() -> ActorSlot:
        return ActorSlot(Actor.remote(cfg, vocabulary, options, threads, make_processor))

    def target() -> int:  # nodes may join (or leave) while the run goes on
        return actors_that_fit(device, num_actors, ray.cluster_resources(), resources)

    slots = [spawn() for _ in range(n)]
    try:
        stats = _schedule(tasks, slots, device, on_done, in_flight_per_actor or SHARDS_AT_ONCE, spawn, target)
        if threads:  # as the actors report it (what torch really runs with)
            with contextlib.suppress(Exception):  # an actor lost at the very end: keep the plan's figure
                stats.threads_per_actor = threads_for_cpus(resources["num_cpus"], threads)
                stats.threads_per_actor = max(ray.get([s.handle.threads.remote() for s in slots], timeout=30))
        return stats
    finally:
        for s in slots:  # free the CPUs/GPUs now (also when a shard or on_done raised)
            with contextlib.suppress(Exception):  # best effort: the actor may be gone already
                ray.kill(s.handle)


# One event loop over Ray's waits (results, restart probes, timeouts); every decision is
# SchedulePolicy's, this only translates Ray's events for it.
def _schedule(tasks: list[ShardTask], slots: list[ActorSlot], device: str, on_done: Callable[[ShardResult], None],
              in_flight_per_actor: int, spawn: Callable[[], ActorSlot] | None = None,
              target: Callable[[], int] | None = None) -> SchedulingStats:
    """The driver's loop over ``slots`` (actors already created): Ray's waits and
    results here, every decision in :class:`SchedulePolicy`; see :func:`run_shards`.
    ``spawn``/``target``: create one more actor / how many the cluster holds now (a node
    that joins mid-run gets actors; None: a fixed set)."""
    import ray

    joining = _wait_for_engines(slots)
    loop = _ShardLoop(SchedulePolicy(tasks, in_flight_per_actor), slots, on_done,
                      SchedulingStats(actors=len(slots), device=device), spawn, target)
    for s in joining:
        loop.join(s)
    for s in slots:
        loop.fill(s)
    while loop.inflight or (loop.policy.queue and loop.probes):
        ready, _ = ray.wait(list(loop.inflight) + list(loop.probes), num_returns=1,
                            timeout=1.0 if loop.probes or (loop.policy.queue and spawn) else None)
        t_event = time.perf_counter()  # from here to the loop's end: the driver's own time
        loop.handle(ready[0] if ready else None, t_event)
        loop.stats.driver_overhead_s += time.perf_counter() - t_event
    return loop.finish()


def _wait_for_engines(slots: list[ActorSlot]) -> list[ActorSlot]:
    """Wait until one engine has loaded, failing fast with the real error (e.g. missing
    weights) when the first to answer cannot load; returns the slots still loading (they
    join the run when ready, e.g. on a node that is still starting)."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

    refs = {s.handle.ready.remote(): s for s in slots}
    failpoint("actors.wait")  # ANNOTATOR_FAILPOINTS: the interruption tests signal here
    try:
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=ACTOR_START_TIMEOUT_S)
        if not ready:
            raise GetTimeoutError(f"no actor was ready within {ACTOR_START_TIMEOUT_S:.0f} s")
        ray.get(ready[0])
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        ray.get(done)
    except (RayActorError, RayTaskError, GetTimeoutError) as e:
        raise ShardFailedError(f"the Ray actors could not load the engine, no shard ran: {short_error(e)}") from e
    return [s for ref, s in refs.items() if ref not in done]


class _ShardLoop:
    """The state of :func:`_schedule`'s loop (the shards in flight, the restart probes,
    the statistics) and what it does on each of Ray's events."""

    def __init__(self, policy: SchedulePolicy, slots: list[ActorSlot], on_done: Callable[[ShardResult], None],
                 stats: SchedulingStats, spawn: Callable[[], ActorSlot] | None = None,
                 target: Callable[[], int] | None = None):
        self.spawn = spawn
        self.target = target
        self.grown_at = time.perf_counter()
        self.policy = policy
        self.slots = slots
        self.on_done = on_done
        self.stats = stats
        self.inflight: dict = {}  # ObjectRef -> (slot, task)
        self.probes: dict = {}  # ObjectRef -> slot

    def fill(self, s: ActorSlot) -> None:
        """Submit to ``s`` the shards the policy gives it."""
        for ref, task in self.policy.fill(s, lambda task: s.handle.process.remote(task)):
            self.inflight[ref] = (s, task)

    def join(self, s: ActorSlot) -> None:
        """An actor still loading its engine (a new one, or one on a node still starting):
        it gets work once its ``ready()`` answers, like a restarted actor."""
        s.probe = s.handle.ready.remote()
        s.probe_since_s = time.perf_counter()
        s.joining = True
        self.probes[s.probe] = s

    def grow(self, now: float) -> None:
        """Every ``GROW_INTERVAL_S`` while shards are queued: one more actor for each that
        the cluster now holds beyond the live ones (a node joined)."""
        if self.spawn is None or self.target is None or not self.policy.queue or now - self.grown_at < GROW_INTERVAL_S:
            return
        self.grown_at = now
        try:
            more = min(self.target() - sum(not s.retired for s in self.slots), len(self.policy.queue))
        except Exception as e:  # noqa: BLE001 - the cluster's resources unreadable for a moment: later
            log.debug("cluster resources: %s", short_error(e))
            return
        for _ in range(max(0, more)):
            s = self.spawn()
            self.slots.append(s)
            self.stats.actors += 1
            self.join(s)
            log.info("a node joined: one more actor (%d)", len(self.slots))

    def start_probe(self, s: ActorSlot) -> None:
        """Ask a dead actor whether Ray has restarted it (``ready()``, retried by Ray)."""
        if s.probe is None and not s.retired:
            s.probe = s.handle.ready.options(max_task_retries=-1).remote()
            s.probe_since_s = time.perf_counter()
            self.probes[s.probe] = s
            self.stats.restarts += 1

    def retire(self, s: ActorSlot, why: str) -> None:
        s.retired = why
        log.error("an actor was retired: %s", why)
        if s.probe is not None:
            self.probes.pop(s.probe, None)
            s.probe = None

    def handle(self, ref, now: float) -> None:
        """One turn of the loop: ``ref`` returned (None: the wait timed out) at ``now``."""
        for s in [s for s in self.probes.values() if now - s.probe_since_s > ACTOR_RESTART_TIMEOUT_S]:
            self.retire(s, f"not ready {ACTOR_RESTART_TIMEOUT_S:.0f} s after it was started" if s.joining
                        else f"not back {ACTOR_RESTART_TIMEOUT_S:.0f} s after it died")
        if ref is not None and ref in self.probes:
            self._probe_returned(ref)
        elif ref is not None and ref in self.inflight:
            self._shard_returned(ref)
        self.grow(now)
        self.policy.no_actor_left(self.slots)
        for s in self.slots:
            self.fill(s)  # serialising and submitting the next shards

    def _probe_returned(self, ref) -> None:
        import ray

        s = self.probes.pop(ref)
        s.probe = None
        try:
            ray.get(ref)
            log.info("an actor joined the run" if s.joining else "an actor is back after a restart")
        except Exception as e:  # noqa: BLE001 - e.g. the engine no longer loads
            self.retire(s, f"could not {'start' if s.joining else 'be restarted'} ({short_error(e)})")
        s.joining = False

    def _shard_returned(self, ref) -> None:
        import ray
        from ray.exceptions import RayActorError, RayError, RayTaskError

        s, task = self.inflight.pop(ref)
        try:
            result = ray.get(ref)
        except RayActorError as e:
            # The actor died (Ray reports ActorDiedError, or ActorUnavailableError when the
            # connection dropped mid-task or the task reached it restarting).
            beside = [] if s.isolated else _unfinished([r for r in s.inflight if r != ref])
            self.policy.actor_died(s, ref, task, short_error(e), beside)
            self.start_probe(s)
        except RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, DeviceFaultError):
                retire = self.policy.device_failed(s, ref, task, short_error(cause))
                if retire:
                    self.retire(s, retire)
            else:
                self.policy.task_failed(s, ref, task, short_error(cause if cause else e))
        except RayError as e:  # e.g. the result was lost with its node
            self.policy.task_failed(s, ref, task, short_error(e))
        else:
            self.policy.finished(s, ref, task)
            self.on_done(result)
            failpoint("shard.done")  # ANNOTATOR_FAILPOINTS: the interruption tests signal here
            self.stats.shard_seconds += result.seconds
            self.stats.shards_done += 1

    def finish(self) -> SchedulingStats:
        """After the loop: the statistics, or :class:`ShardFailedError` naming the shards
        that failed every attempt."""
        self.policy.close()
        self.stats.retries = self.policy.retries + self.policy.device_retries
        self.stats.device_faults = self.policy.device_retries
        self.stats.shards_retried = len(self.policy.requeued)
        message = self.policy.failure_message()
        if message:
            raise ShardFailedError(message)
        return self.stats


def _unfinished(refs: list) -> list:
    """The refs among ``refs`` that have not returned a result (running, or died)."""
    import ray

    if not refs:
        return []
    done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
    out = [r for r in refs if r not in done]
    for r in done:
        try:
            ray.get(r, timeout=0)
        except Exception:  # noqa: BLE001 - died with the actor, or failed on its own: not finished
            out.append(r)
    return out

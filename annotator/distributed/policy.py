"""The scheduler's decisions, with no Ray: which shard goes to which actor next, what a
failure or an actor's death costs a shard, when a shard is given up. Pure state, driven
by :mod:`annotator.distributed.ray_runner` (and by plain unit tests).

The rules:

- Each actor runs up to ``in_flight`` shards at once. A shard that failed before, or
  that ran beside another shard when their actor died (a *suspect*), runs ALONE on its
  actor, so that its next failure is surely its own.
- A shard's task that raised, or whose actor died while it ran alone, uses up one of
  ``MAX_SHARD_ATTEMPTS`` attempts. When an actor dies running several shards, the
  culprit is unknown: each is requeued *free* (no attempt used) as a suspect. A shard
  requeued free more than ``MAX_FREE_REQUEUES`` times counts one attempt anyway, so
  that no shard cycles forever.
- A shard whose actor died under it is retried *carefully* (one image at a time, each
  named in a crash log first; see :mod:`annotator.storage.crashlog`).
- A shard whose attempt failed on a device fault (out of memory, a CUDA error: the
  processor raises :class:`~annotator.shards.task.DeviceFaultError` instead of writing error
  rows) is requeued without using up an attempt (up to ``MAX_FREE_REQUEUES`` times), marked
  ``after_device_fault`` so that its next attempt can tell an image's own fault from the
  device's. The fault is the actor's: after ``MAX_DEVICE_FAULTS`` device-fault attempts in
  a row (none finished between) its actor is retired, like one that does not come back.
- A shard that used up its attempts, or that no actor is left to run, is *failed*:
  reported by the caller after every other shard finished, never dropped.

Actors are :class:`ActorSlot` objects whose ``handle`` and in-flight ``refs`` are opaque
to the policy (Ray handles and ObjectRefs in production, anything in tests).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from annotator.shards.task import ShardTask

log = logging.getLogger(__name__)

#: Attempts per shard (first run + retries) before it is reported as failed. Four, so
#: that a shard with one poison image gets through: a first death, two careful
#: attempts dying on the image (crashlog.DEATHS_TO_SKIP), one that skips it.
MAX_SHARD_ATTEMPTS = 4
#: A shard requeued this many times without a counted failure (its actor kept being
#: unavailable) counts one failure anyway, so that no shard can cycle forever.
MAX_FREE_REQUEUES = 5
#: Device-fault attempts in a row on one actor (none finished between) before it is
#: retired: its device keeps failing; the other actors go on.
MAX_DEVICE_FAULTS = 3


@dataclass
class ActorSlot:
    """The driver's view of one actor."""

    handle: Any
    inflight: list = field(default_factory=list)  # refs, in submission order
    collateral: set = field(default_factory=set)  # refs that ran beside a task whose actor died
    isolated: bool = False  # running a retried or suspect shard alone
    probe: Any = None  # ready() ref while the actor restarts
    probe_since_s: float = 0.0
    retired: str | None = None  # why it gets no more work
    device_faults: int = 0  # device-fault attempts in a row (reset when a shard finishes)
    joining: bool = False  # loading its engine for the first time (its probe is ready())

    @property
    def available(self) -> bool:
        """May be given work now (not retired, not restarting, not running a shard alone)."""
        return not self.retired and self.probe is None and not self.isolated


class SchedulePolicy:
    """Queue, attempts and verdicts of one run's shards."""

    def __init__(self, tasks: list[ShardTask], in_flight: int):
        if in_flight < 1:
            raise ValueError(f"in_flight: expected >= 1 shard per actor, got {in_flight}")
        self.tasks = list(tasks)
        self.in_flight = in_flight
        self.queue: deque[ShardTask] = deque(tasks)
        self.attempts: dict[int, int] = {}  # counted failures per shard
        self.free: dict[int, int] = {}  # uncounted requeues per shard
        self.failed: dict[int, str] = {}  # shard index -> last error
        self.suspects: set[int] = set()  # ran beside another shard when their actor died
        self.died: set[int] = set()  # their actor died under them: retried carefully
        self.retries = 0
        self.device_retries = 0  # attempts that failed on a device fault (requeued free)
        self.requeued: set[int] = set()  # shards that ran again, for any reason (counted or free)

    # -- handing out work

    def fill(self, slot: ActorSlot, submit: Callable[[ShardTask], Hashable]) -> list[tuple[Hashable, ShardTask]]:
        """Give ``slot`` as many queued shards as it may run now; ``submit(task)`` starts
        one and returns its ref. Returns the (ref, task) pairs started."""
        started: list = []
        if not slot.available:
            return started
        while self.queue and len(slot.inflight) < self.in_flight:
            task = self.queue[0]
            if task.shard_index in self.died:
                task.careful = True  # one image at a time: a poison image costs one row, not the shard
            if self.attempts.get(task.shard_index) or task.shard_index in self.suspects:  # alone
                if slot.inflight:
                    return started
                slot.isolated = True
            self.queue.popleft()
            ref = submit(task)
            slot.inflight.append(ref)
            started.append((ref, task))
            if slot.isolated:
                return started
        return started

    # -- outcomes

    def finished(self, slot: ActorSlot, ref: Hashable, task: ShardTask) -> None:
        """``task`` (``ref`` on ``slot``) returned its result."""
        self._returned(slot, ref)
        slot.collateral.discard(ref)
        slot.device_faults = 0
        self.suspects.discard(task.shard_index)

    def task_failed(self, slot: ActorSlot, ref: Hashable, task: ShardTask, why: str) -> None:
        """``task`` raised (or its result was lost): one attempt used up."""
        self._returned(slot, ref)
        self.requeue(task, counted=True, why=why)

    def device_failed(self, slot: ActorSlot, ref: Hashable, task: ShardTask, why: str) -> str | None:
        """``task`` failed on ``slot``'s device (a :class:`~annotator.shards.task.DeviceFaultError`):
        requeued without using up an attempt, marked ``after_device_fault``. Returns why
        ``slot`` must be retired (its ``MAX_DEVICE_FAULTS``-th device fault in a row), or None."""
        self._returned(slot, ref)
        slot.device_faults += 1
        task.after_device_fault = True
        self.device_retries += 1
        self.requeue(task, counted=False, why=f"device fault: {why}")
        if slot.device_faults >= MAX_DEVICE_FAULTS:
            return f"its device failed {slot.device_faults} attempts in a row (last: {why})"
        return None

    def actor_died(self, slot: ActorSlot, ref: Hashable, task: ShardTask, why: str, beside: list) -> None:
        """``slot``'s actor died running ``task``. ``beside``: the other refs of ``slot``
        that had not returned when it died (ignored when ``task`` ran alone). Alone on
        it, the shard was the cause (an attempt is used up); beside others, the cause
        is unknown: each is requeued free, to run alone next."""
        was_isolated = slot.isolated
        self._returned(slot, ref)
        beside = [] if was_isolated else beside
        shared = ref in slot.collateral or bool(beside)
        slot.collateral.discard(ref)
        slot.collateral.update(beside)
        self.died.add(task.shard_index)
        if shared:
            self.suspects.add(task.shard_index)
        self.requeue(task, counted=not shared, why=f"actor died: {why}")

    def requeue(self, task: ShardTask, counted: bool, why: str) -> None:
        """Put ``task`` back at the head of the queue, or fail it when its attempts are used up."""
        i = task.shard_index
        if not counted:
            self.free[i] = self.free.get(i, 0) + 1
            counted = self.free[i] > MAX_FREE_REQUEUES
            if counted:
                self.free[i] = 0
        if counted:
            k = self.attempts[i] = self.attempts.get(i, 0) + 1
            self.retries += 1
            if k >= MAX_SHARD_ATTEMPTS:
                self.failed[i] = why
                log.error("shard %d failed %d times, giving up on it: %s", i, k, why)
                return
            log.warning("shard %d failed (attempt %d of %d: %s); retrying", i, k, MAX_SHARD_ATTEMPTS, why)
        elif why.startswith("device fault"):
            log.warning("shard %d: its attempt failed on the device (%s); retrying", i, why)
        else:
            log.info("shard %d requeued to run alone (its actor died while it ran beside another shard: %s)", i, why)
        task.attempt += 1
        self.requeued.add(i)
        self.queue.appendleft(task)

    def no_actor_left(self, slots: list[ActorSlot]) -> None:
        """When every actor is retired and nothing runs, fail what is still queued."""
        if self.queue and all(s.retired for s in slots) and not any(s.inflight for s in slots):
            why = "; ".join(sorted({s.retired for s in slots if s.retired}))
            for task in self.queue:
                self.failed[task.shard_index] = f"no actor left to run it ({why})"
            self.queue.clear()

    def close(self) -> None:
        """At the end: nothing may stay queued silently."""
        for task in self.queue:  # cannot happen while an actor is alive
            self.failed.setdefault(task.shard_index, "never ran: no actor was available")
        self.queue.clear()

    def failure_message(self) -> str | None:
        """One message listing every failed shard (its images and last error), or None."""
        if not self.failed:
            return None
        return (f"{len(self.failed)} shard(s) failed on every attempt and have no output: "
                + "; ".join(f"shard {i} ({self.describe(i)}): {why}" for i, why in sorted(self.failed.items()))
                + ". The other shards are written; re-run the same command to retry these.")

    def describe(self, shard_index: int) -> str:
        """'N images, first.jpg .. last.jpg' for error messages."""
        for t in self.tasks:
            if t.shard_index == shard_index and t.refs:
                first, last = t.refs[0].file_name, t.refs[-1].file_name
                return f"{len(t.refs)} images, {first[:120]}" + (f" .. {last[:120]}" if last != first else "")
        return "no images"

    @staticmethod
    def _returned(slot: ActorSlot, ref: Hashable) -> None:
        if ref in slot.inflight:
            slot.inflight.remove(ref)
        slot.isolated = False

"""The scheduler's decisions without Ray (``annotator.distributed.policy``): retries,
careful mode, death attribution with two shards at once, running alone, giving up,
retired actors. Refs are plain strings; ``submit`` records what was started."""

from __future__ import annotations

import itertools

import pytest

from annotator.distributed.policy import (
    MAX_FREE_REQUEUES,
    MAX_SHARD_ATTEMPTS,
    ActorSlot,
    SchedulePolicy,
)
from annotator.inputs.listing import ImageRef
from annotator.shards.task import make_shards


def _tasks(n_shards: int, per_shard: int = 2):
    refs = [ImageRef(i + 1, f"img{i:03d}.jpg", f"/data/img{i:03d}.jpg") for i in range(n_shards * per_shard)]
    return make_shards(refs, per_shard)


class Submitter:
    def __init__(self):
        self.counter = itertools.count()
        self.started: list[tuple[str, int]] = []

    def __call__(self, task):
        ref = f"ref{next(self.counter)}"
        self.started.append((ref, task.shard_index))
        return ref


def test_fill_keeps_in_flight_shards_per_actor():
    policy, submit = SchedulePolicy(_tasks(5), in_flight=2), Submitter()
    a, b = ActorSlot("a"), ActorSlot("b")
    assert [t.shard_index for _, t in policy.fill(a, submit)] == [0, 1]
    assert [t.shard_index for _, t in policy.fill(b, submit)] == [2, 3]
    assert policy.fill(a, submit) == []  # full
    ref, task = "ref0", policy.tasks[0]
    policy.finished(a, ref, task)
    assert [t.shard_index for _, t in policy.fill(a, submit)] == [4]
    assert not policy.queue


def test_a_failed_task_is_retried_alone_then_given_up():
    policy, submit = SchedulePolicy(_tasks(3), in_flight=2), Submitter()
    slot = ActorSlot("a")
    (r0, t0), (r1, t1) = policy.fill(slot, submit)
    policy.task_failed(slot, r0, t0, "OSError: disk")
    assert policy.attempts == {0: 1} and policy.queue[0] is t0
    assert policy.fill(slot, submit) == []  # shard 0 must run alone: it waits for shard 1
    policy.finished(slot, r1, t1)
    (r, t), = policy.fill(slot, submit)
    assert t is t0 and slot.isolated  # alone: nothing else is given to this actor
    assert policy.fill(slot, submit) == []
    for attempt in range(2, MAX_SHARD_ATTEMPTS + 1):
        policy.task_failed(slot, r, t, "OSError: disk")
        if attempt < MAX_SHARD_ATTEMPTS:
            (r, t), = policy.fill(slot, submit)
    assert policy.failed == {0: "OSError: disk"}
    assert policy.retries == MAX_SHARD_ATTEMPTS
    message = policy.failure_message()
    assert "shard 0 (2 images, img000.jpg .. img001.jpg): OSError: disk" in message
    assert "re-run the same command" in message


def test_a_death_beside_another_shard_costs_no_attempt_and_isolates_both():
    policy, submit = SchedulePolicy(_tasks(3), in_flight=2), Submitter()
    slot = ActorSlot("a")
    (r0, t0), (r1, t1) = policy.fill(slot, submit)
    policy.actor_died(slot, r0, t0, "ActorDiedError", beside=[r1])
    assert policy.attempts == {} and policy.free == {0: 1}
    assert 0 in policy.suspects and 0 in policy.died
    # the other shard's own death report: it ran beside the first one (collateral)
    policy.actor_died(slot, r1, t1, "ActorDiedError", beside=[])
    assert policy.attempts == {} and policy.free == {0: 1, 1: 1}
    assert policy.suspects == {0, 1}
    (r, t), = policy.fill(slot, submit)  # each runs alone next, carefully
    assert slot.isolated and t.careful


def test_a_death_alone_counts_and_the_retry_is_careful():
    policy, submit = SchedulePolicy(_tasks(1), in_flight=2), Submitter()
    slot = ActorSlot("a")
    (r, t), = policy.fill(slot, submit)
    policy.actor_died(slot, r, t, "ActorDiedError", beside=[])
    assert policy.attempts == {0: 1} and policy.suspects == set()
    (r, t), = policy.fill(slot, submit)
    assert t.careful and slot.isolated


def test_endless_free_requeues_count_in_the_end():
    policy = SchedulePolicy(_tasks(1), in_flight=2)
    task = policy.queue.popleft()
    for _ in range(MAX_FREE_REQUEUES + 1):
        policy.requeue(task, counted=False, why="actor unavailable")
        policy.queue.popleft()
    assert policy.attempts == {0: 1}


def test_restarting_or_retired_actors_get_no_work_and_none_left_fails_the_queue():
    policy, submit = SchedulePolicy(_tasks(2), in_flight=2), Submitter()
    restarting, retired = ActorSlot("a", probe="probe-ref"), ActorSlot("b", retired="could not be restarted")
    assert policy.fill(restarting, submit) == [] and policy.fill(retired, submit) == []
    restarting.retired = "not back 600 s after it died"
    policy.no_actor_left([restarting, retired])
    assert set(policy.failed) == {0, 1} and "no actor left to run it" in policy.failed[0]
    assert not policy.queue


def test_close_never_drops_a_queued_shard():
    policy = SchedulePolicy(_tasks(2), in_flight=1)
    policy.close()
    assert set(policy.failed) == {0, 1}


def test_in_flight_must_be_positive():
    with pytest.raises(ValueError, match="in_flight: expected >= 1"):
        SchedulePolicy([], in_flight=0)


# ----------------------------------------------------------------------------- device faults (issue 21.1)


def test_a_device_fault_requeues_the_shard_without_using_an_attempt():
    policy, submit = SchedulePolicy(_tasks(2), in_flight=2), Submitter()
    slot = ActorSlot("a")
    (r0, t0), (r1, t1) = policy.fill(slot, submit)
    assert policy.device_failed(slot, r0, t0, "DeviceFaultError: CUDA out of memory") is None
    assert policy.attempts == {} and policy.queue[0] is t0 and not policy.failed
    assert t0.after_device_fault and t0.attempt == 1  # its next attempt tells the image's fault from the device's
    assert policy.device_retries == 1
    policy.finished(slot, r1, t1)
    assert slot.device_faults == 0  # a shard finished: the device works


def test_an_actor_whose_device_keeps_failing_is_retired_and_the_others_go_on():
    from annotator.distributed.policy import MAX_DEVICE_FAULTS

    policy, submit = SchedulePolicy(_tasks(4), in_flight=1), Submitter()
    bad, good = ActorSlot("bad"), ActorSlot("good")
    retire = None
    for _ in range(MAX_DEVICE_FAULTS):
        assert retire is None
        (ref, task), = policy.fill(bad, submit)
        retire = policy.device_failed(bad, ref, task, "DeviceFaultError: CUDA error: an illegal memory access")
    assert retire and f"failed {MAX_DEVICE_FAULTS} attempts in a row" in retire
    bad.retired = retire
    done = []
    while policy.queue:
        assert policy.fill(bad, submit) == []  # retired: no more work
        (ref, task), = policy.fill(good, submit)
        policy.finished(good, ref, task)
        done.append(task.shard_index)
        policy.no_actor_left([bad, good])
    assert sorted(done) == [0, 1, 2, 3] and not policy.failed and policy.attempts == {}

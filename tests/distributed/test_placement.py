"""annotator.distributed.placement: how many actors a cluster holds, at the start and
when nodes join a run in progress (issue 21.6)."""

from __future__ import annotations

from annotator.distributed.placement import actors_that_fit, plan_placement


def test_a_joined_node_makes_room_for_more_actors_of_the_same_size():
    n, per_actor, device = plan_placement("cpu", None, {"CPU": 2.0})
    assert (n, per_actor, device) == (1, {"num_cpus": 2}, "cpu")
    assert actors_that_fit("cpu", None, {"CPU": 2.0}, per_actor) == 1
    assert actors_that_fit("cpu", None, {"CPU": 4.0}, per_actor) == 2  # a second 2-CPU node joined
    assert actors_that_fit("cpu", None, {"CPU": 3.0}, per_actor) == 1  # not enough for another of 2 CPUs


def test_num_actors_caps_the_growth():
    _, per_actor, _ = plan_placement("cpu", 2, {"CPU": 2.0})
    assert actors_that_fit("cpu", 2, {"CPU": 8.0}, per_actor) == 2


def test_one_actor_per_gpu_as_gpus_join():
    n, per_actor, device = plan_placement("auto", None, {"CPU": 8.0, "GPU": 1.0})
    assert (n, device) == (1, "cuda")
    assert actors_that_fit("cuda", None, {"CPU": 16.0, "GPU": 3.0}, per_actor) == 3
    assert actors_that_fit("cuda", 2, {"CPU": 16.0, "GPU": 3.0}, per_actor) == 2

"""The benchmark runs end to end on the CPU with the test models (no timed assertions)."""

import json
import subprocess
import sys

from PIL import Image

from benchmarks import benchmark as bench
from benchmarks import child_env
from benchmarks.data import synthetic_image

TINY = ["--model", "tiny-random", "--pretrained", "random", "--saliency", "found-tiny-random", "--device", "cpu"]


def test_bench_main_writes_positive_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = bench.main([*TINY, "--images", "4", "--naive-images", "2", "--skip-ray", "--batch-size", "2",
                     "--shard-size", "3", "--json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    for key in ("device", "images", "images_per_s", "naive_images_per_s", "ratio", "stages",
                "engine_overhead_fraction", "naive_images_per_s_with_saliency", "config", "ray"):
        assert key in r, key
    assert r["images"] == 4 and r["engine"]["errors"] == 0
    assert r["images_per_s"] > 0 and r["naive_images_per_s"] > 0 and r["ratio"] > 0
    assert r["naive_images_per_s_with_saliency"] <= r["naive_images_per_s"]
    assert r["naive"]["images"] == 2
    for stage in ("read", "decode", "crops", "clip", "saliency", "guidance", "encode", "write"):
        assert r["stages"][stage] > 0, stage
    assert 0 < r["engine_overhead_fraction"] < 1
    assert r["device"] and r["device_type"] == "cpu"
    assert r["config"]["model"] == "tiny-random"
    assert r["ray"] == {"skipped": "--skip-ray"}
    assert r["engine"]["gpu_max_memory_allocated_bytes"] is None
    printed = capsys.readouterr().out
    assert "images/s" in printed and "ratio engine / naive" in printed


def test_bench_on_a_source_folder_without_naive(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.fromarray(synthetic_image(i, (40, 56))).save(src / f"a{i}.png")
    (src / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "b.json"
    assert bench.main([*TINY, "--source", str(src), "--images", "10", "--naive-images", "0", "--skip-ray",
                       "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["images"] == 4 and r["engine"]["errors"] == 1  # every listed file is one row
    assert r["naive_images_per_s"] is None and r["ratio"] is None


def test_import_needs_neither_ray_nor_datasets():
    code = "import sys, benchmarks.benchmark; print(sorted(m for m in ('ray', 'datasets') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=child_env()).stdout
    assert out.strip() == "[]"


def test_engine_argv_round_trips_the_config():
    import argparse

    from annotator.cli import add_engine_arguments, engine_config_from_args

    p = argparse.ArgumentParser()
    add_engine_arguments(p)
    cfg = engine_config_from_args(p.parse_args([*TINY, "--protocol", "official", "--patch-sizes", "256,128",
                                                "--scale-weights", "1,3", "--templates", "a {} photo"]))
    again = engine_config_from_args(p.parse_args(bench._engine_argv(cfg)))
    assert again == cfg


def test_bench_with_a_stub_device_compares_one_and_two_shards_at_once(tmp_path, capsys):
    out = tmp_path / "stub.json"
    assert bench.main([*TINY, "--images", "6", "--batch-size", "2", "--shard-size", "2",
                       "--stub-device-ms-per-image", "5", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    st = r["stub_device"]
    assert st["stub_device_images_per_s"] == 200.0 and st["shards_at_once"] == 2
    # the device is a 5 ms/image sleep: no pipeline can beat 200 images/s
    assert 0 < st["images_per_s_one_shard_at_a_time"] <= 200 and 0 < st["images_per_s"] <= 200
    assert 0 < st["device_busy_fraction"] <= 1 and 0 < st["device_busy_fraction_one_shard_at_a_time"] <= 1
    assert r["images"] == 6 and r["engine"]["errors"] == 0 and r["engine"]["shards_at_once"] == 2
    assert r["stages"]["stub_device"] >= 6 * 0.005 and r["stages"]["clip"] == 0  # no model ran
    assert r["naive"] == {"images": 0, "skipped": "--stub-device-ms-per-image"}
    assert r["ray"] == {"skipped": "--stub-device-ms-per-image"}
    assert "stub device at 200 images/s" in capsys.readouterr().out


def test_bench_rejects_bad_counts(tmp_path):
    import pytest

    for argv, match in ((["--shards-at-once", "0"], "--shards-at-once: expected >= 1, got 0"),
                        (["--stub-device-ms-per-image", "0"], "--stub-device-ms-per-image: expected > 0, got 0.0")):
        with pytest.raises(SystemExit, match=match):
            bench.main([*TINY, "--images", "2", "--skip-ray", "--workdir", str(tmp_path), *argv])


def test_manifest_scale_probe(tmp_path):
    from benchmarks.probes import run_manifest_scale

    r = run_manifest_scale([10, 200], tmp_path)
    assert r["flush_interval_s"] > 0 and [x["shards_listed"] for x in r["runs"]] == [10, 200]
    for x in r["runs"]:
        assert x["one_save_ms"] > 0 and x["mark_finished_ms_amortised"] > 0
    assert list(tmp_path.iterdir()) == []  # cleaned up

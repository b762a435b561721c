"""The scale simulation and the lever comparison run end to end (no timed assertions)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from annotator.config import EngineConfig
from annotator.inputs.vocab import Vocabulary
from benchmarks import benchmark as bench
from benchmarks.levers import LEVERS, run_lever_compare
from benchmarks.scale import make_empty_tree, run_scale_simulation


def test_empty_tree_has_the_files_asked_for(tmp_path):
    make_empty_tree(tmp_path / "t", 2500)
    files = sorted(p.relative_to(tmp_path / "t").as_posix() for p in (tmp_path / "t").rglob("*.jpg"))
    assert len(files) == 2500 and files[0] == "d00000/img_0000000.jpg" and files[-1] == "d00002/img_0002499.jpg"


def test_scale_simulation_through_the_real_stages(tmp_path):
    pytest.importorskip("ray")
    (tmp_path / "vocab.txt").write_text("cat\ndog\n")
    r = run_scale_simulation([300], tmp_path, tmp_path / "vocab.txt", shard_size=40, actors=2, ms_per_image=0.0)
    (run,) = r["runs"]
    d = run["driver"]
    assert "error" not in d, d.get("error")
    assert d["images"] == 300 and d["shards"] == 8
    assert d["driver_imported_torch"] is False
    assert d["scheduling"]["shards_done"] == 8 and d["scheduling"]["actors"] == 2
    assert d["peak_rss_mib"] >= d["peak_rss_mib_after_listing"] > 0
    assert run["reduce"]["exit_code"] == 0 and run["reduce"]["peak_rss_mib"] > 0
    assert not (tmp_path / "scale-300").exists()  # cleaned up


def test_bench_scale_flag_reports_the_simulation(tmp_path, monkeypatch):
    seen = {}

    def fake(counts, workdir, vocab_path, **kw):
        seen.update(counts=counts, **kw)
        return {"runs": []}

    monkeypatch.setattr(bench, "run_scale_simulation", fake)
    out = tmp_path / "b.json"
    assert bench.main(["--model", "toy", "--saliency", "toy", "--device", "cpu", "--images", "2", "--naive-images", "0",
                       "--skip-ray", "--scale", "100,1000", "--scale-actors", "3", "--json", str(out)]) == 0
    argv = seen.pop("engine_argv")  # the simulated run is configured as the benchmark is
    assert argv[argv.index("--model") + 1] == "toy" and argv[argv.index("--saliency") + 1] == "toy"
    assert seen == {"counts": (100, 1000), "shard_size": 64, "actors": 3, "ms_per_image": 3.0}
    assert json.loads(out.read_text())["scale"] == {"runs": []}


def test_scale_only_simulates_a_real_configuration_without_its_weights(tmp_path):
    """ViT-B-32 with its default tag and FOUND: no engine is loaded, the weight files
    this machine lacks are recorded, and the driver imports neither torch nor open_clip."""
    pytest.importorskip("ray")
    out = tmp_path / "scale.json"
    assert bench.main(["--scale-only", "--scale", "120", "--model", "ViT-B-32", "--saliency", "found",
                       "--device", "cpu", "--shard-size", "40", "--scale-actors", "1", "--scale-ms-per-image", "0",
                       "--workdir", str(tmp_path / "w"), "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["config"]["model"] == "ViT-B-32" and r["config"]["pretrained"] == "laion2b_s34b_b79k"
    assert "--model ViT-B-32" in r["scale"]["engine_options"]
    (run,) = r["scale"]["runs"]
    d = run["driver"]
    assert "error" not in d, d.get("error")
    assert d["images"] == 120 and d["shards"] == 3 and isinstance(d["weight_files_missing"], list)
    assert d["driver_imported_torch"] is False and d["driver_imported_open_clip"] is False
    assert run["reduce"]["exit_code"] == 0
    assert "torch" not in r and "engine" not in r  # no engine pass


def test_scale_only_needs_scale():
    with pytest.raises(SystemExit, match="--scale-only: expected --scale"):
        bench.main(["--scale-only", "--model", "toy", "--saliency", "toy"])


def test_every_lever_runs_and_reports_agreement():
    cfg = EngineConfig(model="tiny-random", pretrained="random", saliency="found-tiny-random", device="cpu",
                       patch_sizes_px=(256, 128), crop_chunk=8)
    vocab = Vocabulary.from_names(["red", "green thing", "a blue object"])
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)]
    r = run_lever_compare(cfg, vocab, images, rounds=1, levers=[n for n in LEVERS if n != "torch_compile"])
    assert set(r["levers"]) == set(LEVERS) - {"torch_compile"}
    for name, v in r["levers"].items():
        assert v["images_per_s"] > 0 and v["speedup"] > 0, name
    assert r["levers"]["baseline"]["label_agreement"] == 1.0
    for name in ("crop_chunk_x4", "channels_last", "dino_eager_attention"):
        assert r["levers"][name]["label_agreement"] > 0.99, name


def test_precision_compare_reports_both_precisions_on_one_timing_loop():
    from benchmarks.probes import run_precision_compare

    cfg = EngineConfig(model="tiny-random", pretrained="random", saliency="none", device="cpu", patch_sizes_px=(256,))
    images = [np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)]
    r = run_precision_compare(cfg, Vocabulary.from_names(["red", "green thing"]), images, rounds=1)
    assert r["fp32"]["images_per_s"] > 0 and r["bf16"]["images_per_s"] > 0 and r["bf16_speedup"] > 0
    assert 0.9 < r["label_agreement"] <= 1.0 and r["images"] == 1

"""The compact listing: ImageRefs behaves as the list of ImageRef it stands for, holds
names as columns, and crosses a process boundary as a shard's list of refs."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from annotator.inputs.catalog import ImageRef, ImageRefs, ImageRefsBuilder
from annotator.inputs.listing import list_images
from annotator.shards.task import make_shards


def _refs(names, prefix="/data/"):
    return [ImageRef(i, n, prefix + n) for i, n in enumerate(names, start=1)]


def test_imagerefs_equal_the_refs_they_hold():
    refs = _refs(["a.jpg", "b/c.png", "é.jpg", "z.jpg"])
    refs.append(ImageRef(9, "elsewhere.jpg", "s3://other/elsewhere.jpg"))  # a uri of another form
    compact = ImageRefs.from_refs(refs)
    assert len(compact) == 5
    assert list(compact) == refs
    assert [compact[k] for k in range(5)] == refs
    assert compact[-1] == refs[-1]
    assert list(compact[1:4]) == refs[1:4] and list(compact[3:]) == refs[3:] and list(compact[::2]) == refs[::2]
    assert list(compact.file_names()) == [r.file_name for r in refs]
    assert compact == refs
    with pytest.raises(IndexError, match="out of range"):
        compact[5]


def test_hugging_face_rows_keep_their_index_and_uri():
    refs = [ImageRef(i + 1, f"{i:08d}.png", f"hf://name/train/{i}", i) for i in range(70_000)]
    compact = ImageRefs.from_refs(refs)
    assert compact[0] == refs[0] and compact[69_999] == refs[69_999]
    assert list(compact[65_530:65_540]) == refs[65_530:65_540]  # across the builder's chunk boundary


def test_sorting_by_name_assigns_ids_and_keeps_odd_names():
    b = ImageRefsBuilder(chunk=2)
    names = ["b.jpg", "a/x.png", "\udcff-not-utf8.jpg", "c.jpg", "a.jpg"]
    for n in names:
        b.add(n, "/root/" + n)
    b.add("z.jpg", "/elsewhere/z.jpg")
    listed = b.build(sort_by_name=True)
    assert [r.file_name for r in listed] == sorted([*names, "z.jpg"])
    assert [r.image_id for r in listed] == list(range(1, 7))
    by_name = {r.file_name: r.uri for r in listed}
    assert by_name["z.jpg"] == "/elsewhere/z.jpg" and by_name["\udcff-not-utf8.jpg"] == "/root/\udcff-not-utf8.jpg"


def test_a_shard_pickles_as_a_plain_list_of_its_refs():
    compact = ImageRefs.from_refs(_refs([f"{i:05d}.jpg" for i in range(1000)]))
    task = make_shards(compact, 64)[3]
    assert isinstance(task.refs, ImageRefs) and len(task.refs) == 64
    shipped = pickle.loads(pickle.dumps(task))
    assert isinstance(shipped.refs, list) and shipped.refs == list(compact[192:256])
    assert len(pickle.dumps(task)) < 20_000  # the shard's refs, not the listing's buffers


def test_builder_refuses_mixed_ids():
    b = ImageRefsBuilder()
    b.add("a.jpg", "/a.jpg", image_id=1)
    with pytest.raises(ValueError, match="image_id"):
        b.add("b.jpg", "/b.jpg")


def test_a_listing_holds_names_as_columns(tmp_path: Path):
    """20,000 files listed: tens of bytes per image in the columns, not ~1 KB of objects."""
    for d in range(20):
        folder = tmp_path / f"d{d:02d}"
        folder.mkdir()
        for i in range(1000):
            (folder / f"img_{i:05d}.jpg").touch()
    listed = list_images(str(tmp_path))
    assert isinstance(listed, ImageRefs) and len(listed) == 20_000
    assert listed.nbytes / len(listed) < 64
    assert listed[0] == ImageRef(1, "d00/img_00000.jpg", str(tmp_path / "d00" / "img_00000.jpg"))
    assert listed[-1].file_name == "d19/img_00999.jpg"


def test_the_driver_stages_import_no_torch(tmp_path: Path):
    """Listing, opening the output and planning shards never import torch (~500 MB of
    RSS with a CUDA build): the driver of a million-image run stays small."""
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        (tmp_path / "imgs" / f"{i}.jpg").touch()
    (tmp_path / "vocab.txt").write_text("cat\ndog\n")
    code = f"""
import sys
from annotator import job
from annotator.run import build_parser
args = build_parser().parse_args(["--source", {str(tmp_path / 'imgs')!r}, "--output", {str(tmp_path / 'out')!r},
    "--vocab", {str(tmp_path / 'vocab.txt')!r}, "--model", "tiny-random", "--pretrained", "random",
    "--saliency", "none", "--device", "cpu", "--quiet"])
from annotator.request import RunRequest
request = RunRequest.from_args(args)
checked = job.validate(request)
inputs = job.list_inputs(request, checked)
opened = job.open_run_output(request, checked, inputs)
print("TORCH", "torch" in sys.modules, len(opened.tasks))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "TORCH False 1" in out.stdout, out.stderr[-2000:]


def test_the_driver_of_an_open_clip_model_imports_neither_torch_nor_open_clip(tmp_path: Path):
    """The whole driver of a run of a real open_clip model (``--model ViT-B-32
    --pretrained openai``, with FOUND): building the request, validating it (the model
    name, the tag and every weight file resolved), listing, opening the output, and the
    merge, summary and report once the shards are written, in a fresh process that then
    holds neither torch nor open_clip. The checkpoints are stand-in files placed where
    the offline error says to put them (nothing is loaded here)."""
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 6), (200, 30 * i, 30)).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "vocab.txt").write_text("cat\ndog\n")
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in ("open_clip_ViT-B-32_openai.safetensors", "dino_deitsmall8_pretrain.pth"):
        (weights / name).write_bytes(b"stand-in")
    found = Path(__file__).resolve().parents[3] / "shared" / "weights" / "found_decoder_weights.pt"
    found_argv = ["--found-weights", str(found)] if found.is_file() else ["--saliency", "found-bkg"]
    code = f"""
import os, sys
os.environ["ANNOTATOR_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
import numpy as np
from annotator import job, records
from annotator.request import RunRequest
from annotator.run import build_parser
from annotator.storage import parts

args = build_parser().parse_args(["--source", {str(tmp_path / 'imgs')!r}, "--output", {str(tmp_path / 'out')!r},
    "--vocab", {str(tmp_path / 'vocab.txt')!r}, "--model", "ViT-B-32", "--pretrained", "openai",
    "--weights-dir", {str(weights)!r}, *{found_argv!r}, "--device", "cpu", "--shard-size", "2", "--quiet"])
request = RunRequest.from_args(args)
checked = job.validate(request)
inputs = job.list_inputs(request, checked)
opened = job.open_run_output(request, checked, inputs)
for task in opened.pending:  # what the actors would write
    labels = np.zeros((6, 8), np.int32)
    labels[:3] = 1
    recs = [records.ok_record(ref, labels, np.full((6, 8), 0.75, np.float32), checked.vocabulary.names)
            for ref in task.refs]
    path = parts.part_path(opened.options.output, task.shard_index)
    sha = parts.write_part(recs, path, {{**opened.options.metadata, "shard_index": task.shard_index}})
    opened.manifest.mark_finished(task.shard_index, path, len(recs), sha)
opened.manifest.flush()
result = job.finish(request, checked, inputs, None, 0.0)
print("RESULT", result.exit_code, result.summary["images"], result.summary["run"]["model"],
      checked.weights.clip.endswith("open_clip_ViT-B-32_openai.safetensors"))
print("IMPORTED", sorted(m for m in ("torch", "open_clip", "torchvision") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert "RESULT 0 3 ViT-B-32 True" in out.stdout, out.stdout + out.stderr[-3000:]
    assert "IMPORTED []" in out.stdout, out.stdout
    assert (tmp_path / "out" / "report.html").is_file() and (tmp_path / "out" / "coco.json").is_file()

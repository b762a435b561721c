"""Untrusted Hugging Face datasets do not steer reads (issue 22.2).

Real local datasets, written by ``datasets`` itself: a folder of Parquet files
(``Dataset.to_parquet`` keeps path-only image cells as they are) and a ``save_to_disk``
folder. ``datasets`` 5 embeds the bytes of local files on ``save_to_disk`` (the path is
cut to its base name), so a path-only ``save_to_disk`` dataset, as older versions wrote
and as anyone can write, is made with the embedding switched off.

An image cell with no bytes names a file by its ``path``: resolved against the
dataset's own folder, never the current directory; absolute outside, ``..``, a symlink
out or a URL are not read (an ``unreadable`` row saying why) unless
``--hf-allow-paths-outside``; a non-image file is described, never quoted.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from annotator.inputs.decode import ImageDecodeError, decode_image
from annotator.inputs.hf import list_hf_dataset
from annotator.inputs.listing import SourceError

datasets = pytest.importorskip("datasets")

SECRET = b"TOPSECRET-h10-do-not-print"


def _png(color: tuple[int, int, int], size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


RED, GREEN, BLUE, GREY = _png((255, 0, 0)), _png((0, 255, 0)), _png((0, 0, 255)), _png((90, 90, 90))


@pytest.fixture(autouse=True)
def _hf_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "hf-cache"))


class _NoEmbedWriter(datasets.arrow_writer.ArrowWriter):
    """ArrowWriter as save_to_disk used it before datasets embedded local files."""

    def __init__(self, *args, **kwargs):
        kwargs["embed_local_files"] = False
        super().__init__(*args, **kwargs)


#: (cell path, what happens by default, with --hf-allow-paths-outside); "ok:<png>" = read.
CASES = [
    ("abs-outside", "{outside}/secret.txt", "unreadable:an absolute path outside", "not-an-image"),
    ("relative-inside", "imgs/b.png", "ok:GREEN", "ok:GREEN"),
    ("dotdot", "../secret.txt", "unreadable:with '..'", "not-an-image"),
    ("symlink-out", "imgs/link.png", "unreadable:through a symlink", "ok:BLUE"),
    ("abs-inside", "{root}/imgs/c.png", "ok:GREY", "ok:GREY"),
    ("url", "file://{outside}/secret.txt", "unreadable:a URL", "not-an-image"),
    ("text-inside", "imgs/notes.png", "not-an-image", "not-an-image"),
    ("bytes", None, "ok:RED", "ok:RED"),
]


def _write_dataset(tmp_path: Path, kind: str, monkeypatch) -> Path:
    """A dataset folder ``tmp_path/ds`` of kind "parquet" or "disk" whose image cells are
    the CASES' paths (no bytes), beside a secret outside it."""
    outside, root = tmp_path, tmp_path / "ds"
    (root / "imgs").mkdir(parents=True)
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "secret.png").write_bytes(BLUE)
    (root / "imgs" / "b.png").write_bytes(GREEN)
    (root / "imgs" / "c.png").write_bytes(GREY)
    (root / "imgs" / "notes.png").write_bytes(SECRET + b" in a file named .png")
    os.symlink(outside / "secret.png", root / "imgs" / "link.png")
    cells = [{"bytes": RED, "path": None} if p is None else
             {"bytes": None, "path": p.format(outside=outside, root=root)} for _, p, _, _ in CASES]
    ds = datasets.Dataset.from_dict({"image": cells, "caption": [c for c, *_ in CASES],
                                     "n": list(range(len(CASES)))},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "caption": datasets.Value("string"),
                                                                "n": datasets.Value("int64")}))
    with monkeypatch.context() as m:
        m.chdir(root)  # datasets stats relative paths (its size estimate) against the current directory
        if kind == "parquet":
            ds.to_parquet(str(root / "train-00000-of-00001.parquet"))
        else:
            m.setattr(datasets.arrow_dataset, "ArrowWriter", _NoEmbedWriter)
            ds.save_to_disk(str(root))
    return root


def _expect(got, expected: str) -> None:
    if expected.startswith("ok:"):
        assert got == globals()[expected[3:]]
        return
    reason, _, words = expected.partition(":")
    if reason == "not-an-image":  # read, then refused by the decoder, which describes it
        assert isinstance(got, bytes) and got.startswith(SECRET)
        with pytest.raises(ImageDecodeError) as info:
            decode_image(got, name="row")
        got = info.value
        assert "bytes of text" in str(got)
    assert isinstance(got, ImageDecodeError), got[:16]
    assert got.reason == reason, str(got)
    assert words in str(got)
    if reason == "unreadable":
        assert "not read" in str(got) and "--hf-allow-paths-outside" in str(got)
    assert SECRET[:8].decode() not in str(got)


@pytest.mark.parametrize("kind", ["parquet", "disk"])
def test_cell_paths_resolve_in_the_dataset_and_stay_there(tmp_path, monkeypatch, kind):
    root = _write_dataset(tmp_path, kind, monkeypatch)
    elsewhere = tmp_path / "cwd"  # a decoy at the same relative path: never read
    (elsewhere / "imgs").mkdir(parents=True)
    (elsewhere / "imgs" / "b.png").write_bytes(RED)
    monkeypatch.chdir(elsewhere)
    src = list_hf_dataset(str(root))
    assert (src.kind, src.files_root, src.allow_paths_outside) == (kind, str(root), False)
    assert [(row["bytes"], row["path"]) for row in src.dataset().data.table.column("image").to_pylist()][1] == (
        None, "imgs/b.png")  # datasets kept the cell as a path only
    rows = src.read_rows(0, len(CASES))
    for (name, _, expected, _), got in zip(CASES, rows, strict=True):
        if isinstance(got, ImageDecodeError):
            assert str(got).startswith(f"{got.reason}: hf://{root}/train/"), name
        _expect(got, expected)
    trusting = list_hf_dataset(str(root), allow_paths_outside=True)
    for (_, _, _, expected), got in zip(CASES, trusting.read_rows(0, len(CASES)), strict=True):
        _expect(got, expected)


def test_one_parquet_file_resolves_against_its_folder(tmp_path, monkeypatch):
    root = _write_dataset(tmp_path, "parquet", monkeypatch)
    monkeypatch.chdir(tmp_path)
    src = list_hf_dataset(str(root / "train-00000-of-00001.parquet"))
    assert (src.kind, src.files_root) == ("parquet", str(root))
    assert src.read_rows(1, 2) == [GREEN]
    assert isinstance(src.read_rows(2, 3)[0], ImageDecodeError)


def test_label_cells_follow_the_same_rule(tmp_path, monkeypatch):
    root = _write_dataset(tmp_path, "parquet", monkeypatch)
    src = list_hf_dataset(str(root))
    assert src.read_labels(1, 2, "image")[0].shape == (32, 32, 3)  # inside: read
    with pytest.raises(ImageDecodeError, match="an absolute path outside"):
        src.read_labels(0, 1, "image")


def test_a_pickled_source_keeps_the_rule(tmp_path, monkeypatch):
    import pickle

    root = _write_dataset(tmp_path, "parquet", monkeypatch)
    for allow in (False, True):
        clone = pickle.loads(pickle.dumps(list_hf_dataset(str(root), allow_paths_outside=allow)))
        assert clone.allow_paths_outside is allow
        assert isinstance(clone.read_rows(0, 1)[0], ImageDecodeError) is not allow


def test_hub_cells_may_name_only_the_repository(monkeypatch):
    from annotator.inputs.hf import HFSource

    src = HFSource("someone/photos", "train", "image", "hub", 3, ("image",))
    root = "hf://datasets/someone/photos"
    assert src.locate(f"{root}/train/a.jpg") == f"{root}/train/a.jpg"
    assert src.locate(f"{root}@main/train/a.jpg") == f"{root}@main/train/a.jpg"
    for bad in ("/etc/passwd", "a.jpg", f"{root}/../other/x.jpg", "hf://datasets/someone/photos2/a.jpg",
                "https://example.com/a.jpg", f"zip://a.jpg::{root}/x.zip"):
        with pytest.raises(ImageDecodeError, match="not read"):
            src.locate(bad)
    src.allow_paths_outside = True
    assert src.locate("/etc/hostname") == "/etc/hostname"


def test_image_column_must_hold_images(tmp_path, monkeypatch):
    root = _write_dataset(tmp_path, "parquet", monkeypatch)
    for column, kind in (("caption", "string"), ("n", "int64")):
        with pytest.raises(SourceError) as info:
            list_hf_dataset(str(root), image_column=column)
        assert str(info.value) == (f"--hf-image-column {column!r}: expected a column of images, got a {kind} "
                                   f"column; the image columns of dataset {str(root)!r} are ['image']")
    assert list_hf_dataset(str(root), image_column="image").image_column == "image"
    raw = tmp_path / "raw"  # encoded bytes without the Image type are images too
    datasets.Dataset.from_dict({"jpg": [RED], "caption": ["x"]}).save_to_disk(str(raw))
    assert list_hf_dataset(str(raw), image_column="jpg").read_rows(0, 1) == [RED]
    with pytest.raises(SourceError, match=r"image columns of dataset .* are \['jpg'\]"):
        list_hf_dataset(str(raw), image_column="caption")


# ------------------------------------------------------------------ through the command


def _all_output_bytes(out: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_run_never_reads_outside_nor_prints_a_file(tmp_path, monkeypatch, ray_session, capsys):
    """``python -m annotator.run`` on the hostile dataset: the outside files are
    ``unreadable`` rows saying why, the inside ones are annotated, and no byte run of the
    secret is in any file written (parts, annotations.parquet, report.html, ...) nor on
    the console. With --hf-allow-paths-outside the outside images are read."""
    import pyarrow.parquet as pq

    from annotator.run import main
    from tests.synthetic import write_vocab

    root = _write_dataset(tmp_path, "parquet", monkeypatch)
    monkeypatch.chdir(tmp_path)
    vocab = str(write_vocab(tmp_path / "v.txt"))
    base = ["--hf-dataset", str(root), "--vocab", vocab, "--model", "toy", "--saliency", "toy",
            "--shard-size", "4", "--device", "cpu", "--quiet"]
    capsys.readouterr()
    rc = main([*base, "--output", str(tmp_path / "out")])
    console = capsys.readouterr()
    assert rc == 1, console.err  # some rows failed: the run says so
    rows = pq.read_table(tmp_path / "out" / "annotations.parquet").to_pylist()
    by_case = {name: row for (name, *_), row in zip(CASES, rows, strict=True)}
    for name, _, expected, _ in CASES:
        row = by_case[name]
        if expected.startswith("ok:"):
            assert row["status"] == "ok", (name, row["error"])
        else:
            assert row["status"] == "error" and row["error"].startswith(expected.split(":")[0]), (name, row["error"])
            assert expected.partition(":")[2] in row["error"], (name, row["error"])
    assert "bytes of text" in by_case["text-inside"]["error"]
    written = _all_output_bytes(tmp_path / "out")
    assert (tmp_path / "out" / "report.html").is_file()
    for k in range(len(SECRET) - 7):
        assert SECRET[k:k + 8] not in written
        assert SECRET[k:k + 8].decode() not in console.out + console.err

    capsys.readouterr()
    rc = main([*base, "--output", str(tmp_path / "trusting"), "--hf-allow-paths-outside", "--no-report"])
    assert rc == 1, capsys.readouterr().err  # the text files stay errors
    rows = pq.read_table(tmp_path / "trusting" / "annotations.parquet").to_pylist()
    by_case = {name: row for (name, *_), row in zip(CASES, rows, strict=True)}
    assert by_case["symlink-out"]["status"] == "ok"
    assert by_case["abs-outside"]["error"].startswith("not-an-image: ")
    assert "bytes of text" in by_case["abs-outside"]["error"]


def test_run_refuses_a_text_image_column_before_work(tmp_path, monkeypatch, capsys):
    from annotator.run import main
    from tests.synthetic import write_vocab

    root = _write_dataset(tmp_path, "parquet", monkeypatch)
    out = tmp_path / "out"
    rc = main(["--hf-dataset", str(root), "--hf-image-column", "caption", "--vocab",
               str(write_vocab(tmp_path / "v.txt")), "--model", "toy", "--saliency", "toy", "--output", str(out),
               "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "--hf-image-column 'caption': expected a column of images, got a string column" in err
    assert "['image']" in err
    assert not out.exists()

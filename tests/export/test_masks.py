"""PNG label maps: round trip, palette, confidence, path safety, collisions."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from annotator import records
from annotator.export import ExportError, ExportOptions, export
from annotator.export.masks import label_map_png, read_label_png, safe_relative_path
from annotator.inputs.listing import ImageRef
from annotator.review.palette import class_colors, voc_palette
from annotator.storage import parts


def test_voc_palette_reference_entries():
    pal = voc_palette(256)
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    expected = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128),
                15: (192, 128, 128), 20: (0, 64, 128), 255: (224, 224, 192)}
    for i, rgb in expected.items():
        assert tuple(pal[i]) == rgb, i
    colors = class_colors(300)
    assert len(set(colors)) == 300  # distinct beyond the VOC range too


def test_round_trip_palette_pngs(synthetic_output, tmp_path):
    output, expected, class_names = synthetic_output
    to = tmp_path / "masks"
    result = export(output, "masks", str(to), ExportOptions(confidence=True))
    assert result.counts["images"] == 5 and result.counts["skipped_error_rows"] == 1
    assert (to / "labels.txt").read_text().splitlines() == [f"{i} {n}" for i, n in enumerate(class_names)]
    for file_name, labels in expected.items():
        png = to / safe_relative_path(file_name)
        with Image.open(png) as img:
            assert img.mode == "P"
            assert img.getpalette()[3:6] == [128, 0, 0]
        np.testing.assert_array_equal(read_label_png(png.read_bytes()), labels, err_msg=file_name)
    assert not (to / "broken.png").exists()


def test_confidence_pngs_match_the_records(synthetic_output, tmp_path):
    output, _, _ = synthetic_output
    to = tmp_path / "masks"
    export(output, "masks", str(to), ExportOptions(confidence=True))
    for rec in parts.iter_records(parts.list_parts(output)):
        if rec.status != "ok":
            continue
        conf_png = to / safe_relative_path(rec.file_name, "_conf.png")
        np.testing.assert_array_equal(
            records.decode_confidence_png(conf_png.read_bytes()), records.decode_confidence_png(rec.confidence_png)
        )
    export(output, "masks", str(tmp_path / "plain"))
    assert not list((tmp_path / "plain").rglob("*_conf.png"))


def test_filters_become_background(synthetic_output, tmp_path):
    output, expected, _ = synthetic_output
    to = tmp_path / "masks"
    export(output, "masks", str(to), ExportOptions(classes=("dog",)))
    got = read_label_png((to / "a" / "cat.png").read_bytes())
    np.testing.assert_array_equal(got, np.where(expected["a/cat.jpg"] == 2, 2, 0))


@pytest.mark.parametrize(
    "name, safe",
    [
        ("a/b.jpg", "a/b.png"),
        ("../../etc/passwd.jpg", "etc/passwd.png"),
        ("/abs/x.jpeg", "abs/x.png"),
        ("a\\..\\..\\b.jpg", "a/b.png"),
        ("C:\\Windows\\x.bmp", "Windows/x.png"),
        ("./a/./b", "a/b.png"),
        ("..", "image.png"),
        ("a/\x00b\n.jpg", "a/b.png"),
        (".hidden", ".hidden.png"),
        ("a.tar.gz", "a.tar.png"),
    ],
)
def test_safe_relative_path(name, safe):
    out = safe_relative_path(name)
    assert out == safe
    assert not out.startswith("/") and ".." not in out.split("/")


def _write_output(tmp_path: Path, file_names: list[str], class_names: list[str]) -> str:
    output = tmp_path / "OUTPUT"
    recs = []
    for i, name in enumerate(file_names, start=1):
        labels = np.zeros((6, 8), np.int32)
        labels[1:4, 1 + i % 5 : 3 + i % 5] = len(class_names) - 1
        recs.append(records.ok_record(ImageRef(i, name, f"/nowhere/{i}.jpg"), labels,
                                      np.full(labels.shape, 0.5, np.float32), class_names))
    parts.write_part(recs, str(output / "parts" / "part-00000.parquet"), {"vocabulary": class_names})
    return str(output)


def test_path_traversal_never_writes_outside(tmp_path):
    names = ["../../escape1.jpg", "/tmp/escape2.jpg", "..\\..\\escape3.jpg", "ok/../../escape4.jpg"]
    output = _write_output(tmp_path, names, ["background", "x"])
    to = tmp_path / "deep" / "masks"
    absolute_target = Path("/tmp/escape2.png")
    existed_before = absolute_target.exists()
    result = export(output, "masks", str(to), ExportOptions(confidence=True))
    assert result.counts["images"] == 4
    inside = {p.relative_to(to).as_posix() for p in to.rglob("*.png")}
    assert {"escape1.png", "tmp/escape2.png", "escape3.png", "ok/escape4.png"} <= inside
    everywhere = {p.resolve() for p in tmp_path.rglob("escape*")}
    assert all(str(p).startswith(str(to.resolve()) + os.sep) for p in everywhere)
    assert absolute_target.exists() == existed_before


def test_a_symlink_planted_in_the_target_is_never_followed(tmp_path):
    """The export is built in a fresh staging folder, so a link planted in ``--to`` is
    never written through: a folder that is no earlier export is refused, and an earlier
    export holding the link is replaced, link and all; the link inside the staging folder
    is still refused by ExportFolder (``outside the export folder``)."""
    from annotator.export.masks import ExportFolder
    from annotator.export.staging import MARKER_NAME

    output = _write_output(tmp_path, ["link/a.jpg"], ["background", "x"])
    to = tmp_path / "masks"
    (tmp_path / "elsewhere").mkdir()
    to.mkdir()
    (to / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ExportError, match="not an earlier export"):
        export(output, "masks", str(to))
    (to / MARKER_NAME).write_text('{"format": "masks"}')  # an earlier export's marker
    export(output, "masks", str(to))
    assert not list((tmp_path / "elsewhere").iterdir())
    assert (to / "link").is_dir() and not (to / "link").is_symlink() and (to / "link" / "a.png").exists()
    folder = ExportFolder(str(tmp_path / "fresh"))
    (tmp_path / "fresh" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ExportError, match="outside the export folder"):
        folder.write("link/a.png", b"x")
    assert not list((tmp_path / "elsewhere").iterdir())


def test_name_collisions_get_the_image_id(tmp_path):
    output = _write_output(tmp_path, ["x.jpg", "x.png", "X.JPG", "x_conf.jpg"], ["background", "x"])
    to = tmp_path / "masks"
    result = export(output, "masks", str(to), ExportOptions(confidence=True))
    files = sorted(p.name for p in to.glob("*.png"))
    assert files == sorted(["x.png", "x_conf.png", "x__2.png", "x__2_conf.png", "X__3.png", "X__3_conf.png",
                            "x_conf__4.png", "x_conf__4_conf.png"])
    assert result.counts["renamed"] == 3


def test_many_classes_use_16_bit(tmp_path):
    names = ["background"] + [f"c{i}" for i in range(1, 300)]
    output = _write_output(tmp_path, ["big.jpg"], names)
    to = tmp_path / "masks"
    export(output, "masks", str(to))
    data = (to / "big.png").read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode.startswith("I")
    labels = read_label_png(data)
    assert labels.max() == 299 and set(np.unique(labels)) == {0, 299}


def test_label_map_png_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        label_map_png(np.array([[0, 3]], np.int32), 3)

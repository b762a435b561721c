"""The labeling tools' own readers on our exports (each skipped when its library is absent).

- datumaro (the library behind CVAT's importers): ``coco_instances``;
- FiftyOne's COCO parser (no database: its parsing functions only);
- pycocotools ``COCO`` + ``annToMask``;
- the Label Studio SDK's brush RLE decoder;
- PIL on the PNG label maps;
- headless Chromium on report.html (``-m browser``; needs /usr/bin/chromium).
"""

from __future__ import annotations

import html.parser
import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from annotator.export import DEFAULT_LS_IMAGE_URL_PREFIX, export
from annotator.export.coco import JSON_RELATIVE_PATH
from annotator.export.labelstudio import image_url
from annotator.export.masks import read_label_png, safe_relative_path
from tests.export.helpers import load_json

pytestmark = pytest.mark.clients


@pytest.fixture(params=["synthetic", "toy-run"])
def synthetic_output(request, tmp_path):
    """Each client reads both a hand-built output and the output of a real toy-model run."""
    from tests.export.conftest import build_synthetic_output, build_toy_run_output

    build = build_synthetic_output if request.param == "synthetic" else build_toy_run_output
    return build(tmp_path)

CHROMIUM = "/usr/bin/chromium"


def _stem(file_name: str) -> str:
    return os.path.splitext(file_name)[0]


def _coco(output: str, tmp_path: Path) -> Path:
    export(output, "coco", str(tmp_path / "coco"))
    return tmp_path / "coco"


def test_datumaro_imports_masks(synthetic_output, tmp_path):
    dm = pytest.importorskip("datumaro")
    output, expected, class_names = synthetic_output
    root = _coco(output, tmp_path)  # as exported: CVAT's layout, images/default/ beside annotations/
    dataset = dm.Dataset.import_from(str(root), "coco_instances")
    labels_cat = dataset.categories()[dm.AnnotationType.label]
    assert [label.name for label in labels_cat.items] == class_names[1:]
    seen = set()
    for item in dataset:
        file_name = next(f for f in expected if _stem(f) == item.id)
        seen.add(file_name)
        painted = np.zeros_like(expected[file_name])
        masks = [a for a in item.annotations if a.type == dm.AnnotationType.mask]
        for mask in masks:
            name = labels_cat.items[mask.label].name
            assert "score" in mask.attributes
            painted[mask.image.astype(bool)] = class_names.index(name)
        np.testing.assert_array_equal(painted, expected[file_name], err_msg=file_name)
        for c in np.unique(expected[file_name])[1:]:  # pixel counts per class
            (m,) = [m for m in masks if labels_cat.items[m.label].name == class_names[c]]
            assert int(m.image.astype(bool).sum()) == int((expected[file_name] == c).sum())
    assert seen == set(expected)


def test_fiftyone_coco_parser(synthetic_output, tmp_path):
    fouc = pytest.importorskip("fiftyone.utils.coco")
    output, expected, class_names = synthetic_output
    json_path = _coco(output, tmp_path) / JSON_RELATIVE_PATH
    info, classes_map, _, images, annotations = fouc.load_coco_detection_annotations(str(json_path))
    assert [classes_map[i] for i in sorted(classes_map)] == class_names[1:]
    assert info["model"] == "toy"
    for image_id, image in images.items():
        labels = expected[image["file_name"]]
        h, w = labels.shape
        painted = np.zeros_like(labels)
        for obj in annotations.get(image_id, []):
            det = obj.to_detection((image["width"], image["height"]), classes_map=classes_map, load_segmentation=True)
            c = class_names.index(det.label)
            full = labels == c
            ys, xs = np.nonzero(full)
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            np.testing.assert_allclose(det.bounding_box, [x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h])
            np.testing.assert_array_equal(det.mask, full[y0:y1, x0:x1])  # FiftyOne crops to the box
            assert det.confidence == pytest.approx(obj.score)
            painted[y0:y1, x0:x1][det.mask] = c
        np.testing.assert_array_equal(painted, labels, err_msg=image["file_name"])


def test_pycocotools_ann_to_mask(synthetic_output, tmp_path):
    coco_mod = pytest.importorskip("pycocotools.coco")
    output, expected, _ = synthetic_output
    coco = coco_mod.COCO(str(_coco(output, tmp_path) / JSON_RELATIVE_PATH))
    for img in coco.loadImgs(coco.getImgIds()):
        painted = np.zeros((img["height"], img["width"]), np.int32)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]], iscrowd=None)):
            mask = coco.annToMask(ann).astype(bool)
            assert int(mask.sum()) == ann["area"]
            painted[mask] = ann["category_id"]
        np.testing.assert_array_equal(painted, expected[img["file_name"]])


def test_label_studio_sdk_decodes_our_rle(synthetic_output, tmp_path):
    brush = pytest.importorskip("label_studio_sdk.converter.brush")
    output, expected, class_names = synthetic_output
    tasks = load_json(export(output, "labelstudio", str(tmp_path / "ls")).paths[0])
    assert len(tasks) == len(expected)
    for task, (file_name, labels) in zip(tasks, expected.items(), strict=True):
        assert task["data"]["image"] == image_url(file_name, DEFAULT_LS_IMAGE_URL_PREFIX)
        h, w = labels.shape
        painted = np.zeros_like(labels)
        for r in task["predictions"][0]["result"]:
            rgba = np.asarray(brush.decode_rle(r["value"]["rle"]), np.uint8).reshape(h, w, 4)
            painted[rgba[:, :, 3] > 127] = class_names.index(r["value"]["brushlabels"][0])
        np.testing.assert_array_equal(painted, labels, err_msg=file_name)


def test_pil_reads_label_pngs(synthetic_output, tmp_path):
    from PIL import Image

    output, expected, _ = synthetic_output
    export(output, "masks", str(tmp_path / "masks"))
    for file_name, labels in expected.items():
        path = tmp_path / "masks" / safe_relative_path(file_name)
        with Image.open(path) as img:
            np.testing.assert_array_equal(np.asarray(img), labels)
        np.testing.assert_array_equal(read_label_png(path.read_bytes()), labels)


# ------------------------------------------------------------------------- browser


class _ImgCollector(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs))
        if tag == "script":
            self.scripts += 1


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed")
def test_report_renders_in_chromium(synthetic_output, tmp_path):
    import base64

    from PIL import Image

    from annotator.review.html_report import write_report

    output, _, _ = synthetic_output
    report = Path(write_report(output, samples=5, lowest=3))
    url = report.resolve().as_uri()
    dom = _chromium(["--dump-dom", url], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    parser = _ImgCollector()
    parser.feed(dom.stdout)
    assert parser.scripts == 0  # the class name and file name stayed text
    assert len(parser.imgs) >= 5
    for img in parser.imgs:
        assert "onerror" not in img
        src = img["src"]
        assert src.startswith("data:image/jpeg;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as decoded:
            decoded.load()
            assert max(decoded.size) >= 64
    shot = tmp_path / "report.png"
    run = _chromium([f"--screenshot={shot}", "--window-size=1280,2000", url], tmp_path)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    with Image.open(shot) as img:
        assert img.size == (1280, 2000)
        assert len(img.convert("RGB").getcolors(1 << 20) or []) > 50  # not a blank page
    if os.environ.get("ANNOTATOR_REPORT_SCREENSHOT"):
        shutil.copy(shot, os.environ["ANNOTATOR_REPORT_SCREENSHOT"])

"""Review report: statistics, previews, escaping, credentials, metrics, failures.

The overlay drawing itself is tested in tests/test_overlay.py."""

from __future__ import annotations

import base64
import html.parser
import io
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from annotator.report import main
from annotator.review.html_report import write_report
from annotator.review.overlay import render_overlay
from annotator.storage import parts
from tests.export.conftest import XSS_FILE_NAME, build_synthetic_output


@pytest.fixture
def synthetic_output(tmp_path):
    """(output_dir, expected_labels, class_names): see tests/export/conftest.py."""
    return build_synthetic_output(tmp_path)


class _Page(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _page(path: str) -> tuple[str, _Page]:
    text = Path(path).read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    return text, page


def test_report_is_self_contained_and_escaped(synthetic_output):
    output, _, _ = synthetic_output
    text, page = _page(write_report(output, samples=5, lowest=2))
    tags = [t for t, _ in page.tags]
    assert "script" not in tags  # "<script>alert(1)</script>" class name stayed text
    imgs = [a for t, a in page.tags if t == "img"]
    assert len(imgs) == 5  # 2 lowest, 1 background only, the 2 other ok images as the sample: each once
    for attrs in imgs:
        assert set(attrs) <= {"src", "alt", "data-preview"}  # no onerror smuggled in
        assert attrs["src"].startswith("data:image/jpeg;base64,")
        Image.open(io.BytesIO(base64.b64decode(attrs["src"].split(",", 1)[1]))).load()
    joined = "".join(page.text)
    assert "<script>alert(1)</script>" in joined  # shown, as text
    assert XSS_FILE_NAME in joined
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "Content-Security-Policy" in text
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")  # nothing fetched


def test_credentials_never_shown(synthetic_output):
    output, _, _ = synthetic_output
    text, _ = _page(write_report(output))
    assert "topsecret" not in text and "AKIAUSER" not in text
    assert "s3://bucket/images/" in text


def test_lowest_confidence_images_are_the_lowest(synthetic_output):
    output, _, _ = synthetic_output
    text, _ = _page(write_report(output, samples=0, lowest=2))
    lowest = text.split("Lowest-confidence images", 1)[1]
    # missing.jpg (~0.31) then the XSS-named image (~0.54)
    assert lowest.index("missing.jpg") < lowest.index("onerror")
    assert "a/cat.jpg" not in lowest.split("Failures")[0]
    previews = sorted(p.name for p in (Path(output) / "previews").iterdir())
    assert previews == ["background-00000003.jpg", "lowest-00000002.jpg", "lowest-00000004.jpg"]


def _shown(text: str) -> dict[str, list[int]]:
    """Image ids of each list of previews, in page order."""
    sections = {"lowest": "Lowest-confidence images", "background": "Background only", "sample": "Sample of"}
    out = {}
    for kind, title in sections.items():
        part = text.split(title, 1)[1].split("<h2>", 1)[0] if title in text else ""
        out[kind] = [int(m) for m in re.findall(rf'data-preview="previews/{kind}-(\d+)\.jpg"', part)]
    return out


def test_background_only_images_are_not_confident(synthetic_output):
    """c.png is labelled background only (background confidence 0.95): it is not in the
    histogram of image confidence nor among the lowest (even when every image is asked
    for), but in a list of its own, captioned as background only."""
    output, _, _ = synthetic_output
    text, _ = _page(write_report(output, samples=0, lowest=10))
    shown = _shown(text)
    assert shown["lowest"] == [4, 2, 5, 1]  # missing.jpg 0.31, XSS 0.54, e.png 0.62, a/cat.jpg 0.86
    assert shown["background"] == [3]
    background = text.split("Background only", 1)[1]
    assert re.search(r"c\.png</code> background only, background confidence 0\.9[45]\d", background)  # 0.95, quantised
    histogram = text.split("<h2>Image confidence</h2>", 1)[1].split("</svg>", 1)[0]
    counts = [int(c) for c in re.findall(r"<title>[0-9.]+-[0-9.]+: (\d+)</title>", histogram)]
    assert sum(counts) == 4 and counts[-1] == 0  # 0.95-1.00 holds nothing: c.png is not "confident"
    assert "1 background-only image not counted" in histogram


@pytest.mark.parametrize("samples,lowest", [(5, 2), (8, 8), (2, 1), (1, 0), (0, 3), (10, 10)])
def test_no_image_in_two_lists(synthetic_output, samples, lowest):
    output, _, _ = synthetic_output
    text, _ = _page(write_report(output, samples=samples, lowest=lowest))
    shown = _shown(text)
    ids = [i for kind in shown.values() for i in kind]
    assert len(ids) == len(set(ids)), shown
    assert len(shown["lowest"]) == min(lowest, 4) and len(shown["background"]) == min(lowest, 1)
    assert len(shown["sample"]) == min(samples, 5 - len(shown["lowest"]) - len(shown["background"]))


def test_statistics(synthetic_output):
    output, expected, class_names = synthetic_output
    text, _ = _page(write_report(output, samples=0, lowest=0))
    rows = _table_rows(text.split("<h2>Classes</h2>", 1)[1].split("</table>", 1)[0])
    by_name = {r[2]: r for r in rows}
    for c, name in enumerate(class_names[1:], start=1):
        pixels = sum(int((lab == c).sum()) for lab in expected.values())
        images = sum(int((lab == c).any()) for lab in expected.values())
        assert by_name[name][3] == str(images) and by_name[name][4] == str(pixels)
    assert by_name["cat"][6] == f"{(0.9 * 450 + 0.3 * 500 + 0.2 * 1) / 951:.3f}"
    summary = {r[0]: r[1] for r in _table_rows(text.split("<h2>Summary</h2>", 1)[1].split("</table>")[0])}
    assert summary == {"rows": "6", "annotated (ok)": "5", "failed": "1",
                       "annotations (image, class)": "8", "ok images with background only": "1"}
    assert "<svg" in text and text.count("<rect") == 20  # histogram bins


def _table_rows(fragment: str) -> list[list[str]]:
    class Rows(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.cell = [], None

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                self.rows.append([])
            elif tag == "td":
                self.cell = ""

        def handle_endtag(self, tag):
            if tag == "td":
                self.rows[-1].append(self.cell)
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

    p = Rows()
    p.feed(fragment)
    return [r for r in p.rows if r]


def test_failures_listed_escaped(synthetic_output):
    output, _, _ = synthetic_output
    text, _ = _page(write_report(output))
    failures = text.split("<h2>Failures</h2>", 1)[1]
    assert "broken.jpg" in failures and "corrupt" in failures
    assert "&lt;b&gt;bad&lt;/b&gt; &quot;huffman&quot;" in failures


def test_metrics_table_when_present(synthetic_output):
    output, _, class_names = synthetic_output
    assert "metrics.json" not in Path(write_report(output)).read_text()
    metrics = {"miou": 0.4321, "per_class_iou": {n: (None if n == "dog" else 0.5) for n in class_names},
               "pixel_accuracy": 0.9, "mean_accuracy": 0.8, "per_class_gt_pixels": {n: 7 for n in class_names},
               "num_pixels": 35, "num_classes_in_mean": 4, "empty_class": "exclude"}
    (Path(output) / "metrics.json").write_text(json.dumps(metrics))
    text, _ = _page(write_report(output))
    section = text.split("metrics.json)</h2>", 1)[1].split("<h2>", 1)[0]
    assert "0.4321" in section and "&lt;script&gt;" in section
    rows = {r[0]: r for r in _table_rows(section) if len(r) == 3}
    assert rows["dog"][1] == "-" and rows["cat"][1] == "0.5000"


def test_big_images_are_downscaled(tmp_path):
    from annotator import records
    from annotator.inputs.listing import ImageRef

    labels = np.zeros((900, 1200), np.int32)
    labels[100:500, 200:900] = 1
    path = tmp_path / "big.png"
    Image.fromarray(np.full((900, 1200, 3), 200, np.uint8)).save(path)
    rec = records.ok_record(ImageRef(1, "big.png", str(path)), labels, np.full(labels.shape, 0.7, np.float32),
                            ["background", "thing"])
    img, note = render_overlay(rec, ["background", "thing"])
    assert note is None and img.width == 512
    parts.write_part([rec], str(tmp_path / "OUT" / "parts" / "part-00000.parquet"),
                     {"vocabulary": ["background", "thing"]})
    write_report(str(tmp_path / "OUT"), samples=1, lowest=1)
    with Image.open(tmp_path / "OUT" / "previews" / "lowest-00000001.jpg") as preview:
        assert preview.width == 512 and preview.height > 384


def test_cli(synthetic_output, capsys):
    output, _, _ = synthetic_output
    assert main([output, "--samples", "2", "--lowest", "1"]) == 0
    assert "report.html" in capsys.readouterr().out
    assert main([output, "--samples", "-1"]) == 2
    assert main([str(Path(output) / "nope")]) == 2


def test_empty_run_warns(tmp_path):
    from annotator import records
    from annotator.inputs.listing import ImageRef

    names = ["background", "thing"]
    rec = records.ok_record(ImageRef(1, "x.png", str(tmp_path / "x.png")), np.zeros((8, 8), np.int32),
                            np.full((8, 8), 0.9, np.float32), names)
    parts.write_part([rec], str(tmp_path / "O" / "parts" / "part-00000.parquet"), {"vocabulary": names})
    text = Path(write_report(str(tmp_path / "O"))).read_text()
    assert "No annotations" in text


CHROMIUM = "/usr/bin/chromium"

# Appended to a copy of report.html (without its CSP, which forbids scripts): every SVG
# text's box (glyph ascent and descent included) must lie inside its SVG, and the page
# must not scroll sideways at 1280 px; the findings replace the page's body.
_LAYOUT_PROBE = """<script>
window.addEventListener("load", () => {
  const bad = [];
  for (const svg of document.querySelectorAll("svg")) {
    const w = svg.width.baseVal.value, h = svg.height.baseVal.value;
    for (const t of svg.querySelectorAll("text")) {
      const b = t.getBBox();
      if (b.x < 0 || b.y < 0 || b.x + b.width > w || b.y + b.height > h)
        bad.push(`${t.textContent}: ${b.x.toFixed(1)},${b.y.toFixed(1)} `
                 + `${b.width.toFixed(1)}x${b.height.toFixed(1)} in ${w}x${h}`);
    }
  }
  const texts = document.querySelectorAll("svg text").length;
  const overflow = document.documentElement.scrollWidth - document.documentElement.clientWidth;
  document.body.innerHTML = "<pre id=probe>" + JSON.stringify({bad, texts, overflow}) + "</pre>";
});
</script>"""


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium-profile'}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed (apt-get install chromium)")
def test_nothing_is_clipped_in_chromium(synthetic_output, tmp_path):
    """Rendered by headless Chromium at 1280 px: no axis label or caption of the histogram
    falls outside its picture, and the page does not overflow sideways. The screenshot
    is kept where $ANNOTATOR_REPORT_SCREENSHOT says (to look at it)."""
    output, _, _ = synthetic_output
    report = Path(write_report(output, samples=5, lowest=3))
    page = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", report.read_text(encoding="utf-8"))
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _LAYOUT_PROBE + "</body>"), encoding="utf-8")
    run = _chromium(["--window-size=1280,2000", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                    tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    found = json.loads(re.search(r"<pre id=\"probe\">(.*?)</pre>", run.stdout, re.S).group(1))
    assert found["texts"] >= 8 and found["bad"] == [] and found["overflow"] <= 0, found
    shot = tmp_path / "report.png"
    run = _chromium([f"--screenshot={shot}", "--window-size=1280,2400", report.as_uri()], tmp_path)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    if os.environ.get("ANNOTATOR_REPORT_SCREENSHOT"):
        Path(os.environ["ANNOTATOR_REPORT_SCREENSHOT"]).write_bytes(shot.read_bytes())

"""Review report: overlay previews and a self-contained HTML page for a run folder.

``python -m annotator.report OUTPUT [--samples N] [--lowest N]`` (and
:func:`write_report`, which the reducer calls) writes::

    OUTPUT/previews/lowest-<image_id>.jpg      overlays (image + translucent class colours +
    OUTPUT/previews/background-<image_id>.jpg  legend), longest side <= 512 px, drawn by
    OUTPUT/previews/sample-<image_id>.jpg      :func:`annotator.review.overlay.render_overlay`
    OUTPUT/report.html                      one file, previews embedded as data: URIs

The page holds the run configuration (credentials removed), per-class counts, pixels
and mean scores (swatches in :func:`annotator.review.palette.class_colors`' colours, which
do not contradict colour-named classes), a histogram of image confidence (inline SVG),
the lowest-confidence images, the background-only images, a sample of the other images
(no image appears in two of these lists), the scores of OUTPUT/metrics.json when
present, and the failed images with their reasons. Every string that comes from the data (class names,
file names, error texts, metadata) is HTML-escaped and length-limited; the page also
carries a Content-Security-Policy that forbids scripts.

Rows are streamed once: memory holds the per-class totals, the histogram, the
``samples + 2 * lowest`` candidate rows and at most ``max_failures`` failure rows.

Image confidence is the confidence of an image's FOREGROUND: the area-weighted mean of
its annotation scores (:func:`annotator.storage.results.image_score`). An image labelled
background only has none: it is neither confident nor unconfident, so it is kept out of
the histogram and the lowest-confidence list, and shown in a list of its own ("nothing
found": where a reviewer looks for missed objects), least certain background first
(the mean of its confidence map).
"""

from __future__ import annotations

import base64
import heapq
import html
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np

from annotator.core.stats import ClassTally
from annotator.records import error_reason
from annotator.review.overlay import encode_jpeg, render_overlay
from annotator.review.palette import class_colors, hex_color
from annotator.storage import parts
from annotator.storage.layout import METRICS_NAME, PREVIEWS_DIR, REPORT_NAME, join_url
from annotator.storage.redact import redact_value
from annotator.storage.results import background_confidence, image_score, read_metadata, resolve_inputs
from annotator.storage.state_schema import check_metrics_doc

__all__ = ["ReportStats", "write_report"]

HIST_BINS = 20
TEXT_LIMIT = 200


def _esc(value: Any, limit: int = TEXT_LIMIT) -> str:
    """HTML-escaped, length-limited text of ``value``."""
    text = str(value)
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return html.escape(text, quote=True)


# ----------------------------------------------------------------------- statistics


@dataclass
class ReportStats:
    """Totals gathered in one pass over the rows.

    classes: the per-class totals (:class:`annotator.core.stats.ClassTally`, the same
    aggregator as summary.json's). histogram: image-confidence counts over HIST_BINS equal
    bins of [0, 1].
    """

    num_classes: int
    rows: int = 0
    ok: int = 0
    errors: int = 0
    annotations: int = 0
    empty_images: int = 0
    image_pixels: int = 0
    classes: ClassTally = field(init=False)
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(HIST_BINS, dtype=np.int64))
    failures: list[tuple[int, str, str]] = field(default_factory=list)
    failure_reasons: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.classes = ClassTally(self.num_classes)

    def add(self, record: Any, score: float | None, max_failures: int) -> None:
        """Count one row; ``score`` is its foreground confidence (None: background only)."""
        self.rows += 1
        if record.status != "ok":
            self.errors += 1
            reason = error_reason(record.error)[:64]
            if reason in self.failure_reasons or len(self.failure_reasons) < 100:
                self.failure_reasons[reason] = self.failure_reasons.get(reason, 0) + 1
            if len(self.failures) < max_failures:
                self.failures.append((record.image_id, record.file_name[:TEXT_LIMIT], (record.error or "")[:500]))
            return
        self.ok += 1
        self.image_pixels += int(record.width) * int(record.height)
        self.annotations += len(record.annotations)
        if not record.annotations:
            self.empty_images += 1
        for a in record.annotations:
            self.classes.add(a.category_id, a.area, a.score)
        if score is not None and record.annotations:
            self.histogram[min(int(score * HIST_BINS), HIST_BINS - 1)] += 1


class _Keeper:
    """The ``n`` rows with the smallest keys (a bounded max-heap)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._heap: list[tuple[float, int, Any]] = []

    def offer(self, key: float, image_id: int, item: Any) -> None:
        if self.n <= 0:
            return
        entry = (-key, -image_id, item)
        if len(self._heap) < self.n:
            heapq.heappush(self._heap, entry)
        elif entry[:2] > self._heap[0][:2]:
            heapq.heapreplace(self._heap, entry)

    def sorted(self) -> list[Any]:
        return [item for _, _, item in sorted(self._heap, key=lambda e: (-e[0], -e[1]))]


# ------------------------------------------------------------------------- HTML


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.sw{display:inline-block;width:14px;height:14px;border:1px solid #000;vertical-align:middle}
.warn{background:#fff3cd;border:1px solid #e0c060;padding:8px}
.grid{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;max-width:520px}
figure img{max-width:100%;border:1px solid #ccc}figcaption{font-size:12px;color:#444;word-break:break-all}
code{word-break:break-all}.row{display:flex;flex-wrap:wrap;gap:32px;align-items:flex-start}
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """``header`` and ``rows`` must already be escaped HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return _esc(v)


def _histogram_svg(histogram: np.ndarray, background_only: int = 0) -> str:
    """Bars of image confidence; every label inside the picture (margins fit the widest
    tick label, half of it past each end of the axis, and the caption's descenders)."""
    width, height, left, right, bottom, top = 660, 236, 48, 24, 46, 22
    plot_w, plot_h = width - left - right, height - bottom - top
    peak = max(int(histogram.max()), 1)
    bar_w = plot_w / len(histogram)
    parts = [
        (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'viewBox="0 0 {width} {height}" role="img" aria-label="histogram of image confidence">'),
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#000"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#000"/>',
        f'<text x="{left - 4}" y="{top + 4}" font-size="11" text-anchor="end">{peak}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" font-size="11" text-anchor="end">0</text>',
        f'<text x="{left}" y="{top - 8}" font-size="11" text-anchor="middle">images</text>',
    ]
    for i, count in enumerate(histogram.tolist()):
        bar_h = plot_h * count / peak
        x = left + i * bar_w
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{top + plot_h - bar_h:.1f}" width="{bar_w - 2:.1f}" '
            f'height="{bar_h:.1f}" fill="#4a78b5"><title>{i / len(histogram):.2f}-{(i + 1) / len(histogram):.2f}: '
            f"{count}</title></rect>"
        )
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = left + tick * plot_w
        parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" font-size="11" text-anchor="middle">{tick:.2f}</text>')
    caption = "foreground confidence per image (area-weighted mean score)"
    if background_only:
        caption += f"; {background_only} background-only image{'s' if background_only != 1 else ''} not counted"
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 10}" font-size="11" text-anchor="middle">'
        f"{_esc(caption)}</text></svg>"
    )
    return "".join(parts)


def _figure(preview: tuple[bytes, str], record: Any, score: float | None, note: str | None) -> str:
    data, name = preview
    src = "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
    what = "confidence" if record.annotations else "background only, background confidence"
    caption = f"#{record.image_id} <code>{_esc(record.file_name)}</code> {what} {_fmt(score)}"
    if note:
        caption += f'<br><span style="color:#a00">{_esc(note)}</span>'
    return (f'<figure><img src="{src}" alt="overlay of {_esc(record.file_name)}" data-preview="{_esc(name)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _metrics_html(metrics: Mapping[str, Any]) -> str:
    out = []
    first = ("miou", "pixel_accuracy", "mean_accuracy", "num_pixels", "num_classes_in_mean", "empty_class")
    keys = [k for k in first if k in metrics] + [
        k for k, v in metrics.items()
        if k not in first and isinstance(v, (int, float, str)) and not isinstance(v, bool)
    ][:30]
    out.append(_table(["score", "value"], [(_esc(k), _fmt(metrics[k], 4)) for k in keys], numeric=(1,)))
    per_class = metrics.get("per_class_iou")
    if isinstance(per_class, Mapping):
        gt = metrics.get("per_class_gt_pixels") if isinstance(metrics.get("per_class_gt_pixels"), Mapping) else {}
        rows = [
            (_esc(name), _fmt(iou, 4), _fmt(gt.get(name)) if gt else "-")
            for name, iou in list(per_class.items())[:2000]
        ]
        out.append(_table(["class", "IoU", "ground-truth pixels"], rows, numeric=(1, 2)))
    return "".join(out)


def _read_metrics(output: str, storage_options: Mapping[str, Any] | None) -> dict | None:
    path = join_url(output, METRICS_NAME)
    fs, p = fsspec.core.url_to_fs(path, **dict(storage_options or {}))
    if not fs.exists(p):
        return None
    with fs.open(p, "rb") as f:
        return check_metrics_doc(f.read(), path)  # not ours: left out, told (issue 22.6)


# Long on purpose: the report page, section by section, in reading order.
def _render_html(
    metadata: Mapping[str, Any],
    class_names: Sequence[str],
    stats: ReportStats,
    lowest_html: list[str],
    background_html: list[str],
    sample_html: list[str],
    metrics: Mapping[str, Any] | None,
    max_failures: int,
) -> str:
    colors = class_colors(class_names)
    body = ['<h1>Annotation report</h1>']
    if stats.ok and stats.annotations == 0:
        body.append('<p class="warn">No annotations: every image was labelled background only. '
                     'Check the vocabulary and thresholds.</p>')
    if stats.ok == 0:
        body.append('<p class="warn">No image was annotated successfully (see failures).</p>')
    summary = "<div><h2>Summary</h2>" + _table(["", "count"], [
        ("rows", str(stats.rows)), ("annotated (ok)", str(stats.ok)), ("failed", str(stats.errors)),
        ("annotations (image, class)", str(stats.annotations)),
        ("ok images with background only", str(stats.empty_images)),
    ], numeric=(1,))
    if stats.image_pixels:
        summary += (f"<p>Foreground covers {100.0 * stats.classes.pixels[1:].sum() / stats.image_pixels:.2f}% "
                    "of the annotated images' pixels.</p>")
    summary += "</div>"

    config_rows = []
    for key, value in metadata.items():
        value = redact_value(str(key), value)
        if key == "vocabulary" and isinstance(value, list):
            shown = ", ".join(str(v) for v in value[:50]) + (" ..." if len(value) > 50 else "")
            value = f"{len(value)} classes: {shown}"
        elif not isinstance(value, str):
            value = json.dumps(value, ensure_ascii=False, default=str)
        config_rows.append((_esc(key, 80), _esc(value, 600)))
    body.append(f'<div class="row">{summary}<div><h2>Run configuration</h2>'
                + _table(["setting", "value"], config_rows) + "</div></div>")

    total = max(int(stats.classes.pixels[1:].sum()), 1)
    class_rows = []
    for c in range(1, len(class_names)):
        px = int(stats.classes.pixels[c])
        mean = stats.classes.mean_score(c)
        class_rows.append((
            f'<span class="sw" style="background:{hex_color(colors[c])}"></span>', str(c), _esc(class_names[c]),
            str(int(stats.classes.images[c])), str(px), f"{100.0 * px / total:.2f}", _fmt(mean),
        ))
    class_rows.sort(key=lambda r: -int(r[4]))
    body.append('<div class="row"><div><h2>Classes</h2>' + _table(
        ["", "id", "class", "images", "pixels", "% of foreground", "mean score"], class_rows[:5000],
        numeric=(1, 3, 4, 5, 6)) + "</div>")
    body.append("<div><h2>Image confidence</h2>" + _histogram_svg(stats.histogram, stats.empty_images)
                + "</div></div>")
    if metrics is not None:
        body.append("<h2>Scores against ground truth (metrics.json)</h2>" + _metrics_html(metrics))
    if lowest_html:
        body.append("<h2>Lowest-confidence images</h2><div class=\"grid\">" + "".join(lowest_html) + "</div>")
    if background_html:
        body.append("<h2>Background only: nothing found</h2><p>Check these for missed objects; the least "
                    "certain background first.</p><div class=\"grid\">" + "".join(background_html) + "</div>")
    if sample_html:
        body.append("<h2>Sample of the other images</h2><div class=\"grid\">" + "".join(sample_html) + "</div>")
    body.append("<h2>Failures</h2>")
    if stats.errors:
        body.append(_table(["reason", "images"], [(_esc(r, 64), str(n)) for r, n in
                                                 sorted(stats.failure_reasons.items(), key=lambda kv: -kv[1])],
                           numeric=(1,)))
        rows = [(str(i), f"<code>{_esc(f)}</code>", _esc(e, 500)) for i, f, e in stats.failures]
        more = f"<p>First {len(rows)} of {stats.errors} failures shown.</p>" if stats.errors > len(rows) else ""
        body.append(_table(["image id", "file", "error"], rows, numeric=(0,)) + more)
    else:
        body.append("<p>None.</p>")
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>annotator report</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


# -------------------------------------------------------------------------- entry


def write_report(
    output: str,
    *,
    samples: int = 8,
    lowest: int = 8,
    storage_options: Mapping[str, Any] | None = None,
    image_storage_options: Mapping[str, Any] | None = None,
    max_failures: int = 200,
    seed: int = 0,
) -> str:
    """Write ``OUTPUT/previews/*.jpg`` and ``OUTPUT/report.html``; return the report's path.

    Args:
        output: the run folder (local path or fsspec URL).
        samples: number of images in the (deterministic, seeded) sample of the images not
            shown in the other two lists, >= 0.
        lowest: number of lowest-confidence images shown, and of background-only images, >= 0.
        storage_options: fsspec options for ``output``.
        image_storage_options: fsspec options to re-read the images (default: storage_options).
        max_failures: at most this many failure rows are listed (all are counted).
        seed: changes which images the sample holds.
    """
    if samples < 0 or lowest < 0 or max_failures < 0:
        raise ValueError(f"samples, lowest and max_failures must be >= 0, got {samples}, {lowest}, {max_failures}")
    paths = resolve_inputs(output, storage_options)
    metadata = read_metadata(paths, storage_options)
    class_names = list(metadata["vocabulary"])
    image_so = image_storage_options if image_storage_options is not None else storage_options

    stats = ReportStats(num_classes=len(class_names))
    # The sample keeps enough candidates to still hold `samples` once the images shown
    # in the other two lists are taken out: no image appears twice.
    lowest_keeper, background_keeper = _Keeper(lowest), _Keeper(lowest)
    sample_keeper = _Keeper(samples + 2 * lowest)
    for record in parts.iter_records(paths, dict(storage_options or {}) or None):
        # foreground confidence; background confidence when background only (image_score gives those 0)
        score = image_score(record) if record.annotations else background_confidence(record)
        stats.add(record, score, max_failures)
        if record.status != "ok":
            continue
        if record.annotations:
            if score is not None:
                lowest_keeper.offer(score, record.image_id, (record, score))
        else:
            background_keeper.offer(1.0 if score is None else score, record.image_id, (record, score))
        key = zlib.crc32(f"{seed}:{record.image_id}".encode()) / 2**32
        sample_keeper.offer(key, record.image_id, (record, score))

    so = dict(storage_options or {})
    previews_dir = join_url(output, PREVIEWS_DIR)
    fs, root = fsspec.core.url_to_fs(previews_dir, **so)
    rendered: dict[int, tuple[tuple[bytes, str], str | None]] = {}

    def figures(kind: str, chosen: list[tuple[Any, float | None]]) -> list[str]:
        out = []
        for record, score in chosen:
            if record.image_id not in rendered:
                img, note = render_overlay(record, class_names, storage_options=image_so)
                name = f"{kind}-{record.image_id:08d}.jpg"
                data = encode_jpeg(img)
                fs.makedirs(root, exist_ok=True)
                with fs.open(f"{root}/{name}", "wb") as f:
                    f.write(data)
                rendered[record.image_id] = ((data, f"previews/{name}"), note)
            preview, note = rendered[record.image_id]
            out.append(_figure(preview, record, score, note))
        return out

    lowest_rows, background_rows = lowest_keeper.sorted(), background_keeper.sorted()
    shown = {record.image_id for record, _ in lowest_rows + background_rows}
    sample_rows = [rs for rs in sample_keeper.sorted() if rs[0].image_id not in shown][:samples]
    lowest_html = figures("lowest", lowest_rows)
    background_html = figures("background", background_rows)
    sample_html = figures("sample", sorted(sample_rows, key=lambda rs: rs[0].image_id))
    metrics = _read_metrics(output, storage_options)
    page = _render_html(metadata, class_names, stats, lowest_html, background_html, sample_html, metrics,
                        max_failures)
    report_path = join_url(output, REPORT_NAME)
    with fsspec.open(report_path, "w", encoding="utf-8", **so) as f:
        f.write(page)
    return report_path

"""Security: paths from the data, credentials in source URLs, user strings in the report.

Weights: loading refuses pickled objects -- shown in tests/models/test_found.py
(``test_pickled_objects_are_refused``); not repeated here.

- Paths: ``file_name`` comes from the data (a dataset, a listing, an untrusted run
  folder). Crafted names (``../``, absolute, Windows drive/backslash, HTML) never make
  the masks export or the report write outside their folder.
- Secrets: a source given as ``s3://KEY:SECRET@bucket/...`` (against moto) -- with a
  retried read and failed images, so warnings and error rows mention the URI -- leaves
  neither KEY nor SECRET in stderr, logs (ours and Ray's), Parquet data or metadata,
  summary.json, coco.json, report.html, previews, manifest, or the exports.
- User strings: a class named ``<script>alert(1)</script>``, HTML in file names and error
  texts are escaped in report.html; long strings are cut; over-long class names are
  refused when the vocabulary is read.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from annotator import records
from annotator.inputs.listing import ImageRef
from annotator.outputs.merge import reduce_output
from annotator.run import main
from annotator.storage import parts
from tests.synthetic import VOCAB, make_image
from tests.test_s3 import moto  # noqa: F401 - the moto server fixture (this module gets its own)

SIZE_HW = (40, 56)
XSS = "<script>alert(1)</script>"


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _crafted_run(tmp_path: Path, file_names: list[str], class_names: list[str], errors: dict[int, str] | None = None) -> Path:
    """A run folder (part + merged outputs + report) whose rows carry ``file_names``; the
    uris point at real images so that the report renders previews."""
    src = tmp_path / "src"
    src.mkdir()
    recs = []
    for i, name in enumerate(file_names, start=1):
        rgb, lab = make_image(700 + i, SIZE_HW)
        img = src / f"{i}.png"
        img.write_bytes(_png(rgb))
        ref = ImageRef(image_id=i, file_name=name, uri=str(img))
        if errors and i in errors:
            recs.append(records.error_record(ref, "corrupt", errors[i]))
        else:
            recs.append(records.ok_record(ref, lab.astype(np.int32), np.full(SIZE_HW, 0.75, np.float32), class_names))
    out = tmp_path / "out"
    meta = {"vocabulary": class_names, "config_hash": "0" * 16, "num_images": len(recs), "model": "toy",
            "saliency": "toy", "protocol": "full", "version": "test", "source": str(src), "shard_index": 0}
    parts.write_part(recs, parts.part_path(str(out), 0), meta)
    reduce_output(str(out), report=True)
    return out


# ----------------------------------------------------------------------------- paths

EVIL_NAMES = [
    "../../escape-1.png",
    "a/../../../escape-2.png",
    "/tmp/annotator-abs-escape-3.png",
    "..\\..\\escape-4.png",
    "C:/escape-5.png",
    "./././../escape-6.png",
    "ok/inside.png",
]


def test_crafted_file_names_never_write_outside(tmp_path):
    from annotator.export import export

    names = EVIL_NAMES + [f"{'../' * 40}escape-7.png"]
    sandbox = tmp_path / "sandbox"  # every file the run, report and export write must be under it
    sandbox.mkdir()
    before_tmp = _tree(tmp_path)
    absolute = Path("/tmp/annotator-abs-escape-3.png")
    assert not absolute.exists()
    out = _crafted_run(sandbox, names, ["background", *VOCAB])
    result = export(str(out), "masks", str(sandbox / "masks"))
    assert result.counts["images"] == len(names)

    assert _tree(tmp_path) - before_tmp == {p for p in _tree(tmp_path) if p.startswith("sandbox")} - before_tmp
    assert not absolute.exists()  # the absolute name was not written where it points
    written = sorted(str(p.relative_to(sandbox / "masks")) for p in (sandbox / "masks").rglob("*.png"))
    assert "escape-1.png" in written and "tmp/annotator-abs-escape-3.png" in written
    assert "ok/inside.png" in written
    assert all(".." not in w and not w.startswith("/") for w in written)
    previews = sorted(p.name for p in (out / "previews").iterdir())
    assert previews and all(re.fullmatch(r"(sample|lowest)-\d+\.jpg", p) for p in previews)


def test_masks_export_refuses_a_symlink_that_leads_outside(tmp_path):
    """A folder inside the export target that is a symlink to elsewhere is not followed."""
    from annotator.export import ExportError, export

    out = _crafted_run(tmp_path, ["linked/x.png"], ["background", *VOCAB])
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "masks"
    target.mkdir()
    (target / "linked").symlink_to(outside, target_is_directory=True)
    # a folder that is no earlier export is refused before any write (the staging swap);
    # tests/export/test_masks.py covers the link inside an earlier export and the staging folder
    with pytest.raises(ExportError, match="not an earlier export"):
        export(str(out), "masks", str(target))
    assert list(outside.iterdir()) == []


# ----------------------------------------------------------------------------- user strings


def test_report_escapes_and_limits_user_strings(tmp_path):
    long_name = "n" * 3000 + ".png"
    html_name = '"><img src=x onerror=alert(2)>.png'
    classes = ["background", XSS, "green & <b>bold</b>", "blue", "y" * 200]
    out = _crafted_run(tmp_path, ["a.png", html_name, long_name, "d.png"], classes,
                       errors={4: "<iframe src=javascript:alert(3)>" + "e" * 1900})
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "<iframe" not in page.lower() and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "green &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;.png" in page
    assert "n" * 300 not in page  # the 3000-character file name is cut
    assert "e" * 600 not in page  # and so is the long error text
    assert "default-src 'none'" in page  # CSP: no script would run even if one slipped through
    coco = json.loads((out / "coco.json").read_text())
    assert [c["name"] for c in coco["categories"]][:2] == [XSS, "green & <b>bold</b>"]  # data, not markup


def test_over_long_class_name_is_refused(tmp_path, capsys):
    from annotator.inputs.vocab import MAX_NAME_CHARS

    vocab = tmp_path / "v.txt"
    vocab.write_text(f"red\n{'x' * (MAX_NAME_CHARS + 1)}\n", encoding="utf-8")
    img = tmp_path / "img"
    img.mkdir()
    Image.new("RGB", (8, 8)).save(img / "a.png")
    rc = main(["--vocab", str(vocab), "--source", str(img), "--model", "toy", "--saliency", "toy",
               "--output", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"class names are limited to {MAX_NAME_CHARS} characters, got {MAX_NAME_CHARS + 1}" in err


# ----------------------------------------------------------------------------- secrets

KEY = "AKIAQSECRETKEYID7788"
SECRET = "s3cr3t-Val/ue+Zq9xW"


def _leaks(text: str | bytes) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    forms = {KEY, SECRET, quote(SECRET, safe=""), SECRET.replace("/", "\\/")}
    return [f for f in forms if f in text]


def test_credentials_in_source_url_never_reach_outputs_or_logs(ray_session, moto, tmp_path, capsys, caplog,  # noqa: F811
                                                               monkeypatch):
    import logging

    import s3fs

    from annotator.export import export

    options, injector = moto
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # the driver has no credentials to find
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    fs.mkdir("sec-src")
    for i in range(4):
        fs.pipe(f"sec-src/images/img_{i}.png", _png(make_image(900 + i, SIZE_HW)[0]))
    fs.pipe("sec-src/images/broken.png", b"<html>not an image</html>")
    endpoint_only = {k: v for k, v in options.items() if k not in ("key", "secret")}
    out = tmp_path / "out"
    vocab = tmp_path / "v.txt"
    vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    injector.fail("GET", r"^/sec-src/images/img_1\.png$", times=1)  # a retry warning names the URI
    injector.fail("GET", r"^/sec-src/images/img_2\.png$", times=None)  # an error row names the URI
    caplog.set_level(logging.DEBUG, logger="annotator")
    try:
        rc = main(["--source", f"s3://{KEY}:{SECRET}@sec-src/images", "--storage-options", json.dumps(endpoint_only),
                   "--vocab", str(vocab), "--model", "toy", "--saliency", "toy", "--device", "cpu",
                   "--output", str(out), "--shard-size", "2", "--num-actors", "1", "--max-failure-rate", "1",
                   "--quiet"])
    finally:
        injector.clear()
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    rows = {r["file_name"]: r for r in pq.read_table(out / "annotations.parquet").to_pylist()}
    assert rows["img_0.png"]["status"] == "ok" and rows["img_1.png"]["status"] == "ok"
    assert rows["img_0.png"]["uri"] == "s3://sec-src/images/img_0.png"
    assert rows["img_2.png"]["error"].startswith("unreadable: s3://sec-src/images/img_2.png: gave up")
    assert rows["broken.png"]["error"].startswith("not-an-image: ")
    assert "reading s3://sec-src/images/img_1.png failed" in captured.err  # the actor's warning reached us

    for fmt in ("coco", "labelstudio", "masks"):
        export(str(out), fmt)
    files = [p for p in out.rglob("*") if p.is_file()]
    names = {str(p.relative_to(out)) for p in files}
    assert {"annotations.parquet", "coco.json", "summary.json", "report.html", "manifest.json"} <= names
    assert any(n.startswith("previews/") for n in names) and any(n.startswith("exports/labelstudio") for n in names)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<figure>" in page and "image not readable" not in page  # previews re-read S3 with the URL's key
    leaks = {str(p.relative_to(out)): _leaks(p.read_bytes()) for p in files}
    leaks["annotations.parquet metadata"] = _leaks(json.dumps(parts.read_part_metadata(str(out / "annotations.parquet"))))
    leaks["stderr"], leaks["stdout"], leaks["log"] = _leaks(captured.err), _leaks(captured.out), _leaks(caplog.text)
    leaks.update(_ray_log_leaks())
    assert {k: v for k, v in leaks.items() if v} == {}


def test_credentials_in_output_url_are_moved_without_echoing_them(tmp_path, capsys):
    """They go into the storage options (issue 22.1, tests/test_credentials.py walks every
    option); the unreachable store is reported with the URL redacted."""
    img = tmp_path / "img"
    img.mkdir()
    Image.new("RGB", (8, 8)).save(img / "a.png")
    vocab = tmp_path / "v.txt"
    vocab.write_text("red\n", encoding="utf-8")
    rc = main(["--vocab", str(vocab), "--source", str(img), "--model", "toy", "--saliency", "toy",
               "--output", f"s3://{KEY}:{SECRET}@bucket/out", "--quiet", "--storage-options",
               json.dumps({"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"},
                           "config_kwargs": {"retries": {"total_max_attempts": 1}}})])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--output s3://bucket/out: cannot check bucket 'bucket'" in err
    assert not _leaks(err)


def _ray_log_leaks() -> dict[str, list[str]]:
    """Leaks in the session Ray's log files (actor stdout/stderr, core worker logs). Also
    checks that the scan covers the actor's log, where its retry warning went."""
    import ray._private.worker as rw

    logs = Path(rw._global_node.get_session_dir_path()) / "logs"
    found, saw_warning = {}, False
    for p in logs.rglob("*"):
        if p.is_file():
            try:
                data = p.read_bytes()
            except OSError:
                continue
            saw_warning |= b"reading s3://sec-src/images/img_1.png failed" in data
            hit = _leaks(data)
            if hit:
                found[f"ray log {p.name}"] = hit
    assert saw_warning, f"no Ray log under {logs} holds the actor's warning: the scan missed the actor logs"
    return found

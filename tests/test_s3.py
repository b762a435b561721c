"""Object storage: S3 (moto's server on loopback, through s3fs) as source, ground truth
and output of a Ray run, with injected faults.

Faults are injected on the SERVER side: a WSGI wrapper around moto's app answers chosen
requests with ``503 ServiceUnavailable``. The Ray actors are separate processes that
reach the server over HTTP, so they see the faults exactly as they would see a flaky
store. The runs disable botocore's own retries (``config_kwargs``) and use an error code
that s3fs does not retry, so what recovers from the faults is the package's retry layer
(``annotator.storage.retry`` / ``sources.read_image_bytes``: 3 retries, waits 0.5 s then 1 s
then 2 s), and the server's request log shows each attempt and the waits between them.
"""

from __future__ import annotations

import io
import itertools
import json
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from annotator.run import main
from annotator.storage.manifest import Manifest
from tests.synthetic import VOCAB, make_image

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")

N_IMAGES = 8
SIZE_HW = (48, 64)
SRC = "annotator-src"


class FaultInjector:
    """WSGI middleware: answers matching requests with 503 (or 403 AccessDenied, with
    ``denied=True``), logs every request."""

    BODY = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
            b"<Message>Service Unavailable (injected by the test)</Message><RequestId>t</RequestId></Error>")
    DENIED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
              b"<Message>Access Denied (injected by the test)</Message><RequestId>t</RequestId></Error>")

    def __init__(self, app) -> None:
        self.app = app
        self.rules: list[list] = []  # [method, regex, remaining or None (always)]
        self.log: list[tuple[float, str, str, bool]] = []  # (time, method, path, faulted)
        self.lock = threading.Lock()

    def fail(self, method: str, path_regex: str, times: int | None, denied: bool = False) -> None:
        with self.lock:
            self.rules.append([method, re.compile(path_regex), times, denied])

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    def requests(self, method: str, path_regex: str) -> list[tuple[float, bool]]:
        rx = re.compile(path_regex)
        with self.lock:
            return [(t, f) for t, m, p, f in self.log if m == method and rx.search(p)]

    def __call__(self, environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        copy = "HTTP_X_AMZ_COPY_SOURCE" in environ  # the copy step of a move: never faulted
        fault = denied = False
        with self.lock:
            for rule in self.rules:
                if rule[0] == method and not copy and rule[1].search(path) and (rule[2] is None or rule[2] > 0):
                    if rule[2] is not None:
                        rule[2] -= 1
                    fault, denied = True, rule[3]
                    break
            self.log.append((time.monotonic(), method, path, fault))
        if not fault:
            return self.app(environ, start_response)
        stream = environ["wsgi.input"]  # drain the upload so the connection stays usable
        if environ.get("wsgi.input_terminated"):
            stream.read()
        else:
            stream.read(int(environ.get("CONTENT_LENGTH") or 0))
        body, status = (self.DENIED, "403 Forbidden") if denied else (self.BODY, "503 Service Unavailable")
        start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
        return [body]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """(storage options for the server, FaultInjector)."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    injector = FaultInjector(server._server.app)
    server._server.app = injector  # werkzeug looks the app up per request
    host, port = server.get_host_and_port()
    options = {
        "client_kwargs": {"endpoint_url": f"http://{host}:{port}"},
        "key": "testing",
        "secret": "testing",
        # no retries below the package's own: see the module docstring
        "config_kwargs": {"retries": {"total_max_attempts": 1, "mode": "standard"}},
    }
    try:
        yield options, injector
    finally:
        server.stop()


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _fs(options: dict):
    return s3fs.S3FileSystem(skip_instance_cache=True, **options)


@pytest.fixture(scope="module")
def s3_data(moto, tmp_path_factory):
    """Images under s3://annotator-src/images/ (two folders), VOC-style GT under .../gt/,
    and a local vocabulary. Returns {file_name: labels}."""
    options, _ = moto
    fs = _fs(options)
    fs.mkdir(SRC)
    truth = {}
    for i in range(N_IMAGES):
        rgb, lab = make_image(300 + i, SIZE_HW)
        name = f"{'b/' if i % 2 else 'a/'}img_{i:04d}.png"
        fs.pipe(f"{SRC}/images/{name}", _png(rgb))
        fs.pipe(f"{SRC}/gt/{name}", _png(lab))  # mode L: class indices
        truth[name] = lab
    vocab = tmp_path_factory.mktemp("s3vocab") / "v.txt"
    vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return truth, vocab


def _argv(options: dict, vocab: Path, output: str, *extra: str) -> list[str]:
    return ["--source", f"s3://{SRC}/images", "--gt", f"s3://{SRC}/gt", "--vocab", str(vocab),
            "--model", "toy", "--saliency", "toy", "--device", "cpu", "--output", output,
            "--storage-options", json.dumps(options), "--shard-size", "3", "--num-actors", "2",
            "--quiet", "--no-report", *extra]


def _rows(fs, output: str) -> list[dict]:
    with fs.open(f"{output.removeprefix('s3://')}/annotations.parquet", "rb") as f:
        return sorted(pq.read_table(f).to_pylist(), key=lambda r: r["image_id"])


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def test_s3_source_gt_and_output_survive_transient_errors(ray_session, moto, s3_data, capsys):
    """Two 503s on reading one image and two on writing one part: the run succeeds,
    every image is annotated once, each faulted request was retried with growing waits."""
    options, injector = moto
    truth, vocab = s3_data
    out = "s3://annotator-out-1/run"
    fs = _fs(options)
    fs.mkdir("annotator-out-1")
    image_rx = rf"^/{SRC}/images/b/img_0003\.png$"
    part_rx = r"^/annotator-out-1/run/parts/part-00001\.parquet\.tmp-"
    injector.fail("GET", image_rx, times=2)
    injector.fail("PUT", part_rx, times=2)
    try:
        rc = main(_argv(options, vocab, out))
    finally:
        injector.clear()
    err = capsys.readouterr().err
    assert rc == 0, err

    rows = _rows(fs, out)
    assert [r["file_name"] for r in rows] == sorted(truth)
    assert [r["image_id"] for r in rows] == list(range(1, N_IMAGES + 1))
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    assert rows[0]["uri"] == f"s3://{SRC}/images/a/img_0000.png"
    scores = json.loads(fs.cat(f"{out.removeprefix('s3://')}/metrics.json"))  # GT read from S3 by the actors
    assert scores["miou"] > 0.9
    leftovers = [p for p in fs.ls("annotator-out-1/run/parts") if ".tmp-" in p]
    assert not leftovers

    for rx in (image_rx, part_rx):  # 2 faulted attempts, then one that succeeded
        attempts = injector.requests("GET" if "images" in rx else "PUT", rx)
        assert [f for _, f in attempts] == [True, True, False], rx
        gaps = _gaps([t for t, _ in attempts])
        assert gaps[0] >= 0.45 and gaps[1] >= 0.95, (rx, gaps)  # backoff 0.5 s, then 1 s


def test_s3_part_that_cannot_be_written_is_reported_then_rerun(ray_session, moto, s3_data, capsys):
    """Every write of shard 1's part fails: after 4 write attempts per try and 3 tries the
    run exits 2 naming shard 1 and its images; the other shards are written and recorded.
    Once the store recovers, the same command writes only shard 1."""
    from annotator.distributed.policy import MAX_SHARD_ATTEMPTS

    options, injector = moto
    truth, vocab = s3_data
    out = "s3://annotator-out-2/run"
    fs = _fs(options)
    fs.mkdir("annotator-out-2")
    part_rx = r"^/annotator-out-2/run/parts/part-00001\.parquet\.tmp-"
    injector.fail("PUT", part_rx, times=None)
    try:
        rc = main(_argv(options, vocab, out))
    finally:
        injector.clear()
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "1 shard(s) failed on every attempt" in err
    names = sorted(truth)
    part = f"{out}/parts/part-00001.parquet"
    assert f"shard 1 (3 images, {names[3]} .. {names[5]}): StorageError: writing {part}: transient" in err
    assert "Service Unavailable" in err
    assert len(injector.requests("PUT", part_rx)) == MAX_SHARD_ATTEMPTS * 4  # attempts x (1 + 3 storage retries)
    manifest = json.loads(fs.cat("annotator-out-2/run/manifest.json"))
    assert sorted(manifest["finished"], key=int) == ["0", "2"]
    assert not fs.exists("annotator-out-2/run/annotations.parquet")

    rc = main(_argv(options, vocab, out))
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "(2 shards, 5 images, already done)" in err
    rows = _rows(fs, out)
    assert [r["image_id"] for r in rows] == list(range(1, N_IMAGES + 1))
    assert all(r["status"] == "ok" for r in rows)
    assert Manifest.load(out, options).finished.keys() == {"0", "1", "2"}


def test_output_in_a_missing_bucket_is_refused_not_created(moto, s3_data, tmp_path, capsys):
    """Issue #11, item 8: `--output s3://typo-bucket/x` is an error before any work; the
    bucket is not created. A missing `precomputed:` folder is refused the same way."""
    options, _ = moto
    truth, vocab = s3_data
    capsys.readouterr()
    rc = main(_argv(options, vocab, "s3://annotator-typo-bucket/run"))
    err = capsys.readouterr().err
    assert rc == 2 and "expected an existing bucket, got 'annotator-typo-bucket'" in err, err
    assert not _fs(options).exists("annotator-typo-bucket")
    out = tmp_path / "out"
    argv = _argv(options, vocab, str(out))
    argv[argv.index("--saliency") + 1] = f"precomputed:s3://{SRC}/no-such-maps"
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "expected a folder of saliency maps" in err, err
    assert not out.exists()


@pytest.mark.parametrize("denied", ["manifest.json", "annotations.parquet"])
def test_a_denied_write_is_one_line_not_retried(denied, ray_session, moto, s3_data, capsys):
    """Issue #11, item 3: S3 answering 403 to the manifest's or the merged file's upload:
    exit 2, one `error:` line, no traceback; a permanent error is not retried."""
    options, injector = moto
    truth, vocab = s3_data
    bucket = f"annotator-denied-{denied.split('.')[0]}"
    _fs(options).mkdir(bucket)
    output = f"s3://{bucket}/run"
    injector.fail("PUT", rf"^/{bucket}/run/{re.escape(denied)}", None, denied=True)
    try:
        capsys.readouterr()
        rc = main(_argv(options, vocab, output))
        err = capsys.readouterr().err
    finally:
        injector.clear()
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and ("AccessDenied" in lines[0] or "Access Denied" in lines[0]), err
    assert "Traceback" not in err
    puts = injector.requests("PUT", rf"^/{bucket}/run/{re.escape(denied)}")
    assert [faulted for _, faulted in puts] == [True], puts  # denied once, not retried


def test_precomputed_saliency_on_s3_gets_the_storage_options(ray_session, moto, s3_data, tmp_path, capsys):
    """Issue #11, item 8: the actors read `precomputed:s3://...` maps through the run's
    --storage-options (the moto endpoint), not AWS."""
    options, _ = moto
    truth, vocab = s3_data
    fs = _fs(options)
    for name, lab in truth.items():
        buf = io.BytesIO()
        np.save(buf, (lab > 0).astype(np.float32))
        fs.pipe(f"{SRC}/maps/{name.rsplit('.', 1)[0]}.npy", buf.getvalue())
    out = tmp_path / "out"
    argv = _argv(options, vocab, str(out))
    argv[argv.index("--saliency") + 1] = f"precomputed:s3://{SRC}/maps"
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 0, err
    rows = pq.read_table(out / "annotations.parquet").to_pylist()
    assert len(rows) == len(truth) and all(r["status"] == "ok" for r in rows)
    assert "endpoint_url" not in (out / "manifest.json").read_text()

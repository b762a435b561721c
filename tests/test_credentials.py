"""One credential rule for every URL and path (issue 22.1): a marker secret put into each
option of ``annotator.run`` and ``annotator.export`` in turn, each failure driven
(unreachable host, bad bucket, denied, not found, refused), and then stdout, stderr, the
log and every file written under the test's folders are searched: the marker never
appears. The options are walked from the parsers: a test checks that the list below
covers every option that takes a string.

The object store is moto's S3 server on loopback, with the 403 injector of
``tests/test_s3.py``; the unreachable host is a refused loopback port."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from annotator.export.__main__ import build_parser as export_parser
from annotator.export.__main__ import main as export_main
from annotator.run import build_parser as run_parser
from annotator.run import main as run_main
from annotator.storage import redact
from tests.synthetic import write_dataset, write_vocab
from tests.test_s3 import FaultInjector, _free_port, moto_server, s3fs  # noqa: F401 - skips without moto

KEY, SECRET = "AKIAMARKER", "SECRETMARKER"
MARKERS = (KEY, SECRET)
USERINFO = f"{KEY}:{SECRET}@"
NO_RETRIES = {"config_kwargs": {"retries": {"total_max_attempts": 1, "mode": "standard"}}}

#: Every option of ``annotator.run`` that takes a string, by how its value is used:
#: read through fsspec (credentials moved into the storage options) ...
RUN_MOVED = ("--source", "--gt", "--output", "--saliency")
#: ... or a local file, a name, an address: credentials refused.
RUN_REFUSED = ("--vocab", "--image-list", "--hf-dataset", "--pretrained", "--dino-weights", "--found-weights",
               "--weights-dir", "--ray-address")
#: ... or no URL at all (a model name, a split, a device): the marker still never shows.
RUN_OTHER = ("--hf-split", "--hf-image-column", "--model", "--templates", "--device", "--storage-options")
EXPORT_MOVED = ("output", "--to", "--images-root")
EXPORT_REFUSED = ("--image-url-prefix", "--push")
EXPORT_OTHER = ("--storage-options", "--api-key", "--classes", "--instances", "--ls-from-name", "--ls-to-name",
                "--model-version", "--project", "--dataset", "--format", "--iscrowd")
#: ``python -m annotator.serve labelstudio``: it reads no storage options, so every URL or
#: path option refuses credentials (``--saliency`` in its ``precomputed:`` form).
SERVE_REFUSED = ("--label-studio-url", "--vocab", "--pretrained", "--dino-weights", "--found-weights",
                 "--weights-dir", "--saliency")
SERVE_OTHER = ("--host", "--model-version", "--instances", "--model", "--templates", "--device")


def _string_options(parser) -> set[str]:
    """Every option (its last flag; a positional by its dest) whose value is free text."""
    out = set()
    for action in parser._actions:
        if action.dest == "help" or action.nargs == 0 or action.type not in (None, str) or action.choices:
            continue
        out.add(action.option_strings[-1] if action.option_strings else action.dest)
    return out


def _serve_parser():
    """The parser of ``python -m annotator.serve labelstudio``."""
    import argparse

    from annotator.serve.__main__ import build_parser as serve_parser

    (sub,) = [a for a in serve_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices["labelstudio"]


def test_the_walk_covers_every_string_option_of_the_parsers():
    assert _string_options(run_parser()) == set(RUN_MOVED + RUN_REFUSED + RUN_OTHER)
    assert _string_options(_serve_parser()) == set(SERVE_REFUSED + SERVE_OTHER)
    assert _string_options(export_parser()) <= set(EXPORT_MOVED + EXPORT_REFUSED + EXPORT_OTHER)
    assert set(EXPORT_MOVED + EXPORT_REFUSED) <= _string_options(export_parser())


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(endpoint URL of a moto S3 server, its fault injector): bucket 'data' holds a few
    files; every request for bucket 'denied' is answered 403 AccessDenied."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    injector = FaultInjector(server._server.app)
    server._server.app = injector
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    fs = s3fs.S3FileSystem(key="setup", secret="setup", client_kwargs={"endpoint_url": endpoint},
                           skip_instance_cache=True)
    fs.mkdir("data")
    fs.mkdir("denied")
    fs.pipe("data/readme.txt", b"not an image")
    for method in ("GET", "HEAD", "PUT", "POST", "DELETE"):
        injector.fail(method, r"^/denied", times=None, denied=True)
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("local")
    images, _, _ = write_dataset(root / "images", 2, size_hw=(24, 32), nested=False)
    return {"images": images, "vocab": write_vocab(root / "v.txt")}


def _failure_urls(endpoint: str) -> dict[str, tuple[str, dict]]:
    """failure -> (URL template with {u} for the userinfo, storage options)."""
    refused_port = _free_port()
    at = {"client_kwargs": {"endpoint_url": endpoint}, **NO_RETRIES}
    return {
        "unreachable": ("s3://{u}data/x", {"client_kwargs": {"endpoint_url": f"http://127.0.0.1:{refused_port}"},
                                           **NO_RETRIES}),
        "bad-bucket": ("s3://{u}Bad_Bucket..Name/x", at),
        "denied": ("s3://{u}denied/x", at),
        "not-found": ("s3://{u}nosuchbucket/x", at),
        "https-unreachable": (f"https://{{u}}127.0.0.1:{refused_port}/x", {}),
    }


def _assert_no_marker(texts: list[str], *roots: Path) -> None:
    for text in texts:
        for marker in MARKERS:
            assert marker not in text, f"{marker} printed: {text[-2000:]}"
    for root in roots:
        for path in Path(root).rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                for marker in MARKERS:
                    assert marker.encode() not in data, f"{marker} written into {path}"


def _run_argv(local: dict, out: Path, option: str, value: str, options: dict) -> list[str]:
    argv = {"--source": str(local["images"]), "--vocab": str(local["vocab"]), "--model": "toy",
            "--saliency": "toy", "--device": "cpu", "--output": str(out)}
    if option == "--saliency":
        value = f"precomputed:{value}"
    if option in ("--hf-split", "--hf-image-column"):
        argv["--hf-dataset"] = str(out.parent / "no-dataset")
        del argv["--source"]
    if option == "--storage-options":  # the marker as the store's key: the source read from the store fails
        argv["--source"] = value.replace(USERINFO, "")
        options = {**options, "secret": SECRET, "key": KEY}
        value = json.dumps(options)
    argv[option] = value
    if option != "--storage-options":
        argv["--storage-options"] = json.dumps(options)
    return [*(x for kv in argv.items() for x in kv), "--quiet", "--no-report", "--num-actors", "1"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("option", RUN_MOVED + RUN_REFUSED + RUN_OTHER)
def test_a_secret_in_any_run_option_never_shows(option, store, local, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    failures = _failure_urls(store)
    if option not in RUN_MOVED:  # refused (or meaningless) whatever the store does: one failure is enough
        failures = {k: failures[k] for k in ("unreachable", "https-unreachable")}
    for failure, (template, options) in failures.items():
        out = tmp_path / failure / "out"
        out.parent.mkdir()
        value = template.format(u=USERINFO)
        rc = run_main(_run_argv(local, out, option, value, options))
        captured = capsys.readouterr()
        assert rc != 0, (option, failure, captured.err)
        assert "error:" in captured.err, (option, failure, captured.err)
        _assert_no_marker([captured.out, captured.err, caplog.text], tmp_path)
        caplog.clear()


def test_credentials_of_a_read_url_reach_the_store_as_storage_options(store, local, tmp_path, capsys):
    """The rule moves them, it does not drop them: the run writes to moto through an
    output URL whose only credentials are in it (s3fs would otherwise find none)."""
    from annotator.request import ReadSpec, RunRequest, WriteSpec

    request = RunRequest(read=ReadSpec(source=f"s3://{USERINFO}data/x", gt=f"s3://{USERINFO}data/gt.json"),
                         write=WriteSpec(output=f"s3://{USERINFO}data/out"),
                         storage_options={"client_kwargs": {"endpoint_url": store}})
    assert (request.read.source, request.read.gt, request.write.output) == (
        "s3://data/x", "s3://data/gt.json", "s3://data/out")
    assert request.storage_options == {"client_kwargs": {"endpoint_url": store}, "key": KEY, "secret": SECRET}
    from annotator.job import check_output_writable

    check_output_writable(request.write.output, request.storage_options)  # moto accepts the marker's key


def test_two_sets_of_credentials_and_credentials_a_scheme_cannot_take_are_refused(local, tmp_path, capsys):
    argv = ["--source", f"s3://{USERINFO}data/x", "--output", f"s3://OTHERKEY:{SECRET}@data/out",
            "--vocab", str(local["vocab"]), "--model", "toy", "--saliency", "toy"]
    assert run_main(argv) == 2
    err = capsys.readouterr().err
    assert "expected one set of credentials" in err and SECRET not in err and KEY not in err
    assert run_main(["--source", f"gs://{USERINFO}bucket/x", "--vocab", str(local["vocab"]),
                     "--model", "toy", "--saliency", "toy"]) == 2
    err = capsys.readouterr().err
    assert "expected credentials in --storage-options for gs://" in err and SECRET not in err


def test_redaction_catches_a_secret_quoted_without_its_url():
    redact.register_secret("SECRETMARKER")
    text = 'Invalid bucket name "AKIAMARKER:SECRETMARKER@bucket": Bucket name must match the regex'
    shown = redact.redact_text(text)
    assert "SECRETMARKER" not in shown and "AKIAMARKER" not in shown and '"bucket"' in shown
    assert redact.redact_text("see https://u:pw-long@host/x and SECRETMARKER") == "see https://host/x and ***"


# ----------------------------------------------------------------------------- export


def _export_argv(option: str, value: str, options: dict, run_output: Path, to: Path) -> list[str]:
    argv = {"output": str(run_output), "--format": "labelstudio", "--to": str(to)}
    if option == "--push":
        argv["--project"] = "1"
    if option == "--storage-options":
        options = {**options, "secret": SECRET, "key": KEY}
        value = json.dumps(options)
    argv[option] = value
    if option != "--storage-options":
        argv["--storage-options"] = json.dumps(options)
    positional = [argv.pop("output")]
    return [*positional, *(x for kv in argv.items() for x in kv)]


@pytest.mark.parametrize("option", EXPORT_MOVED + EXPORT_REFUSED + ("--storage-options", "--api-key"))
def test_a_secret_in_any_export_option_never_shows(option, store, tmp_path, capsys, caplog):
    """The export of a run output that is not there (locally, or on the store), each
    option carrying the marker: exit 2, the marker nowhere."""
    caplog.set_level(logging.DEBUG)
    failures = _failure_urls(store)
    if option not in EXPORT_MOVED:
        failures = {k: failures[k] for k in ("unreachable", "https-unreachable")}
    for failure, (template, options) in failures.items():
        value = template.format(u=USERINFO)
        run_output = tmp_path / failure / "no-run"
        rc = export_main(_export_argv(option, value, options, run_output, tmp_path / failure / "to"))
        captured = capsys.readouterr()
        _assert_no_marker([captured.out, captured.err, caplog.text], tmp_path)
        assert rc == 2, (option, failure, captured.err)  # a storage error, classified (exit 2), one line
        assert len(captured.err.strip().splitlines()) == 1 and captured.err.startswith("error: "), captured.err
        caplog.clear()


@pytest.mark.timeout(600)
def test_a_run_whose_urls_carry_the_credentials_writes_them_nowhere(store, local, tmp_path, capsys, caplog,
                                                                    ray_session, monkeypatch):
    """Source, ground truth and output on the store, their only credentials in their
    URLs: the run succeeds (the credentials reached every reader and writer, the Ray
    actors too) and no object it wrote, no line it printed holds them."""
    from PIL import Image

    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    caplog.set_level(logging.INFO)
    fs = s3fs.S3FileSystem(key="setup", secret="setup", client_kwargs={"endpoint_url": store},
                           skip_instance_cache=True)
    for path in sorted(Path(local["images"]).rglob("*.png")):
        with Image.open(path) as im:
            label = Image.new("L", im.size, 1)
        fs.pipe(f"data/run-src/images/{path.name}", path.read_bytes())
        buf = __import__("io").BytesIO()
        label.save(buf, format="PNG")
        fs.pipe(f"data/run-src/gt/{path.name}", buf.getvalue())
    endpoint_only = {"client_kwargs": {"endpoint_url": store}, **NO_RETRIES}
    rc = run_main(["--source", f"s3://{USERINFO}data/run-src/images", "--gt", f"s3://{USERINFO}data/run-src/gt",
                   "--output", f"s3://{USERINFO}data/run-out", "--vocab", str(local["vocab"]), "--model", "toy",
                   "--saliency", "toy", "--device", "cpu", "--storage-options", json.dumps(endpoint_only),
                   "--num-actors", "1", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    written = fs.find("data/run-out")
    assert any(p.endswith("annotations.parquet") for p in written) and any(p.endswith("manifest.json")
                                                                           for p in written)
    for path in written:
        data = fs.cat(path)
        for marker in MARKERS:
            assert marker.encode() not in data, f"{marker} written into s3://{path}"
    _assert_no_marker([captured.out, captured.err, caplog.text], tmp_path)



@pytest.mark.parametrize("option", SERVE_REFUSED)
def test_a_secret_in_a_serve_option_is_refused_and_never_shows(option, local, tmp_path, capsys, caplog,
                                                               monkeypatch):
    """``annotator.serve labelstudio``: credentials in a URL or path option are refused
    (exit 2, one line, the secret masked) before the model loads or a port is opened."""
    pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    from annotator.serve.__main__ import main as serve_main

    def never(*args, **kwargs):  # the server must not start
        raise AssertionError("the backend started")

    monkeypatch.setattr(uvicorn, "run", never)
    value = f"https://{USERINFO}ls.example.invalid/x"
    argv = {"--vocab": str(local["vocab"]), "--model": "toy", "--saliency": "toy", "--device": "cpu"}
    argv[option] = f"precomputed:{value}" if option == "--saliency" else value
    rc = serve_main(["labelstudio", *(x for kv in argv.items() for x in kv)])
    captured = capsys.readouterr()
    assert rc == 2, captured.err
    assert captured.err.startswith(f"error: {option}") and "expected no credentials" in captured.err, captured.err
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    _assert_no_marker([captured.out, captured.err, caplog.text], tmp_path)

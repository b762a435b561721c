"""The Label Studio ML backend (``python -m annotator.serve labelstudio``).

Unit tests drive the FastAPI app with its TestClient on the toy model; task images come
from an ``httpx.MockTransport`` standing in for Label Studio's file routes (to see which
requests carry the token). ``test_real_label_studio_*`` connect the backend, served by
uvicorn on loopback, to a REAL ``label-studio`` server (the push test's fixture), which
calls /setup and /predict itself; what it stores is decoded back to our masks. The
README's local-files recipe is followed there too, as written.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.clients import import_client, require_client
from tests.synthetic import VOCAB, make_image

pytestmark = pytest.mark.clients

import_client("fastapi", "pip install 'annotator[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from annotator.config import EngineConfig  # noqa: E402
from annotator.engine import Engine  # noqa: E402
from annotator.export.labelstudio import labeling_config, ls_rle_to_mask  # noqa: E402
from annotator.inputs.vocab import parse_vocabulary  # noqa: E402
from annotator.serve import __main__ as serve_main  # noqa: E402
from annotator.serve.labelstudio_backend import (  # noqa: E402
    BackendOptions,
    ImageFetcher,
    LabelStudioBackend,
    SchemaError,
    create_app,
    parse_label_config,
)

LS = "http://ls.test:8080"
TOKEN = "0123456789abcdef0123456789abcdef01234567"
META = {"version": "test", "model": "toy", "pretrained": "toy", "saliency": "toy"}


@pytest.fixture(scope="module")
def engine():
    vocab = parse_vocabulary("\n".join(VOCAB))
    return Engine(EngineConfig(model="toy", saliency="toy", pretrained="toy", device="cpu"), vocab)


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


IMAGES = {f"img{i}.png": make_image(i, (48 + 8 * i, 64))[0] for i in range(4)}


class FakeFiles:
    """Label Studio's file routes and a foreign web server, in memory; records who got the token."""

    def __init__(self):
        self.seen: list[tuple[str, str | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        auth = request.headers.get("authorization")
        self.seen.append((url, auth))
        name = url.rsplit("/", 1)[-1].split("=")[-1]
        if request.url.host == "ls.test":
            if auth != f"Token {TOKEN}":
                return httpx.Response(401)
            if request.url.path.startswith("/tasks/"):  # the cloud resolver: redirect to a presigned URL
                uri = base64.urlsafe_b64decode(request.url.params["fileuri"]).decode()
                return httpx.Response(302, headers={"Location": "https://bucket.test/" + uri.rsplit("/", 1)[-1]})
        if name == "corrupt.png":
            return httpx.Response(200, content=b"<html>not an image</html>")
        if name not in IMAGES:
            return httpx.Response(404)
        return httpx.Response(200, content=_png(IMAGES[name]))


def _backend(engine, files=None, **options):
    fetcher = ImageFetcher(LS, TOKEN, transport=httpx.MockTransport(files or FakeFiles()))
    return LabelStudioBackend(engine, fetcher, BackendOptions(**options), META)


def _decode(prediction: dict, class_names: list[str], size_hw) -> np.ndarray:
    labels = np.zeros(size_hw, np.int32)
    for r in prediction["result"]:
        assert r["type"] == "brushlabels" and r["from_name"] == "label" and r["to_name"] == "image"
        assert (r["original_height"], r["original_width"]) == tuple(size_hw)
        labels[ls_rle_to_mask(r["value"]["rle"], size_hw)] = class_names.index(r["value"]["brushlabels"][0])
    return labels


def _expected(engine, name: str) -> np.ndarray:
    return engine.predict([IMAGES[name]])[0].labels_hw


def test_health_setup_and_harmless_routes(engine):
    client = TestClient(create_app(_backend(engine)))
    health = client.get("/health").json()
    assert health["status"] == "UP" and health["model_version"] == "annotator-test:toy/toy+toy"
    assert client.get("/").json()["status"] == "UP"
    config = labeling_config(engine.vocabulary.names)
    assert client.post("/setup", json={"project": "1.1700000000", "schema": config}).json() == {
        "model_version": "annotator-test:toy/toy+toy"}
    bad = client.post("/setup", json={"project": "1.1", "schema": "<View><Image name='i' value='$i'/></View>"})
    assert bad.status_code == 400 and "BrushLabels" in bad.json()["error"]
    other = labeling_config(["background", "cat", "dog"])
    bad = client.post("/setup", json={"project": "1.1", "schema": other})
    assert bad.status_code == 400 and "none of the model's classes" in bad.json()["error"]
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED"}).json() == {"status": "Unknown event"}
    assert client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 1}}).status_code == 201
    assert client.get("/metrics").status_code == 200
    assert client.post("/predict", content=b"not json").status_code == 400


def test_setup_gives_the_host_and_token_when_the_environment_does_not(engine):
    files = FakeFiles()
    fetcher = ImageFetcher(None, None, transport=httpx.MockTransport(files))
    client = TestClient(create_app(LabelStudioBackend(engine, fetcher, BackendOptions(), META)))
    config = labeling_config(engine.vocabulary.names)
    tasks = [{"id": 1, "data": {"image": "/data/upload/1/img0.png"}}]
    before = client.post("/predict", json={"tasks": tasks, "label_config": config}).json()["results"]
    assert "LABEL_STUDIO_URL is not set" in before[0]["error"]
    client.post("/setup", json={"project": "1.1", "schema": config, "hostname": LS, "access_token": TOKEN})
    after = client.post("/predict", json={"tasks": tasks, "label_config": config}).json()["results"]
    assert "error" not in after[0] and after[0]["result"]


def test_predict_reads_every_kind_of_url_and_answers_our_masks(engine):
    files = FakeFiles()
    client = TestClient(create_app(_backend(engine, files)))
    config = labeling_config(engine.vocabulary.names)
    tasks = [
        {"id": 11, "data": {"image": "/data/upload/3/img0.png"}},
        {"id": 12, "data": {"image": "/data/local-files/?d=images/img1.png"}},
        {"id": 13, "data": {"image": "s3://bucket/prefix/img2.png"}},
        {"id": 14, "data": {"image": "https://elsewhere.test/img3.png"}},
        {"id": 15, "data": {"image": "data:image/png;base64," + base64.b64encode(_png(IMAGES["img0.png"])).decode()}},
    ]
    response = client.post("/predict", json={"tasks": tasks, "label_config": config, "project": "1.1"})
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == len(tasks)
    names = ["img0.png", "img1.png", "img2.png", "img3.png", "img0.png"]
    for name, prediction in zip(names, results, strict=True):
        assert prediction["model_version"] == "annotator-test:toy/toy+toy"
        assert 0.0 <= prediction["score"] <= 1.0
        expected = _expected(engine, name)
        assert (_decode(prediction, engine.vocabulary.names, expected.shape) == expected).all(), name
    # the token went to Label Studio only, never to the bucket or a foreign server
    for url, auth in files.seen:
        assert (auth == f"Token {TOKEN}") == url.startswith(LS), url
    resolved = [u for u, _ in files.seen if "/tasks/13/resolve/" in u]
    assert resolved and base64.urlsafe_b64decode(resolved[0].split("fileuri=")[1]).decode() == "s3://bucket/prefix/img2.png"


def test_one_bad_image_answers_an_error_for_its_task_only(engine):
    client = TestClient(create_app(_backend(engine)))
    config = labeling_config(engine.vocabulary.names)
    tasks = [
        {"id": 1, "data": {"image": "/data/upload/1/img0.png"}},
        {"id": 2, "data": {"image": "/data/upload/1/nonesuch.png"}},
        {"id": 3, "data": {"image": "https://elsewhere.test/corrupt.png"}},
        {"id": 4, "data": {"other": "x"}},
        {"id": 5, "data": {"image": "/data/upload/1/img1.png"}},
    ]
    results = client.post("/predict", json={"tasks": tasks, "label_config": config}).json()["results"]
    assert len(results) == 5
    assert "result" in results[0] and "result" in results[4]
    for i, reason in ((1, "missing: /data/upload/1/nonesuch.png: HTTP 404"), (2, "not-an-image"), (3, "missing")):
        assert "result" not in results[i]  # Label Studio stores nothing for it, and retries it next time
        assert results[i]["error"].startswith(reason), results[i]
    assert TOKEN not in json.dumps(results)


def test_the_tasks_of_a_request_go_through_the_engine_as_one_batch(engine):
    calls = []

    class Counting:
        vocabulary = engine.vocabulary

        def predict(self, images, names=None):
            calls.append(len(images))
            if any(im.shape[0] == 64 for im in images):  # img2 (64 rows) breaks the model
                raise RuntimeError("boom")
            return engine.predict(images, names)

    fetcher = ImageFetcher(LS, TOKEN, transport=httpx.MockTransport(FakeFiles()))
    client = TestClient(create_app(LabelStudioBackend(Counting(), fetcher, BackendOptions(), META)))
    config = labeling_config(engine.vocabulary.names)
    tasks = [{"id": i + 1, "data": {"image": f"/data/upload/1/img{i}.png"}} for i in range(4)]
    results = client.post("/predict", json={"tasks": tasks, "label_config": config}).json()["results"]
    assert calls == [4, 1, 1, 1, 1]  # one batch; when it failed, one image at a time
    assert [("error" in r) for r in results] == [False, False, True, False]
    assert "the model failed on this image" in results[2]["error"]


def test_a_full_queue_answers_503_and_the_server_stays_up(engine):
    backend = _backend(engine, max_queue=0)
    client = TestClient(create_app(backend))
    config = labeling_config(engine.vocabulary.names)
    task = {"id": 1, "data": {"image": "/data/upload/1/img0.png"}}
    backend.admit()  # a request at the engine, none may wait
    try:
        busy = client.post("/predict", json={"tasks": [task], "label_config": config})
        assert busy.status_code == 503 and "busy" in busy.json()["error"] and busy.headers["Retry-After"]
        assert client.get("/health").status_code == 200
    finally:
        backend.release()
    assert client.post("/predict", json={"tasks": [task], "label_config": config}).status_code == 200


def test_the_config_chooses_names_labels_and_data_key(engine):
    config = ("<View><Image name='photo' value='$img'/><BrushLabels name='masks' toName='photo'>"
              "<Label value='red'/><Label value='blue'/><Label value='cat'/></BrushLabels></View>")
    schema = parse_label_config(config)
    assert (schema.from_name, schema.to_name, schema.data_key) == ("masks", "photo", "img")
    backend = _backend(engine)
    assert backend.schema(config)[1] == ("red", "blue")
    results = TestClient(create_app(backend)).post("/predict", json={
        "tasks": [{"id": 1, "data": {"img": "/data/upload/1/img0.png"}}], "label_config": config}).json()["results"]
    for r in results[0]["result"]:
        assert (r["from_name"], r["to_name"]) == ("masks", "photo")
        assert r["value"]["brushlabels"][0] in ("red", "blue")
    with pytest.raises(SchemaError, match="expected XML"):
        parse_label_config("<View")


def test_cli_refuses_without_the_extra_and_with_bad_options(tmp_path, monkeypatch, capsys):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("red\nblue\n", encoding="utf-8")
    import uvicorn  # noqa: F401 - in sys.modules, so that the context below puts the same module back

    with monkeypatch.context() as patch:  # the extra missing
        patch.setitem(__import__("sys").modules, "uvicorn", None)
        assert serve_main.main(["labelstudio", "--vocab", str(vocab), "--model", "toy", "--saliency", "toy"]) == 2
    err = capsys.readouterr().err
    assert "pip install" in err and "annotator[serve]" in err and len(err.strip().splitlines()) == 1
    assert serve_main.main(["labelstudio", "--vocab", str(tmp_path / "none.txt"), "--model", "toy"]) == 2
    assert "none.txt" in capsys.readouterr().err
    assert serve_main.main(["labelstudio", "--vocab", str(vocab), "--model", "toy", "--saliency", "toy",
                            "--pretrained", "toy", "--classes", "cat"]) == 2
    assert "cat" in capsys.readouterr().err


def test_a_personal_access_token_is_exchanged_for_an_access_token_once():
    pat = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJl"  # a JWT refresh token
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append((request.url.path, request.headers.get("authorization")))
        if request.url.path == "/api/token/refresh":
            assert json.loads(request.content) == {"refresh": pat}
            return httpx.Response(200, json={"access": "short-lived"})
        if request.headers.get("authorization") != "Bearer short-lived":
            return httpx.Response(401)
        return httpx.Response(200, content=_png(IMAGES["img0.png"]))

    fetcher = ImageFetcher(LS, pat, transport=httpx.MockTransport(handler))
    assert fetcher.fetch("/data/upload/1/a.png") == _png(IMAGES["img0.png"])
    assert fetcher.fetch("/data/upload/1/b.png")
    assert [c[0] for c in calls] == ["/api/token/refresh", "/data/upload/1/a.png", "/data/upload/1/b.png"]


def test_the_command_serves_the_model_until_stopped(tmp_path):
    """``python -m annotator.serve labelstudio`` as a user starts it: /health, then a
    prediction, then SIGTERM."""
    import os
    import signal
    import subprocess
    import sys

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    port = _free_port()
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "annotator.serve", "labelstudio", "--vocab", str(vocab),
                             "--model", "toy", "--saliency", "toy", "--pretrained", "toy", "--device", "cpu",
                             "--port", str(port), "--log-level", "warning"],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "LABEL_STUDIO_URL": LS})
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                health = httpx.get(url + "/health", timeout=2).json()
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert health["status"] == "UP" and health["model_version"].startswith("annotator-")
        names = ["background", *VOCAB]
        data_uri = "data:image/png;base64," + base64.b64encode(_png(IMAGES["img1.png"])).decode()
        request = {"tasks": [{"id": 1, "data": {"image": data_uri}}], "label_config": labeling_config(names)}
        results = httpx.post(url + "/predict", timeout=120, json=request).json()["results"]
        vocab_engine = Engine(EngineConfig(model="toy", saliency="toy", pretrained="toy", device="cpu"),
                              parse_vocabulary("\n".join(VOCAB)))
        expected = vocab_engine.predict([IMAGES["img1.png"]])[0].labels_hw
        assert (_decode(results[0], names, expected.shape) == expected).all()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    assert "Label Studio ML backend on" in (tmp_path / "serve.log").read_text()


# ----------------------------------------------------------------------------- a real Label Studio


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def document_root(tmp_path_factory):
    """The README recipe's layout: a toy run over ``ROOT/data/images`` (nested folders),
    Label Studio's local-files document root = ``ROOT/data`` (the parent), set in the
    environment before the push test's server fixture starts its server, with the
    model-on-loopback switch of the README."""
    from tests.export.conftest import build_toy_run_output

    root = tmp_path_factory.mktemp("ls-files")
    output, expected, class_names = build_toy_run_output(root)
    patch = pytest.MonkeyPatch()
    patch.setenv("LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED", "true")
    patch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(root / "data"))
    # Label Studio 1.23 refuses a model on a loopback or private address unless told (README)
    # (the model's URL, and the /webhook that Label Studio registers with it)
    patch.setenv("ML_BLOCK_LOCAL_IP", "false")
    patch.setenv("SSRF_PROTECTION_ENABLED", "false")
    yield root, output, expected, class_names
    patch.undo()


@pytest.fixture(scope="module")
def real_label_studio(document_root, request):
    """(url, token, document_root info) of a real server that serves local files."""
    from tests.export import test_ls_push

    if test_ls_push._server_binary() is None:
        require_client("label-studio", "no server installed (set LABEL_STUDIO_BIN, or run .ci/run, which installs it "
                                       "in .label-studio-venv)")
    url, token = request.getfixturevalue("label_studio")
    return url, token, document_root


from tests.export.test_ls_push import label_studio  # noqa: E402,F401 - the push test's server fixture, reused


class LabelStudioAPI:
    """Label Studio's REST API, as a user's script calls it."""

    def __init__(self, url: str, token: str):
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Token {token}"}, timeout=120)

    def __call__(self, method: str, path: str, expect: int | tuple = (200, 201), **kwargs):
        r = self.http.request(method, path, **kwargs)
        assert r.status_code in ((expect,) if isinstance(expect, int) else expect), f"{method} {path}: {r.text[:500]}"
        return r.json() if r.content else None

    def project(self, title: str, class_names: list[str]) -> int:
        return self("POST", "/api/projects", json={"title": title, "label_config": labeling_config(class_names)})["id"]

    def tasks(self, project: int) -> list[dict]:
        return self("GET", "/api/tasks", params={"project": project, "page_size": 100, "fields": "all"})["tasks"]


def _served_backend(url: str, token: str):
    """Our backend on a loopback port (uvicorn in a thread); yields its URL and the engine."""
    import uvicorn

    from annotator.inputs.vocab import load_vocabulary
    from tests.synthetic import write_vocab

    class Served:
        def __enter__(self):
            import tempfile
            from pathlib import Path

            with tempfile.TemporaryDirectory() as d:
                vocab = load_vocabulary(write_vocab(Path(d) / "vocab.txt"))
            self.engine = Engine(EngineConfig(model="toy", saliency="toy", pretrained="toy", device="cpu"), vocab)
            backend = LabelStudioBackend(self.engine, ImageFetcher(url, token), BackendOptions(), META)
            port = _free_port()
            self.server = uvicorn.Server(uvicorn.Config(create_app(backend), host="127.0.0.1", port=port,
                                                        log_level="warning"))
            self.thread = threading.Thread(target=self.server.run, daemon=True)
            self.thread.start()
            while not self.server.started:
                assert self.thread.is_alive(), "uvicorn exited"
                time.sleep(0.05)
            self.url = f"http://127.0.0.1:{port}"
            return self

        def __exit__(self, *exc):
            self.server.should_exit = True
            self.thread.join(30)

    return Served()


def test_real_label_studio_readme_local_files_recipe(real_label_studio, capsys, monkeypatch):
    """README, Label Studio, steps 3-5 as written: the document root is the parent of the
    images folder (a storage equal to it is refused), the storage is the folder, the
    export's prefix names it; every pushed task's image is then served by Label Studio."""
    from annotator.export.__main__ import main as export_main

    url, token, (root, output, expected, _) = real_label_studio
    api = LabelStudioAPI(url, token)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", token)
    assert export_main([output, "--format", "labelstudio", "--push", url, "--project", "recipe", "--create-project",
                        "--image-url-prefix", "/data/local-files/?d=images/"]) == 0
    project = int(capsys.readouterr().out.split("project=")[1].split(")")[0].split(",")[0])
    same = api("POST", "/api/storages/localfiles", expect=400,
               json={"project": project, "path": str(root / "data"), "use_blob_urls": True, "title": "root"})
    assert "cannot be the same" in json.dumps(same)
    api("POST", "/api/storages/localfiles", json={"project": project, "path": str(root / "data" / "images"),
                                                   "use_blob_urls": True, "recursive_scan": True, "title": "images"})
    tasks = api.tasks(project)
    assert len(tasks) == len(expected)
    for task in tasks:
        image_url = task["data"]["image"]
        assert image_url.startswith("/data/local-files/?d=images/")
        served = api.http.get(image_url)
        assert served.status_code == 200, image_url
        name = image_url.split("?d=images/", 1)[1]
        assert served.content == (root / "data" / "images" / name).read_bytes()


def test_real_label_studio_connects_the_backend_and_stores_our_masks(real_label_studio):
    """Label Studio itself calls /setup and /predict: tasks from local storage, an upload
    and a missing file; what it stores decodes to the engine's labels, the missing file
    gets no prediction."""
    from annotator.inputs.decode import decode_image

    url, token, (root, _, expected, class_names) = real_label_studio
    api = LabelStudioAPI(url, token)
    project = api.project("model", class_names)
    storage = api("POST", "/api/storages/localfiles", json={
        "project": project, "path": str(root / "data" / "images"), "use_blob_urls": True, "recursive_scan": True,
        "title": "images"})
    api("POST", f"/api/storages/localfiles/{storage['id']}/sync")
    upload_name = sorted(expected)[0]
    with open(root / "data" / "images" / upload_name, "rb") as f:
        api("POST", f"/api/projects/{project}/import", files={"file": ("upload.png", f, "image/png")})
    api("POST", f"/api/projects/{project}/import", json=[{"image": "/data/local-files/?d=images/nonesuch.png"}])
    tasks = api.tasks(project)
    assert len(tasks) == len(expected) + 2

    with _served_backend(url, token) as served:
        ml = api("POST", "/api/ml", json={"url": served.url, "project": project, "title": "annotator"})
        assert ml.get("state") in (None, "CO"), ml
        api("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": project},
            json={"selectedItems": {"all": True, "excluded": []}})
        predictions = api("GET", "/api/predictions", params={"project": project})
        engine = served.engine

    by_task = {p["task"]: p for p in predictions}
    checked = 0
    for task in tasks:
        image = task["data"]["image"]
        if "nonesuch" in image:
            assert task["id"] not in by_task  # the bad image: no prediction, the others unaffected
            continue
        if image.startswith("/data/upload/"):
            path = root / "data" / "images" / upload_name
        else:
            path = root / "data" / "images" / image.split("?d=images/", 1)[1]
        prediction = by_task[task["id"]]
        assert prediction["model_version"] == "annotator-test:toy/toy+toy"
        assert 0.0 <= prediction["score"] <= 1.0
        labels = engine.predict([decode_image(path.read_bytes())])[0].labels_hw
        assert (_decode(prediction, class_names, labels.shape) == labels).all(), image
        checked += 1
    assert checked == len(expected) + 1

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
from annotator.serve.labelstudio import (  # noqa: E402
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
    for name, prediction in zip(names, results):
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
    monkeypatch.setitem(__import__("sys").modules, "uvicorn", None)
    assert serve_main.main(["labelstudio", "--vocab", str(vocab), "--model", "toy", "--saliency", "toy"]) == 2
    err = capsys.readouterr().err
    assert "pip install" in err and "annotator[serve]" in err and len(err.strip().splitlines()) == 1
    monkeypatch.delitem(__import__("sys").modules, "uvicorn")
    assert serve_main.main(["labelstudio", "--vocab", str(tmp_path / "none.txt"), "--model", "toy"]) == 2
    assert "none.txt" in capsys.readouterr().err
    assert serve_main.main(["labelstudio", "--vocab", str(vocab), "--model", "toy", "--saliency", "toy",
                            "--pretrained", "toy", "--classes", "cat"]) == 2
    assert "cat" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a real Label Studio


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

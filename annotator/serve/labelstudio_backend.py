"""A Label Studio ML backend: the project's *Model* asks us for brush-mask predictions.

Protocol (as Label Studio 1.23's ``ml/api_connector.py`` calls it, and as HumanSignal's
``label-studio-ml-backend`` answers it):

- ``GET /health`` (and ``GET /``) -> ``{"status": "UP", "model_class": ..., "model_version": ...}``;
  Label Studio waits 1 s for it, so it never waits for the model.
- ``POST /setup`` ``{project, schema (label config XML), hostname, access_token,
  extra_params}`` -> ``{"model_version": ...}``; a label config without an ``<Image>``
  and a ``<BrushLabels>`` naming at least one of our classes is refused (HTTP 400,
  ``{"status": "ERROR", "error": ...}``), which Label Studio shows on the model card.
- ``POST /predict`` ``{tasks: [...], label_config, project, params}`` ->
  ``{"results": [prediction, ...]}``, one per task, in order. A prediction is
  ``{"result": [brush results], "score": image score, "model_version": ...}``, the
  brush results exactly as the ``labelstudio`` export writes them
  (:func:`annotator.export.labelstudio.task_for_record`). A task whose image cannot be
  read or decoded answers ``{"model_version": ..., "error": "<reason>: <detail>"}``
  without ``result``: Label Studio logs it and stores no prediction for that task (so a
  later *Retrieve predictions* tries it again); the other tasks are unaffected.
- ``POST /webhook`` and ``POST /train`` (annotation events): acknowledged, nothing
  learned. ``GET /metrics``: ``{}``. ``GET /versions``: the one model version.

Images: each task's ``data[<Image value=$key>]`` is read where it points:

- ``/data/upload/...``, ``/data/local-files/?d=...``, ``/storage-data/...`` or any other
  path starting with ``/``: on the Label Studio server (``LABEL_STUDIO_URL``), with the
  token (``LABEL_STUDIO_API_KEY``) as ``Authorization: Token ...``, or, for a personal
  access token (a JWT), ``Bearer`` with the access token it is exchanged for;
- ``s3://``, ``gs://``, ``azure-blob://``, ...: through Label Studio's resolver
  ``/tasks/{id}/resolve/?fileuri=<base64>`` (a proxy or a redirect to a presigned URL;
  the token is not sent to another host);
- ``http(s)://``: fetched as is (the token only for Label Studio's own host);
- ``data:image/...;base64,...``: decoded in place.

``LABEL_STUDIO_URL``/``LABEL_STUDIO_API_KEY`` as the official ML backends read them; when
they are not set, the ``hostname``/``access_token`` that Label Studio sends to ``/setup``
are used. Images are read into memory (nothing is cached on disk), with a timeout and a
size limit; the token is never logged or answered.

Scheduling: the model is loaded once. The tasks of one request are fetched in parallel
and go through the engine as one batch (``--batch-size`` images per engine step).
Requests take turns at the engine; at most ``max_queue`` requests wait, a request beyond
that is answered HTTP 503 with a message and ``Retry-After``. Fetching the next
request's images overlaps the current one's inference.
"""

# No ``from __future__ import annotations``: FastAPI reads the handlers' annotations
# (``request: Request``, imported inside :func:`create_app`) at definition time.

import base64
import binascii
import json
import logging
import os
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import numpy as np

from annotator.export.common import AnnotationFilter, ExportOptions, instance_class_ids
from annotator.export.labelstudio import default_model_version, task_for_record
from annotator.export.shapes import InstanceSplitter
from annotator.inputs.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from annotator.storage.redact import redact_text

log = logging.getLogger("annotator.serve")

__all__ = [
    "BackendOptions",
    "ImageFetcher",
    "LabelStudioBackend",
    "ProjectSchema",
    "SchemaError",
    "create_app",
    "parse_label_config",
]

#: Cloud-storage URI schemes that Label Studio resolves for a task (its ``url_scheme``s).
CLOUD_SCHEMES = ("s3", "gs", "gcs", "azure-blob", "azure-spi", "az", "abfs")
#: Label Studio's events for training (``label_studio_ml.api.TRAIN_EVENTS``): we do not learn.
TRAIN_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "START_TRAINING")
DEFAULT_MAX_IMAGE_BYTES = 256 << 20


class SchemaError(ValueError):
    """A label config we cannot predict for (one line, says what was expected)."""


class ImageFetchError(Exception):
    """A task image that could not be read; ``str()`` is ``"<reason>: <detail>"`` like a part row's error."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


# ----------------------------------------------------------------------------- label config


@dataclass(frozen=True)
class ProjectSchema:
    """What a project's label config asks of us.

    from_name: the ``<BrushLabels name>``; to_name: its ``toName`` (an ``<Image name>``);
    data_key: the task data key of that image (``value="$image"`` -> ``image``);
    label_values: the ``<Label value>``s of the BrushLabels (empty: none listed).
    """

    from_name: str
    to_name: str
    data_key: str
    label_values: tuple[str, ...]


def parse_label_config(xml: str) -> ProjectSchema:
    """The first ``<BrushLabels>`` whose ``toName`` is an ``<Image>`` of ``xml``.

    Raises :class:`SchemaError` when the config is not XML or has no such pair.
    """
    if not isinstance(xml, str) or not xml.strip():
        raise SchemaError("label config: expected the project's XML label config, received nothing")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise SchemaError(f"label config: expected XML, received unparsable text ({exc})") from None
    images = {el.get("name", ""): el.get("value", "") for el in root.iter() if el.tag == "Image"}
    seen = []
    for el in root.iter():
        if el.tag != "BrushLabels":
            continue
        to_name = el.get("toName", "").split(",")[0].strip()
        seen.append(to_name)
        if to_name in images:
            value = images[to_name]
            if not value.startswith("$") or len(value) < 2:
                raise SchemaError(f'label config: expected <Image name="{to_name}" value="$key">, '
                                  f"received value={value!r}")
            labels = tuple(str(lab.get("value")) for lab in el.iter() if lab.tag == "Label" and lab.get("value"))
            return ProjectSchema(el.get("name", ""), to_name, value[1:], labels)
    if seen:
        raise SchemaError(f"label config: expected a <BrushLabels toName=...> naming an <Image>, received toName "
                          f"{seen} and images {sorted(images)}")
    raise SchemaError("label config: expected a <BrushLabels> on an <Image> (this model predicts brush masks), "
                      f"received tags {sorted({el.tag for el in root.iter()})}")


# ----------------------------------------------------------------------------- images


def _is_jwt(token: str) -> bool:
    parts = token.split(".")
    return len(parts) == 3 and all(parts)


class ImageFetcher:
    """Reads task images into memory (see the module docstring for where they may point).

    ``label_studio_url``/``api_key``: the server and token for its own URLs (None: not
    configured; then :meth:`configure` may set them from ``/setup``). ``transport``: an
    ``httpx`` transport (tests). Thread-safe.
    """

    def __init__(self, label_studio_url: str | None = None, api_key: str | None = None, *,
                 timeout_s: float = 60.0, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES, transport: Any = None):
        import httpx

        self.label_studio_url = (label_studio_url or "").rstrip("/") or None
        self._api_key = api_key or None
        self.max_bytes = int(max_bytes)
        self._client = httpx.Client(timeout=timeout_s, follow_redirects=True, transport=transport,
                                    headers={"User-Agent": "annotator-ml-backend"})
        self._lock = threading.Lock()
        self._access: str | None = None  # the JWT access token of a personal access token

    def configure(self, hostname: str | None, access_token: str | None) -> None:
        """Fill in what the environment did not give, from Label Studio's ``/setup``."""
        with self._lock:
            if not self.label_studio_url and isinstance(hostname, str) and hostname.startswith(("http://", "https://")):
                self.label_studio_url = hostname.rstrip("/")
            if not self._api_key and isinstance(access_token, str) and access_token:
                self._api_key = access_token

    def close(self) -> None:
        self._client.close()

    # -- URLs
    def resolve(self, url: str, task_id: Any) -> tuple[str, bool]:
        """(absolute URL, whether Label Studio's token goes with it)."""
        scheme = urlsplit(url).scheme.lower()
        if scheme in CLOUD_SCHEMES:
            if task_id is None:
                raise ImageFetchError("unreadable", f"{url}: a cloud-storage URI needs the task's id to be resolved")
            fileuri = base64.urlsafe_b64encode(url.encode()).decode()
            return self._on_label_studio(f"/tasks/{int(task_id)}/resolve/?fileuri={fileuri}", url), True
        if scheme in ("http", "https"):
            return url, self._same_origin(url)
        if scheme:
            raise ImageFetchError("unreadable", f"{redact_text(url)}: expected a Label Studio path, a cloud-storage "
                                                f"URI or http(s)://, received the scheme {scheme!r}")
        if url.startswith("upload/"):  # an upload key as export snapshots hold it
            url = "/data/" + url
        if not url.startswith("/"):
            raise ImageFetchError("unreadable", f"{url!r}: expected a URL, received a relative path")
        return self._on_label_studio(url, url), True

    def _on_label_studio(self, path: str, shown: str) -> str:
        if not self.label_studio_url:
            raise ImageFetchError("unreadable", f"{shown}: a Label Studio URL, but LABEL_STUDIO_URL is not set "
                                                "(and Label Studio has not called /setup)")
        return urljoin(self.label_studio_url + "/", path.lstrip("/"))

    def _same_origin(self, url: str) -> bool:
        if not self.label_studio_url:
            return False
        a, b = urlsplit(url), urlsplit(self.label_studio_url)
        return (a.scheme, a.netloc) == (b.scheme, b.netloc)

    def _auth_header(self, refresh: bool = False) -> dict[str, str]:
        key = self._api_key
        if not key:
            return {}
        if not _is_jwt(key):
            return {"Authorization": f"Token {key}"}
        with self._lock:  # a personal access token is a refresh token: exchange it once
            if self._access is None or refresh:
                r = self._client.post(f"{self.label_studio_url}/api/token/refresh", json={"refresh": key})
                if r.status_code != 200:
                    raise ImageFetchError("unreadable", f"Label Studio refused the token (HTTP {r.status_code} "
                                                        "from /api/token/refresh)")
                self._access = r.json().get("access")
            return {"Authorization": f"Bearer {self._access}"}

    # -- reading
    def fetch(self, url: str, task_id: Any = None) -> bytes:
        """The bytes at ``url``; raises :class:`ImageFetchError` (reason ``missing``,
        ``unreadable`` or ``empty-file``) naming the URL (credentials removed)."""
        import httpx

        if not isinstance(url, str) or not url:
            raise ImageFetchError("missing", f"the task holds no image URL (received {url!r})")
        if url.startswith("data:"):
            return self._data_uri(url)
        target, with_token = self.resolve(url, task_id)
        shown = redact_text(url)
        try:
            status, content = self._get(target, with_token)
            if status == 401 and with_token and self._api_key and _is_jwt(self._api_key):
                status, content = self._get(target, with_token, refresh=True)
        except httpx.HTTPError as exc:
            raise ImageFetchError("unreadable", f"{shown}: {type(exc).__name__}: {redact_text(str(exc))}") from None
        if status == 404:
            raise ImageFetchError("missing", f"{shown}: HTTP 404 from {urlsplit(target).netloc}")
        if status != 200:
            hint = " (is LABEL_STUDIO_API_KEY the token of a user of this project?)" if status in (401, 403) else ""
            raise ImageFetchError("unreadable", f"{shown}: HTTP {status} from {urlsplit(target).netloc}{hint}")
        if not content:
            raise ImageFetchError("empty-file", f"{shown}: zero bytes")
        return content

    def _get(self, target: str, with_token: bool, refresh: bool = False) -> tuple[int, bytes]:
        """(HTTP status, body: read up to ``max_bytes`` when 200, else empty)."""
        headers = self._auth_header(refresh) if with_token else {}
        with self._client.stream("GET", target, headers=headers) as r:
            if r.status_code != 200:
                return r.status_code, b""
            declared = int(r.headers.get("content-length") or 0)
            if declared > self.max_bytes:
                raise ImageFetchError("unreadable", f"{redact_text(target)}: {declared} bytes, above the limit of "
                                                    f"{self.max_bytes} (--max-image-bytes)")
            chunks, total = [], 0
            for chunk in r.iter_bytes():
                total += len(chunk)
                if total > self.max_bytes:
                    raise ImageFetchError("unreadable", f"{redact_text(target)}: more than {self.max_bytes} bytes "
                                                        "(--max-image-bytes)")
                chunks.append(chunk)
            return 200, b"".join(chunks)

    def _data_uri(self, url: str) -> bytes:
        head, _, payload = url.partition(",")
        if ";base64" not in head:
            return unquote(payload).encode("latin-1", "replace")
        try:
            data = base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise ImageFetchError("corrupt", f"data URI: invalid base64 ({exc})") from None
        if len(data) > self.max_bytes:
            raise ImageFetchError("unreadable", f"data URI: {len(data)} bytes, above the limit of {self.max_bytes}")
        return data


# ----------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class BackendOptions:
    """How the backend answers.

    max_queue: requests allowed to wait for the engine while one runs; one more is
        answered HTTP 503.
    fetch_workers: images fetched in parallel.
    max_pixels: images with more pixels are refused before decoding (their task's error).
    export: the annotation filter and instance split of the ``labelstudio`` export
        (``min_area``, ``min_score``, ``classes``, ``instances``, ``instance_classes``).
    model_version: the predictions' ``model_version`` (None: ``annotator-<version>:<model>...``).
    """

    max_queue: int = 8
    fetch_workers: int = 8
    max_pixels: int = DEFAULT_MAX_PIXELS
    export: ExportOptions = field(default_factory=ExportOptions)
    model_version: str | None = None

    def __post_init__(self) -> None:
        if self.max_queue < 0:
            raise ValueError(f"max_queue: expected >= 0 requests, received {self.max_queue}")
        if self.fetch_workers < 1:
            raise ValueError(f"fetch_workers: expected >= 1, received {self.fetch_workers}")


class Busy(Exception):
    """More requests than the queue holds."""


@dataclass
class _Ref:
    """What :func:`annotator.records.ok_record` needs of an image (ImageRefLike)."""

    image_id: int
    file_name: str
    uri: str


class LabelStudioBackend:
    """The engine, loaded once, answering Label Studio's requests (framework-free; see
    :func:`create_app` for the HTTP layer).

    ``engine``: an :class:`annotator.engine.Engine` (anything with ``predict(images,
    names)`` and ``vocabulary.names``); ``metadata``: ``model``/``pretrained``/``saliency``/
    ``version`` for the default model version.
    """

    def __init__(self, engine: Any, fetcher: ImageFetcher, options: BackendOptions | None = None,
                 metadata: dict | None = None):
        self.engine = engine
        self.fetcher = fetcher
        self.options = options or BackendOptions()
        self.class_names: list[str] = list(engine.vocabulary.names)
        self.model_version = self.options.model_version or default_model_version(metadata or {})
        self._engine_lock = threading.Lock()
        self._admit_lock = threading.Lock()
        self._in_flight = 0
        self._pool = ThreadPoolExecutor(self.options.fetch_workers, thread_name_prefix="ls-fetch")
        self.counts = {"requests": 0, "tasks": 0, "task_errors": 0, "busy": 0}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.fetcher.close()

    # -- admission: one request at the engine, max_queue waiting
    def admit(self) -> None:
        with self._admit_lock:
            if self._in_flight > self.options.max_queue:
                self.counts["busy"] += 1
                raise Busy(f"busy: {self._in_flight - 1} requests are already waiting for the model "
                           f"(--max-queue {self.options.max_queue}); retry later")
            self._in_flight += 1

    def _count(self, **increments: int) -> None:
        with self._admit_lock:
            for key, n in increments.items():
                self.counts[key] += n

    def release(self) -> None:
        with self._admit_lock:
            self._in_flight -= 1

    # -- label config
    def schema(self, label_config: str) -> tuple[ProjectSchema, tuple[str, ...]]:
        """The project's schema and the classes we answer for it: ours that its
        ``<BrushLabels>`` lists (all of ours when it lists none), minus ``--classes``."""
        schema = parse_label_config(label_config)
        ours = [c for c in self.class_names[1:]]
        wanted = self.options.export.classes
        if wanted is not None:
            ours = [c for c in ours if c in wanted]
        if schema.label_values:
            listed = set(schema.label_values)
            ours = [c for c in ours if c in listed]
            if not ours:
                raise SchemaError(
                    f'label config: <BrushLabels name="{schema.from_name}"> lists none of the model\'s classes: '
                    f"expected some of {self.class_names[1:][:20]}, received {list(schema.label_values)[:20]}")
        return schema, tuple(ours)

    # -- predict
    def predict(self, tasks: list[dict], label_config: str) -> list[dict]:
        """One prediction (or error) per task, in order (see the module docstring)."""
        if not isinstance(tasks, list):
            raise ValueError(f"tasks: expected a list of tasks, received {type(tasks).__name__}")
        schema, classes = self.schema(label_config)
        self._count(requests=1, tasks=len(tasks))
        t0 = time.perf_counter()
        futures = [self._pool.submit(self._read, i, task, schema.data_key) for i, task in enumerate(tasks)]
        read = [f.result() for f in futures]
        answers: list[dict | None] = [None] * len(tasks)
        ok = []
        for i, item in enumerate(read):
            if isinstance(item, Exception):
                answers[i] = self._error(item)
            else:
                ok.append((i, item))
        t_read = time.perf_counter() - t0
        if ok:
            with self._engine_lock:
                preds = self._run_engine([im for _, (im, _) in ok], [ref.file_name for _, (_, ref) in ok])
            for (i, (_, ref)), pred in zip(ok, preds, strict=True):
                answers[i] = self._error(pred) if isinstance(pred, Exception) else self._prediction(ref, pred, schema,
                                                                                                  classes)
        self._count(task_errors=sum(1 for a in answers if a and "error" in a))
        log.info("predict: %d tasks (%d errors) in %.2f s (reading %.2f s)", len(tasks),
                 sum(1 for a in answers if a and "error" in a), time.perf_counter() - t0, t_read)
        return [a for a in answers if a is not None]

    def _read(self, index: int, task: Any, data_key: str):
        try:
            if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
                raise ImageFetchError("missing", f"task #{index}: expected a task with a 'data' object")
            url = task["data"].get(data_key)
            if url is None:
                raise ImageFetchError("missing", f"task {task.get('id', '#' + str(index))}: data has no "
                                                 f"{data_key!r} (the <Image value=\"${data_key}\"> of the config)")
            data = self.fetcher.fetch(url, task.get("id"))
            name = _display_name(url)
            image = decode_image(data, max_pixels=self.options.max_pixels, name=name)
            task_id = task.get("id")
            image_id = int(task_id) if isinstance(task_id, int) and task_id >= 1 else index + 1
            return image, _Ref(image_id, name, redact_text(url))
        except (ImageFetchError, ImageDecodeError) as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - one task's failure is its own answer
            log.warning("task #%d: %s", index, redact_text(f"{type(exc).__name__}: {exc}"))
            return ImageFetchError("unreadable", redact_text(f"{type(exc).__name__}: {exc}"))

    def _run_engine(self, images: list[np.ndarray], names: list[str]) -> list:
        """The batch through the engine; if it fails, each image alone (one bad image
        fails only its task)."""
        try:
            return list(self.engine.predict(images, names=names))
        except Exception as exc:  # noqa: BLE001
            if len(images) == 1:
                return [ImageFetchError("corrupt", f"the model failed on this image: {type(exc).__name__}: {exc}")]
            log.warning("batch of %d failed (%s: %s); one image at a time", len(images), type(exc).__name__, exc)
            out = []
            for im, name in zip(images, names, strict=True):
                out += self._run_engine([im], [name])
            return out

    def _prediction(self, ref: _Ref, pred: Any, schema: ProjectSchema, classes: tuple[str, ...]) -> dict:
        from annotator import records

        record = records.ok_record(ref, pred.labels_hw, pred.confidence_hw, self.class_names, pred.class_stats)
        opts = self.options.export
        keep = AnnotationFilter.from_options(self.class_names, ExportOptions(
            classes=classes, min_area=opts.min_area, min_score=opts.min_score))
        split = InstanceSplitter(instance_class_ids(self.class_names, opts, keep.class_ids))
        task = task_for_record(record, keep=keep, from_name=schema.from_name, to_name=schema.to_name,
                               image_url_prefix="", model_version=self.model_version, split=split)
        return task["predictions"][0]

    def _error(self, exc: Exception) -> dict:
        return {"model_version": self.model_version, "error": redact_text(str(exc))}


def _display_name(url: str) -> str:
    """A file name for the image (errors, ``precomputed:`` saliency): the local-files
    path, the upload's name, or the URL path's last part."""
    if "?d=" in url:
        return unquote(url.split("?d=", 1)[1]) or "image"
    if url.startswith("data:"):
        return "data-uri"
    path = unquote(urlsplit(url).path)
    return path.rsplit("/", 1)[-1] or path or "image"


# ----------------------------------------------------------------------------- HTTP


def create_app(backend: LabelStudioBackend):
    """The FastAPI application answering Label Studio (see the module docstring)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="annotator: Label Studio ML backend", version=backend.model_version,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.backend = backend

    def error(status: int, message: str, headers: dict | None = None):
        return JSONResponse({"status": "ERROR", "error": message}, status_code=status, headers=headers)

    async def body(request: Request) -> dict:
        try:
            doc = json.loads(await request.body() or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"expected a JSON body, received invalid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise ValueError(f"expected a JSON object, received {type(doc).__name__}")
        return doc

    @app.get("/")
    @app.get("/health")
    async def health():
        return {"status": "UP", "model_class": "annotator", "model_version": backend.model_version}

    @app.get("/metrics")
    async def metrics():
        return dict(backend.counts)

    @app.get("/versions")
    async def versions():
        return {"versions": [backend.model_version], "message": ""}

    @app.post("/setup")
    async def setup(request: Request):
        try:
            doc = await body(request)
            backend.schema(doc.get("schema") or "")
        except ValueError as exc:
            return error(400, str(exc))
        backend.fetcher.configure(doc.get("hostname"), doc.get("access_token"))
        return {"model_version": backend.model_version}

    @app.post("/predict")
    async def predict(request: Request):
        try:
            doc = await body(request)
            tasks = doc.get("tasks")
            if not isinstance(tasks, list):
                raise ValueError(f"tasks: expected a list of tasks, received {type(tasks).__name__}")
            label_config = doc.get("label_config") or ""
            backend.schema(label_config)  # refuse a bad config before queueing
        except ValueError as exc:
            return error(400, str(exc))
        try:
            backend.admit()
        except Busy as exc:
            return error(503, str(exc), {"Retry-After": "5"})
        try:
            results = await run_in_threadpool(backend.predict, tasks, label_config)
        except ValueError as exc:
            return error(400, str(exc))
        except Exception as exc:  # noqa: BLE001 - the server stays up; one line, no token
            log.exception("predict failed")
            return error(500, redact_text(f"{type(exc).__name__}: {exc}"))
        finally:
            backend.release()
        return {"results": results, "model_version": backend.model_version}

    @app.post("/webhook")
    @app.post("/train")
    async def webhook(request: Request):
        try:
            doc = await body(request)
        except ValueError:
            doc = {}
        event = doc.get("action")
        if event not in TRAIN_EVENTS:
            return {"status": "Unknown event"}
        return JSONResponse({"status": "ok", "result": None,
                             "detail": "this model does not learn from annotations"}, status_code=201)

    return app


def environment_credentials() -> tuple[str | None, str | None]:
    """``LABEL_STUDIO_URL`` (or ``LABEL_STUDIO_HOST``) and ``LABEL_STUDIO_API_KEY`` (or
    ``LABEL_STUDIO_ACCESS_TOKEN``), as the official ML backends read them."""
    url = os.environ.get("LABEL_STUDIO_URL") or os.environ.get("LABEL_STUDIO_HOST") or None
    key = os.environ.get("LABEL_STUDIO_API_KEY") or os.environ.get("LABEL_STUDIO_ACCESS_TOKEN") or None
    return url, key


def load_backend(engine_factory: Callable[[], tuple[Any, dict]], options: BackendOptions, *,
                 label_studio_url: str | None = None, api_key: str | None = None,
                 timeout_s: float = 60.0, max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> LabelStudioBackend:
    """The backend with its engine (``engine_factory() -> (engine, metadata)``) and a
    fetcher for ``label_studio_url``/``api_key`` (None: from the environment)."""
    env_url, env_key = environment_credentials()
    fetcher = ImageFetcher(label_studio_url or env_url, api_key or env_key, timeout_s=timeout_s,
                           max_bytes=max_image_bytes)
    engine, metadata = engine_factory()
    return LabelStudioBackend(engine, fetcher, options, metadata)

"""Pushing predictions into a running Label Studio (``python -m annotator.export OUTPUT
--format labelstudio --push URL --project ID|NAME``), through the SDK's API client.

- The token comes from ``--api-key`` or ``$LABEL_STUDIO_API_KEY`` (a legacy token or a
  personal access token); it is never printed, and any message that could carry it is
  scrubbed.
- The project is named by id or by title; ``--create-project`` creates a missing one
  with our labeling config. An existing project's config must hold a ``<BrushLabels
  name=--ls-from-name toName=--ls-to-name>`` with a ``<Label value=...>`` for every
  exported class, and an ``<Image name=--ls-to-name>`` (:func:`check_config`); else the
  push stops before any import, listing what is missing.
- A server error is one line: the HTTP status and the server's message.
- Idempotent: the project's tasks are listed first (paged) and a task whose
  ``data.image`` is already there is skipped, so a second push imports nothing.
- Tasks stream from the run's parts and are imported in pages of ``--page-size``
  (``POST /api/projects/{id}/import``), with a progress bar; memory holds one page and
  the set of image URLs already in the project.
"""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET
from typing import Any

from annotator.export.common import ExportError, ExportOptions, ExportResult, ExportRun
from annotator.export.formats import MissingExtraError, install_command
from annotator.export.labelstudio import (
    _brush,
    default_model_version,
    labeling_config,
    task_for_record,
)
from annotator.failpoints import failpoint

__all__ = ["API_KEY_ENV", "DEFAULT_PAGE_SIZE", "check_config", "push"]

API_KEY_ENV = "LABEL_STUDIO_API_KEY"
DEFAULT_PAGE_SIZE = 500


def _client(url: str, api_key: str):
    try:
        from label_studio_sdk import LabelStudio
    except ImportError as exc:  # the SDK is the labelstudio extra
        raise MissingExtraError(
            f"pushing to Label Studio needs its SDK ({exc}): {install_command('labelstudio')}") from exc
    return LabelStudio(base_url=url.rstrip("/"), api_key=api_key)


def _server_message(body: Any) -> str:
    """The server's own words from an error body: ``detail``, ``message`` or the
    validation errors of a JSON body, else the text (HTML pages reduced to a size)."""
    if isinstance(body, dict):
        for key in ("detail", "message", "error"):
            if body.get(key):
                return str(body[key])
        if body.get("validation_errors"):
            return json.dumps(body["validation_errors"], ensure_ascii=False)
        return json.dumps(body, ensure_ascii=False)
    text = str(body or "").strip()
    if text.lstrip().lower().startswith(("<!doctype", "<html")):
        return f"an HTML page of {len(text)} characters"
    return text


def _one_line(text: str, api_key: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    if api_key:
        text = text.replace(api_key, "<token>")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _call(what: str, fn, api_key: str, url: str):
    """``fn()``, with any failure turned into one ExportError naming ``what``: the HTTP
    status and the server's message (never the headers: they echo the token), or the
    connection error (token scrubbed)."""
    try:
        return fn()
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - connection refused, 401, 404, bad JSON: one line
        status = getattr(exc, "status_code", None)
        if isinstance(status, int):
            text = f"HTTP {status}: {_one_line(_server_message(getattr(exc, 'body', None)), api_key)}"
        else:
            text = _one_line(f"{type(exc).__name__}: {exc}", api_key)
        raise ExportError(f"Label Studio at {url}: {what} failed ({text})") from None


def check_config(label_config: str, from_name: str, to_name: str, classes: list[str]) -> list[str]:
    """What the project's labeling config lacks for our predictions, one phrase each
    (empty: nothing): a ``<BrushLabels name=from_name toName=to_name>``, an ``<Image
    name=to_name>``, and a ``<Label value=...>`` in that BrushLabels for every class."""
    try:
        root = ET.fromstring(label_config or "<View/>")
    except ET.ParseError as exc:
        return [f"a labeling config that parses as XML ({exc})"]
    named = {el.get("name"): el for el in root.iter() if el.get("name") is not None}
    missing = []
    brush = named.get(from_name)
    targets = [t.strip() for t in (brush.get("toName") or "").split(",")] if brush is not None else []
    if brush is None or brush.tag != "BrushLabels" or to_name not in targets:
        got = (f" (it has <{brush.tag} name=\"{from_name}\" toName=\"{brush.get('toName')}\">)"
               if brush is not None else "")
        missing.append(f"<BrushLabels name=\"{from_name}\" toName=\"{to_name}\">{got}")
    image = named.get(to_name)
    if image is None or image.tag != "Image":
        missing.append(f"<Image name=\"{to_name}\">")
    values = {el.get("value") for el in brush.iter("Label")} if brush is not None else set()
    absent = [c for c in classes if c not in values]
    if absent:
        shown = ", ".join(repr(c) for c in absent[:20]) + (" ..." if len(absent) > 20 else "")
        missing.append(f"{len(absent)} of the {len(classes)} exported classes as <Label value=...> in it: {shown}")
    return missing


def _project(client, project: str, create: bool, config: str, api_key: str, url: str) -> Any:
    if project.isdigit():
        return _call(f"reading project {project}", lambda: client.projects.get(id=int(project)), api_key, url)
    found = _call("listing projects", lambda: [p for p in client.projects.list(title=project, page_size=100)
                                             if p.title == project], api_key, url)
    if found:
        return found[0]
    if not create:
        names = _call("listing projects", lambda: [p.title for p in client.projects.list(page_size=20)], api_key, url)
        raise ExportError(f"--project {project!r}: expected a project of that title or id, got none (projects: "
                          f"{names[:10]}); pass --create-project to create it")
    return _call(f"creating project {project!r}",
                 lambda: client.projects.create(title=project, label_config=config), api_key, url)


def push(output: str, url: str, project: str, options: ExportOptions, *, api_key: str | None = None,
         create: bool = False, page_size: int = DEFAULT_PAGE_SIZE, progress: bool = True) -> ExportResult:
    """Import the run's tasks with predictions into ``project`` on the server at ``url``.

    Returns counts: ``tasks`` (read from the run), ``imported``, ``skipped_existing``
    (already in the project by image URL), ``pages``, ``annotations`` (the tasks' brush
    results, imported or not), ``imported_annotations``, ``skipped_error_rows``.

    Raises:
        ExportError: no token, no such project, a labeling config that lacks our tags
            or classes (checked before any import), an HTTP error (one line: the status
            and the server's message).
    """
    _brush()
    api_key = api_key or os.environ.get(API_KEY_ENV, "")
    if not api_key:
        raise ExportError(f"--push: expected a Label Studio token in ${API_KEY_ENV} or --api-key, got none")
    if page_size < 1:
        raise ExportError(f"--page-size: expected >= 1, got {page_size}")
    run = ExportRun.open(output, options)
    metadata, class_names, keep, split = run.metadata, run.class_names, run.keep, run.split
    config = labeling_config(class_names, options.ls_from_name, options.ls_to_name, keep.class_ids)
    client = _client(url, api_key)
    proj = _project(client, project, create, config, api_key, url)
    lacking = check_config(getattr(proj, "label_config", "") or "", options.ls_from_name, options.ls_to_name,
                           [class_names[c] for c in sorted(keep.class_ids)])
    if lacking:
        raise ExportError(f"project {proj.id} ({proj.title!r}): its labeling config lacks " + "; ".join(lacking)
                          + ". Nothing was imported: add them in the project's Settings > Labeling Interface (the "
                            "labelstudio export writes the whole config), choose the classes with --classes, or name "
                            "the tags with --ls-from-name/--ls-to-name")
    existing: set[str] = _call("listing the project's tasks", lambda: {
        (task.data or {}).get("image") for task in client.tasks.list(project=proj.id, fields="task_only",
                                                                     page_size=1000)} - {None}, api_key, url)
    model_version = options.model_version or default_model_version(metadata)
    counts = {"tasks": 0, "imported": 0, "skipped_existing": 0, "pages": 0, "annotations": 0,
              "imported_annotations": 0, "skipped_error_rows": 0}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="task", desc=f"pushing to project {proj.id}", file=sys.stderr)
    page: list[dict] = []

    def flush() -> None:
        if page:
            _call(f"importing {len(page)} tasks into project {proj.id}",
                  lambda: client.projects.import_tasks(id=proj.id, request=page), api_key, url)
            counts["imported"] += len(page)
            counts["pages"] += 1
            if bar is not None:
                bar.update(len(page))
            page.clear()
            failpoint("push.page")  # ANNOTATOR_FAILPOINTS: the interruption test signals here

    try:
        for record in run.records():
            if record.status != "ok":
                counts["skipped_error_rows"] += 1
                continue
            task = task_for_record(record, keep=keep, from_name=options.ls_from_name, to_name=options.ls_to_name,
                                   image_url_prefix=options.image_url_prefix, model_version=model_version,
                                   split=split)
            counts["tasks"] += 1
            counts["annotations"] += len(task["predictions"][0]["result"])  # the run's, imported or not
            if task["data"]["image"] in existing:
                counts["skipped_existing"] += 1
                continue
            existing.add(task["data"]["image"])
            counts["imported_annotations"] += len(task["predictions"][0]["result"])
            page.append(task)
            if len(page) >= page_size:
                flush()
        flush()
    finally:
        if bar is not None:
            bar.close()
    counts.update(run.counts())
    counts["project"] = int(proj.id)
    return ExportResult(format="labelstudio", paths=[f"{url.rstrip('/')}/projects/{proj.id}"], counts=counts,
                        files_written=0)

"""Pushing predictions into a running Label Studio (``python -m annotator.export OUTPUT
--format labelstudio --push URL --project ID|NAME``), through the SDK's API client.

- The token comes from ``--api-key`` or ``$LABEL_STUDIO_API_KEY`` (a legacy token or a
  personal access token); it is never printed, and any message that could carry it is
  scrubbed.
- The project is named by id or by title; ``--create-project`` creates a missing one
  with our labeling config. An existing project must have the config's ``<BrushLabels>``
  and ``<Image>`` names (``--ls-from-name``/``--ls-to-name``), else nothing is imported.
- Idempotent: the project's tasks are listed first (paged) and a task whose
  ``data.image`` is already there is skipped, so a second push imports nothing.
- Tasks stream from the run's parts and are imported in pages of ``--page-size``
  (``POST /api/projects/{id}/import``), with a progress bar; memory holds one page and
  the set of image URLs already in the project.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from annotator.export.common import ExportError, ExportOptions, ExportResult, ExportRun
from annotator.export.labelstudio import (
    _brush,
    default_model_version,
    labeling_config,
    task_for_record,
)

__all__ = ["API_KEY_ENV", "DEFAULT_PAGE_SIZE", "push"]

API_KEY_ENV = "LABEL_STUDIO_API_KEY"
DEFAULT_PAGE_SIZE = 500


def _client(url: str, api_key: str):
    try:
        from label_studio_sdk import LabelStudio
    except ImportError as exc:  # the SDK is the labelstudio extra
        raise ImportError(f"pushing to Label Studio needs its SDK: pip install 'annotator[labelstudio]' ({exc})") from exc
    return LabelStudio(base_url=url.rstrip("/"), api_key=api_key)


def _call(what: str, fn, api_key: str, url: str):
    """``fn()``, with any failure turned into one ExportError naming ``what`` (token scrubbed)."""
    try:
        return fn()
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - connection refused, 401, 404, bad JSON: one line
        text = f"{type(exc).__name__}: {exc}".replace(api_key, "<token>")[:500]
        raise ExportError(f"Label Studio at {url}: {what} failed ({text})") from None


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
    (already in the project by image URL), ``pages``, ``annotations``, ``skipped_error_rows``.
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
    label_config = getattr(proj, "label_config", "") or ""
    for tag, name in (("BrushLabels", options.ls_from_name), ("Image", options.ls_to_name)):
        if f'name="{name}"' not in label_config:
            raise ExportError(f"project {proj.id} ({proj.title!r}): expected a <{tag} name=\"{name}\"> in its "
                              "labeling config, got none; pass --ls-from-name/--ls-to-name, or create the project "
                              "with --create-project")
    existing: set[str] = _call("listing the project's tasks", lambda: {
        (task.data or {}).get("image") for task in client.tasks.list(project=proj.id, fields="task_only",
                                                                     page_size=1000)} - {None}, api_key, url)
    model_version = options.model_version or default_model_version(metadata)
    counts = {"tasks": 0, "imported": 0, "skipped_existing": 0, "pages": 0, "annotations": 0,
              "skipped_error_rows": 0}
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

    try:
        for record in run.records():
            if record.status != "ok":
                counts["skipped_error_rows"] += 1
                continue
            task = task_for_record(record, keep=keep, from_name=options.ls_from_name, to_name=options.ls_to_name,
                                   image_url_prefix=options.image_url_prefix, model_version=model_version,
                                   split=split)
            counts["tasks"] += 1
            if task["data"]["image"] in existing:
                counts["skipped_existing"] += 1
                continue
            existing.add(task["data"]["image"])
            counts["annotations"] += len(task["predictions"][0]["result"])
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

"""Pushing to a REAL Label Studio server, started on loopback with a throwaway data
folder and user. The server is the ``label-studio`` package; it pins its own versions of
many libraries, so it lives in a venv of its own: ``$LABEL_STUDIO_BIN``, else
``.label-studio-venv/bin/label-studio`` at the repository root (``.ci/run`` creates it),
else ``label-studio`` on the PATH. Skipped, with the reason, when none is found or the
server does not start."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from annotator.export.__main__ import main
from tests.export.conftest import build_toy_run_output

pytestmark = pytest.mark.clients

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 240


def _server_binary() -> str | None:
    for candidate in (os.environ.get("LABEL_STUDIO_BIN"), str(REPO / ".label-studio-venv" / "bin" / "label-studio"),
                      shutil.which("label-studio")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """(url, token) of a fresh server; stopped at the end of the module."""
    binary = _server_binary()
    if binary is None:
        pytest.skip("no label-studio server installed (set LABEL_STUDIO_BIN, or run .ci/run, which installs it in "
                    ".label-studio-venv)")
    data = tmp_path_factory.mktemp("label-studio-data")
    port, token = _free_port(), secrets.token_hex(20)
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data), "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
           "LABEL_STUDIO_USERNAME": "annotator@example.com", "LABEL_STUDIO_PASSWORD": "annotator-test-pass",
           "LABEL_STUDIO_USER_TOKEN": token, "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
           "DJANGO_DB": "sqlite", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": ""}
    log = open(data / "server.log", "wb")
    proc = subprocess.Popen([binary, "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port),
                             "--data-dir", str(data), "--username", "annotator@example.com",
                             "--password", "annotator-test-pass", "--user-token", token],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=data)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.skip(f"label-studio exited ({proc.returncode}): {(data / 'server.log').read_text()[-800:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.skip(f"label-studio did not answer in {START_TIMEOUT_S} s: "
                            f"{(data / 'server.log').read_text()[-800:]}")
            time.sleep(1)
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _as_dict(obj) -> dict:
    """An SDK model (pydantic) or a plain dict, as a dict."""
    return obj if isinstance(obj, dict) else obj.model_dump() if hasattr(obj, "model_dump") else obj.dict()


def _tasks(url: str, token: str, project_id: int) -> list:
    from label_studio_sdk import LabelStudio

    client = LabelStudio(base_url=url, api_key=token)
    return list(client.tasks.list(project=project_id, fields="all", page_size=100))


def test_push_imports_predictions_once_and_they_decode_to_our_masks(label_studio, tmp_path, capsys, monkeypatch):
    from label_studio_sdk.converter.brush import decode_rle

    url, token = label_studio
    output, expected, class_names = build_toy_run_output(tmp_path)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", token)
    argv = [output, "--format", "labelstudio", "--push", url, "--project", "pre-labels", "--create-project",
            "--page-size", "4", "--image-url-prefix", "/data/local-files/?d=images/"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert token not in printed.out + printed.err
    assert "imported=6" in printed.out and "pages=2" in printed.out
    project_id = int(printed.out.split("project=")[1].split(")")[0].split(",")[0])
    tasks = _tasks(url, token, project_id)
    assert len(tasks) == len(expected)
    for task in tasks:
        name = task.data["image"].split("images/", 1)[1]
        labels = expected[name]
        h, w = labels.shape
        (prediction,) = task.predictions
        got = np.zeros_like(labels)
        for r in _as_dict(prediction)["result"]:
            r = _as_dict(r)
            mask = np.reshape(decode_rle(r["value"]["rle"]), (h, w, 4))[:, :, 3] > 127
            got[mask] = class_names.index(r["value"]["brushlabels"][0])
        assert (got == labels).all(), name

    # again: idempotent, nothing imported, nothing duplicated, and no false "no annotations"
    assert main(argv) == 0
    captured = capsys.readouterr()
    again = captured.out
    assert "imported=0" in again and "skipped_existing=6" in again
    assert "warning" not in captured.err, captured.err
    assert len(_tasks(url, token, project_id)) == len(expected)


def test_push_errors_are_one_line_without_the_token(label_studio, tmp_path, capsys, monkeypatch):
    url, token = label_studio
    output, _, _ = build_toy_run_output(tmp_path)
    assert main([output, "--format", "labelstudio", "--push", url, "--project", "nonesuch",
                 "--api-key", token]) == 2
    err = capsys.readouterr().err
    assert "'nonesuch'" in err and "--create-project" in err and token not in err
    assert main([output, "--format", "labelstudio", "--push", url, "--project", "x", "--api-key", "wrong"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "failed (HTTP 401: " in err, err
    assert "headers" not in err and "wrong" not in err
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    assert main([output, "--format", "labelstudio", "--push", url, "--project", "x"]) == 2
    assert "LABEL_STUDIO_API_KEY" in capsys.readouterr().err


def test_push_needs_the_labelstudio_format(tmp_path, capsys):
    output, _, _ = build_toy_run_output(tmp_path)
    assert main([output, "--format", "coco", "--push", "http://127.0.0.1:9", "--project", "x"]) == 2
    assert "--push is not honoured by --format coco; formats that take it: labelstudio" in capsys.readouterr().err


def _project_with_config(url: str, token: str, title: str, config: str) -> int:
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=url, api_key=token).projects.create(title=title, label_config=config).id


@pytest.mark.parametrize("config,lacking", [
    # the case: a project whose labels are cat, dog
    ('<View><Image name="image" value="$image"/><BrushLabels name="label" toName="image">'
     '<Label value="cat"/><Label value="dog"/></BrushLabels></View>', ["exported classes as <Label value=...>"]),
    ('<View><Image name="img" value="$image"/><RectangleLabels name="label" toName="img">'
     '<Label value="cat"/></RectangleLabels></View>',
     ['<BrushLabels name="label" toName="image">', '<Image name="image">']),
], ids=["missing-classes", "other-tags"])
def test_push_checks_the_projects_config_before_it_writes(config, lacking, label_studio, tmp_path, capsys,
                                                         monkeypatch):
    url, token = label_studio
    output, _, class_names = build_toy_run_output(tmp_path)
    title = f"cfg-{secrets.token_hex(4)}"
    project_id = _project_with_config(url, token, title, config)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", token)
    assert main([output, "--format", "labelstudio", "--push", url, "--project", str(project_id)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Nothing was imported" in err[0], err
    for phrase in lacking:
        assert phrase in err[0], err
    if "exported classes" in lacking[0]:  # the run's classes (red, green, ...): none is cat or dog
        assert f"{len(class_names) - 1} of the {len(class_names) - 1} exported classes" in err[0]
        for name in class_names[1:]:
            assert repr(name) in err[0], name
    assert _tasks(url, token, project_id) == []


def test_a_push_interrupted_between_pages_exits_cleanly_and_pushing_again_imports_the_rest(label_studio, tmp_path):
    """SIGINT after the first page of a push: exit 130 with one line (the imported tasks
    stay), no traceback; the same command again imports the rest, nothing twice."""
    url, token = label_studio
    output, expected, _ = build_toy_run_output(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "ANNOTATOR_FAILPOINTS"}
    env.update(LABEL_STUDIO_API_KEY=token, ANNOTATOR_FAILPOINTS="push.page=SIGINT",
               ANNOTATOR_FAILPOINTS_DIR=str(tmp_path / "failpoints"))
    argv = [sys.executable, "-m", "annotator.export", output, "--format", "labelstudio", "--push", url,
            "--project", "interrupted-push", "--create-project", "--page-size", "2"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 130, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "interrupted by SIGINT" in errors[0] and "pushing again" in errors[0], done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    assert token not in done.stdout + done.stderr
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)  # the point fired once
    assert again.returncode == 0, again.stderr[-3000:]
    assert "imported=4" in again.stdout and "skipped_existing=2" in again.stdout, again.stdout
    project_id = int(again.stdout.split("project=")[1].split(")")[0].split(",")[0])
    assert len(_tasks(url, token, project_id)) == len(expected) == 6

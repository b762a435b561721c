"""``python -m annotator.export``: an OSError's and a missing package's error lines pass
through the one redaction (issue 21, trust fixes): a secret given in --storage-options,
quoted by a client in its message, is masked in the printed line."""

from __future__ import annotations

import errno
import json

import pytest

SECRET = "EXPORTSECRETMARKER"


def _raiser(exc):
    def raise_it(*args, **kwargs):
        raise exc
    return raise_it


@pytest.mark.parametrize("exc", [
    OSError(errno.EIO, f"PUT s3://bucket/x?Signature={SECRET} failed"),
    OSError(errno.ENOSPC, f"No space left on device writing /mnt/{SECRET}/coco.json"),
    ModuleNotFoundError(f"No module named 'fiftyone' (searched /opt/{SECRET}/site-packages)", name="fiftyone"),
], ids=["OSError-EIO", "OSError-ENOSPC", "ImportError"])
def test_an_export_error_line_masks_the_secrets_it_quotes(exc, tmp_path, capsys, monkeypatch):
    import annotator.export.__main__ as cli

    monkeypatch.setattr(cli, "export", _raiser(exc))
    rc = cli.main([str(tmp_path), "--format", "coco", "--storage-options", json.dumps({"secret": SECRET})])
    captured = capsys.readouterr()
    assert rc == 2, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert ("the coco export" if isinstance(exc, OSError) else "install the extra") in lines[0], lines[0]
    assert SECRET not in captured.err + captured.out, captured.err

from __future__ import annotations

import base64
import io
import os
import pickle
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
from botocore.exceptions import ClientError, ReadTimeoutError
from fsspec.spec import AbstractFileSystem
from PIL import Image

from annotator.inputs import hf
from annotator.inputs.decode import ImageDecodeError, decode_image
from annotator.inputs.hf import HFSource, list_hf_dataset
from annotator.inputs.listing import (
    IMAGE_EXTENSIONS,
    ImageRef,
    SourceError,
    list_images,
    read_image_bytes,
    redact_uri,
    resolve_source,
    split_credentials,
)
from annotator.storage.retry import is_transient_storage_error as is_transient_error
from tests.badinputs import make_bad_inputs


def _png(color=(255, 0, 0), size_wh=(4, 3), fmt="PNG", mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size_wh, color).save(buf, format=fmt)
    return buf.getvalue()


# ---------------------------------------------------------------- ImageRef


def test_imageref_validates():
    assert ImageRef(1, "a.jpg", "/x/a.jpg").index is None
    with pytest.raises(ValueError, match="image_id"):
        ImageRef(0, "a.jpg", "/x/a.jpg")
    with pytest.raises(ValueError, match="file_name"):
        ImageRef(1, "", "/x/a.jpg")


# ---------------------------------------------------------------- local listing


@pytest.fixture()
def nested(tmp_path: Path) -> Path:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "looks_like.jpg").mkdir()  # a directory: not listed, its content is
    (tmp_path / "b.jpg").write_bytes(_png(fmt="JPEG"))
    (tmp_path / "a.PNG").write_bytes(_png())
    (tmp_path / "sub" / "c.jpeg").write_bytes(_png(fmt="JPEG"))
    (tmp_path / "sub" / "deeper" / "d.tiff").write_bytes(_png(fmt="TIFF"))
    (tmp_path / "looks_like.jpg" / "e.webp").write_bytes(b"not really")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "sub" / "data.json").write_text("{}")
    os.symlink("gone.png", tmp_path / "sub" / "broken.png")
    return tmp_path


def test_list_nested_directory(nested: Path):
    refs = list_images(str(nested))
    assert [r.file_name for r in refs] == [
        "a.PNG", "b.jpg", "looks_like.jpg/e.webp", "sub/broken.png", "sub/c.jpeg", "sub/deeper/d.tiff",
    ]
    assert [r.image_id for r in refs] == [1, 2, 3, 4, 5, 6]
    assert all(r.index is None for r in refs)
    assert refs[4].uri == str(nested / "sub" / "c.jpeg")
    assert read_image_bytes(refs[4]) == (nested / "sub" / "c.jpeg").read_bytes()
    # Deterministic: the same listing again, and through a file:// URL.
    assert list_images(str(nested)) == refs
    assert [r.file_name for r in list_images(f"file://{nested}")] == [r.file_name for r in refs]


def test_list_glob_root_is_non_magic_prefix(nested: Path):
    refs = list_images(f"{nested}/**/*.jp*g")
    assert [r.file_name for r in refs] == ["b.jpg", "sub/c.jpeg"]
    refs = list_images(f"{nested}/sub/*.jpeg")
    assert [(r.image_id, r.file_name) for r in refs] == [(1, "c.jpeg")]
    # A directory matching the glob is not an image.
    assert [r.file_name for r in list_images(f"{nested}/*.jpg")] == ["b.jpg"]


def test_list_single_file(nested: Path):
    refs = list_images(str(nested / "sub" / "c.jpeg"))
    assert [(r.image_id, r.file_name, r.uri) for r in refs] == [(1, "c.jpeg", str(nested / "sub" / "c.jpeg"))]


def test_bad_inputs_all_listed(tmp_path: Path):
    expected = make_bad_inputs(tmp_path)
    names = [r.file_name for r in list_images(str(tmp_path))]
    assert names == sorted(expected)


def test_no_images_is_a_clear_error(tmp_path: Path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(SourceError) as info:
        list_images(str(tmp_path))
    msg = str(info.value)
    assert str(tmp_path) in msg and ".jpg" in msg and "a.txt" in msg
    assert isinstance(info.value, ValueError)
    with pytest.raises(SourceError, match="does not exist"):
        list_images(str(tmp_path / "nope"))
    with pytest.raises(SourceError, match="no images"):
        list_images(f"{tmp_path}/*.png")


@pytest.mark.parametrize("source", [
    "http://127.0.0.1:9/images/",  # connection refused (port 9, discard: nothing listens)
    "http://user:pw@127.0.0.1:9/images/*.jpg",  # a glob, credentials in the URL
    "https://127.0.0.1:9/one.jpg?X-Amz-Signature=s3cr3t",  # one signed file: '?' starts the query
])
def test_unreachable_url_names_the_url(source: str):
    """Offline, the message names the source (redacted), not only the client's host."""
    with pytest.raises(SourceError) as info:
        list_images(source)
    msg = str(info.value)
    assert redact_uri(source) in msg and "cannot be listed" in msg and "127.0.0.1:9" in msg
    assert "pw" not in msg.replace("pwd", "") and "s3cr3t" not in msg
    assert "check the URL and the network" in msg


def test_unresolvable_host_names_the_url():
    with pytest.raises(SourceError,
                       match=r"source 'https://images\.example\.invalid/set/' cannot be listed: .*network"):
        list_images("https://images.example.invalid/set/")


def test_extensions_constant():
    assert IMAGE_EXTENSIONS == (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


# ---------------------------------------------------------------- fsspec memory://


@pytest.fixture()
def memdir():
    fs = fsspec.filesystem("memory")
    root = f"/src-{uuid.uuid4().hex}"
    fs.pipe({f"{root}/z.png": _png((0, 0, 255)), f"{root}/a/b.JPG": _png(fmt="JPEG"),
             f"{root}/a/readme.md": b"# no"})
    yield root
    fs.rm(root, recursive=True)


def test_memory_directory_and_glob(memdir: str):
    refs = list_images(f"memory://{memdir}")
    assert [(r.image_id, r.file_name) for r in refs] == [(1, "a/b.JPG"), (2, "z.png")]
    assert refs[1].uri == f"memory://{memdir}/z.png"
    rgb = decode_image(read_image_bytes(refs[1]))
    assert rgb.shape == (3, 4, 3) and tuple(rgb[0, 0]) == (0, 0, 255)
    assert [r.file_name for r in list_images(f"memory://{memdir}/**/*.png")] == ["z.png"]


def test_memory_missing_file_is_missing(memdir: str):
    with pytest.raises(ImageDecodeError) as info:
        read_image_bytes(f"memory://{memdir}/nope.png", retries=0)
    assert info.value.reason == "missing"


# ---------------------------------------------------------------- credentials


@pytest.mark.parametrize(
    ("uri", "redacted"),
    [
        ("s3://AKIAXX:s3cr3t@bucket/imgs/a.jpg", "s3://bucket/imgs/a.jpg"),
        ("s3://AKIAXX:s3c/r3t+x@bucket/imgs/a.jpg", "s3://bucket/imgs/a.jpg"),  # secret with '/'
        ("https://user:pa%40ss@example.com/a.jpg", "https://example.com/a.jpg"),
        ("https://example.com/a.jpg?X-Amz-Signature=abc123&w=1", "https://example.com/a.jpg?X-Amz-Signature=REDACTED&w=1"),
        ("https://h.blob.core.windows.net/c/a.jpg?sv=2020&sig=SeCrEt", "https://h.blob.core.windows.net/c/a.jpg?sv=2020&sig=REDACTED"),
        ("simplecache::s3://k:s@bucket/a.jpg", "simplecache::s3://bucket/a.jpg"),
        ("s3://bucket/user@example.com/a.jpg", "s3://bucket/user@example.com/a.jpg"),
        ("http://host:8080/p/a@b.jpg", "http://host:8080/p/a@b.jpg"),
        ("/data/me@home/a.jpg", "/data/me@home/a.jpg"),
        ("gs://bucket/a.jpg", "gs://bucket/a.jpg"),
    ],
)
def test_redact_uri(uri, redacted):
    assert redact_uri(uri) == redacted


def test_split_credentials_into_storage_options():
    assert split_credentials("s3://K:S/x@b/a.jpg") == ("s3://b/a.jpg", {"key": "K", "secret": "S/x"})
    assert split_credentials("ftp://u:p@host/a.jpg") == ("ftp://host/a.jpg", {"username": "u", "password": "p"})
    clean, opts = split_credentials("https://u:p%40ss@host/a.jpg")
    assert clean == "https://host/a.jpg"
    header = opts["client_kwargs"]["headers"]["Authorization"]
    assert header.startswith("Basic ") and base64.b64decode(header[6:]) == b"u:p@ss"
    assert split_credentials("/local/a.jpg") == ("/local/a.jpg", {})
    # Explicit storage options win over the URL's.
    merged = resolve_source("s3://K:S@b/x", {"secret": "T", "anon": False})[1]
    assert merged == {"key": "K", "secret": "T", "anon": False}


def test_credentials_never_in_refs_or_errors(memdir: str):
    refs = list_images(f"memory://reader:TopSecret@{memdir.lstrip('/')}")
    assert refs and all("TopSecret" not in r.uri and "reader" not in r.uri for r in refs)
    with pytest.raises(SourceError) as info:
        list_images("memory://reader:TopSecret@does-not-exist-anywhere")
    assert "TopSecret" not in str(info.value)
    with pytest.raises(ImageDecodeError) as info:
        read_image_bytes(f"memory://reader:TopSecret@{memdir.lstrip('/')}/nope.png", retries=0)
    assert "TopSecret" not in str(info.value)


# ---------------------------------------------------------------- read errors and retries


class FlakyFS(AbstractFileSystem):
    """Serves b"IMAGE" after failing ``fail_times`` times with ``error``."""

    protocol = "flaky"
    cachable = False
    calls = 0
    fail_times = 0
    error: BaseException = OSError("503 Service Unavailable")

    def _open(self, path, mode="rb", **kwargs):
        type(self).calls += 1
        if type(self).calls <= type(self).fail_times:
            raise type(self).error
        return io.BytesIO(b"IMAGE")


@pytest.fixture()
def flaky():
    fsspec.register_implementation("flaky", FlakyFS, clobber=True)
    FlakyFS.calls = 0
    yield FlakyFS


def _client_error(code: str, status: int) -> ClientError:
    """A real botocore ClientError (botocore comes with moto, the test extra)."""
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


def test_transient_error_retried_then_succeeds(flaky):
    flaky.fail_times = 2
    assert read_image_bytes("flaky://bucket/a.jpg", retries=3, backoff_s=0) == b"IMAGE"
    assert flaky.calls == 3


def test_transient_error_that_persists_is_reported(flaky):
    flaky.fail_times = 100
    with pytest.raises(ImageDecodeError) as info:
        read_image_bytes("flaky://bucket/a.jpg", retries=3, backoff_s=0)
    assert flaky.calls == 4
    assert info.value.reason == "unreadable"
    assert "gave up after 4 attempts" in info.value.detail and "503" in info.value.detail


@pytest.mark.parametrize(
    ("error", "reason", "calls"),
    [
        (FileNotFoundError("no such key"), "missing", 1),
        (PermissionError("denied"), "unreadable", 1),
        (ReadTimeoutError(endpoint_url="http://bucket.example"), "unreadable", 3),
        (ConnectionResetError("reset by peer"), "unreadable", 3),
    ],
)
def test_read_error_classes(flaky, error, reason, calls):
    flaky.fail_times, flaky.error = 100, error
    with pytest.raises(ImageDecodeError) as info:
        read_image_bytes("flaky://bucket/a.jpg", retries=2, backoff_s=0)
    assert (info.value.reason, flaky.calls) == (reason, calls)
    flaky.error = OSError("503 Service Unavailable")


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (TimeoutError(), True),
        (ConnectionError(), True),
        (OSError("SlowDown: please reduce your request rate"), True),
        (OSError(5, "Input/output error"), True),
        (_client_error("ServiceUnavailable", 503), True),
        (_client_error("Throttling", 400), True),
        (FileNotFoundError("x"), False),
        (PermissionError("x"), False),
        (IsADirectoryError("x"), False),
        (OSError(40, "Too many levels of symbolic links"), False),
        (_client_error("AccessDenied", 403), False),
        (RuntimeError("An error occurred (503) when calling GetObject"), False),  # words decide nothing
        (ValueError("bad argument"), False),
    ],
)
def test_is_transient_error(error, transient):
    assert is_transient_error(error) is transient


def test_local_read_errors(tmp_path: Path):
    expected = make_bad_inputs(tmp_path)
    with pytest.raises(ImageDecodeError) as info:
        read_image_bytes(str(tmp_path / "broken_symlink.jpg"), retries=0)
    assert info.value.reason == "missing" and "broken symlink" in info.value.detail
    with pytest.raises(ImageDecodeError) as info:
        read_image_bytes(str(tmp_path / "unreadable.jpg"), retries=0)
    assert info.value.reason == expected["unreadable.jpg"][1] == "unreadable"
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(ImageDecodeError) as info:
        read_image_bytes(str(tmp_path / "folder.jpg"), retries=0)
    assert info.value.reason == "unreadable"


def test_permission_denied_is_unreadable(tmp_path: Path):
    if os.geteuid() == 0:
        pytest.skip("root reads mode-000 files; covered by the ELOOP case and the fake filesystem")
    path = tmp_path / "locked.jpg"
    path.write_bytes(_png())
    path.chmod(0)
    with pytest.raises(ImageDecodeError) as info:
        read_image_bytes(str(path), retries=0)
    assert info.value.reason == "unreadable"


def test_hf_uri_needs_hfsource():
    with pytest.raises(ValueError, match="read_rows"):
        read_image_bytes(ImageRef(1, "00000000.png", "hf://x/train/0", index=0))


# ---------------------------------------------------------------- Hugging Face datasets

datasets = pytest.importorskip("datasets")


def _label_png(value: int) -> bytes:
    img = Image.new("P", (4, 3), 0)
    img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
    img.paste(value, (0, 0, 2, 3))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


IMAGES = [_png(fmt="JPEG"), _png((0, 255, 0)), None, _png(fmt="GIF", mode="L", color=9)]


def _hf_dataset():
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.Image(), "caption": datasets.Value("string")}
    )
    return datasets.Dataset.from_dict(
        {
            "image": [None if b is None else {"bytes": b, "path": None} for b in IMAGES],
            "label": [{"bytes": _label_png(i % 3), "path": None} for i in range(len(IMAGES))],
            "caption": [f"row {i}" for i in range(len(IMAGES))],
        },
        features=features,
    )


@pytest.fixture(autouse=True)
def _hf_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "hf-cache"))


def _saved(ds, path: Path) -> str:
    ds.save_to_disk(str(path))
    return str(path)


def _check_source(src: HFSource, name: str):
    assert len(src) == 4 and src.image_column == "image" and src.split == "train"
    refs = src.refs()
    assert [r.file_name for r in refs] == ["00000000.jpg", "00000001.png", "00000002.png", "00000003.gif"]
    assert [(r.image_id, r.index) for r in refs] == [(1, 0), (2, 1), (3, 2), (4, 3)]
    assert refs[2].uri == f"hf://{name}/train/2"
    rows = src.read_rows(0, 4)
    assert rows[0] == IMAGES[0] and rows[1] == IMAGES[1] and rows[3] == IMAGES[3]
    assert isinstance(rows[2], ImageDecodeError) and rows[2].reason == "missing"
    assert src.read_rows(1, 2) == [IMAGES[1]]
    assert len(src.read_rows(3, 100)) == 1  # clipped to the length
    labels = src.read_labels(0, 3, "label")
    assert labels[1].dtype == np.uint8 and labels[1].shape == (3, 4)
    np.testing.assert_array_equal(labels[1][:, :2], 1)
    np.testing.assert_array_equal(labels[1][:, 2:], 0)
    # A worker gets a pickled source without the open dataset and re-opens it.
    clone = pickle.loads(pickle.dumps(src))
    assert clone._dataset is None
    assert clone.read_rows(0, 2) == [IMAGES[0], IMAGES[1]]


def test_hf_save_to_disk(tmp_path: Path):
    path = tmp_path / "disk"
    _hf_dataset().save_to_disk(str(path))
    src = list_hf_dataset(str(path))
    assert src.kind == "disk"
    _check_source(src, str(path))


def test_hf_dataset_dict_needs_split(tmp_path: Path):
    path = tmp_path / "dd"
    datasets.DatasetDict({"train": _hf_dataset(), "test": _hf_dataset().select([0, 1])}).save_to_disk(str(path))
    with pytest.raises(SourceError, match="several splits"):
        list_hf_dataset(str(path))
    with pytest.raises(SourceError, match="no split 'val'"):
        list_hf_dataset(str(path), split="val")
    src = list_hf_dataset(str(path), split="test")
    assert (src.split, len(src)) == ("test", 2)
    assert src.refs()[1].uri == f"hf://{path}/test/1"


def test_hf_parquet_folder(tmp_path: Path):
    folder = tmp_path / "pq"
    folder.mkdir()
    _hf_dataset().to_parquet(str(folder / "train-00000-of-00001.parquet"))
    src = list_hf_dataset(str(folder))
    assert src.kind == "parquet"
    _check_source(src, str(folder))


def test_hf_imagefolder(tmp_path: Path):
    folder = tmp_path / "imf"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(IMAGES[0])
    (folder / "b.png").write_bytes(IMAGES[1])
    src = list_hf_dataset(str(folder))
    assert (src.kind, len(src)) == ("imagefolder", 2)
    assert sorted(r.file_name for r in src.refs()) == ["00000000.jpg", "00000001.png"]
    assert sorted(src.read_rows(0, 2)) == sorted([IMAGES[0], IMAGES[1]])


def test_hf_image_column_detection(tmp_path: Path):
    # "image" and "label" are both Image columns: the one named "image" wins.
    assert list_hf_dataset(_saved(_hf_dataset(), tmp_path / "seg")).image_column == "image"
    two = _hf_dataset().rename_column("image", "photo")
    two.save_to_disk(str(tmp_path / "two"))
    with pytest.raises(SourceError, match="exactly one column") as info:
        list_hf_dataset(str(tmp_path / "two"), image_column=None)
    assert "caption" in str(info.value) and "photo" in str(info.value)
    assert list_hf_dataset(str(tmp_path / "two"), image_column="label").image_column == "label"
    with pytest.raises(SourceError, match="'pixels' not in"):
        list_hf_dataset(str(tmp_path / "two"), image_column="pixels")
    text = datasets.Dataset.from_dict({"caption": ["a"]})
    text.save_to_disk(str(tmp_path / "text"))
    with pytest.raises(SourceError, match="found 0"):
        list_hf_dataset(str(tmp_path / "text"))


def test_hf_missing_local_path(tmp_path: Path):
    with pytest.raises(SourceError, match="does not exist"):
        list_hf_dataset(str(tmp_path / "nope"))


def test_hf_hub_streaming(monkeypatch):
    ds = _hf_dataset().remove_columns(["label"])
    calls = []

    def fake_load_dataset(name, split=None, streaming=False, **kwargs):
        calls.append((name, split, streaming))
        return ds.to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(hf, "hub_unavailable", lambda: None)  # no network here: the Hub "answers"
    src = list_hf_dataset("someone/photos", split="train")
    assert (src.kind, src.num_rows) == ("hub", None)
    assert calls == [("someone/photos", "train", True)]
    with pytest.raises(SourceError, match="unknown without iterating"):
        len(src)
    refs = src.refs()
    assert len(src) == 4 and refs[3].file_name == "00000003.gif" and refs[0].uri == "hf://someone/photos/train/0"
    clone = pickle.loads(pickle.dumps(src))
    rows = clone.read_rows(1, 3)
    assert rows[0] == IMAGES[1] and rows[1].reason == "missing"


def _no_load_dataset(*args, **kwargs):
    raise AssertionError("datasets.load_dataset must not be called when the Hub is unreachable")


def test_hf_hub_unreachable_fails_at_once_with_one_message(monkeypatch, caplog, capfd):
    """A made-up hub name with the Hub at a refused port: one SourceError naming the
    dataset and the local route; the client's retries (and their warnings) never start."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets, "load_dataset", _no_load_dataset)
    with caplog.at_level("WARNING"), pytest.raises(SourceError) as info:
        list_hf_dataset("made-up-owner/made-up-dataset", split="train")
    msg = str(info.value)
    assert "'made-up-owner/made-up-dataset'" in msg and "http://127.0.0.1:9 is unreachable" in msg
    assert "save_to_disk(FOLDER)" in msg and "pass that folder" in msg
    assert "Error" not in msg  # a sentence, not the client's exception class names
    assert not caplog.records and not capfd.readouterr().err


def test_hf_hub_offline_mode_is_told_without_a_request(monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub, "get_session", _no_load_dataset)
    monkeypatch.setattr(datasets, "load_dataset", _no_load_dataset)
    with pytest.raises(SourceError, match=r"'someone/photos' cannot be streamed: offline mode is set .*save_to_disk"):
        list_hf_dataset("someone/photos")


def test_hf_hub_dataset_not_found_names_it(monkeypatch):
    def not_found(name, **kwargs):
        raise datasets.exceptions.DatasetNotFoundError(f"Dataset '{name}' doesn't exist on the Hub")

    monkeypatch.setattr(hf, "hub_unavailable", lambda: None)
    monkeypatch.setattr(datasets, "load_dataset", not_found)
    with pytest.raises(SourceError, match=r"'someone/nothing' was not found on the Hub: check the name"):
        list_hf_dataset("someone/nothing")

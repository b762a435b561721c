"""``--image-list`` entries mean one thing (issue 22.7): a relative path, a path without
its extension or a bare stem; an image id only as ``id:N``; an entry naming two images
is refused, naming both."""

from __future__ import annotations

import pytest

from annotator.config import ConfigError
from annotator.inputs.catalog import ImageRefsBuilder
from annotator.job import filter_image_list
from annotator.run import main
from tests.synthetic import write_vocab

NAMES = ["2.png", "a/cat.jpg", "a/dog.jpg", "b/bird.png", "b/10.png"]


def _refs(names=NAMES):
    b = ImageRefsBuilder()
    for n in names:
        b.add(n, f"/src/{n}")
    return b.build()


def _select(tmp_path, *entries, names=NAMES, root="/src"):
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(entries) + "\n", encoding="utf-8")
    return [(r.image_id, r.file_name) for r in filter_image_list(_refs(names), str(listing), root)]


def test_paths_and_stems_select_and_ids_keep_their_listing_positions(tmp_path):
    assert _select(tmp_path, "a/dog.jpg", "b/bird", "cat") == [(2, "a/cat.jpg"), (3, "a/dog.jpg"),
                                                                (4, "b/bird.png")]


def test_a_bare_number_is_a_name_never_an_id(tmp_path):
    # '2' is the file 2.png (id 1), not the image whose id is 2 (a/cat.jpg)
    assert _select(tmp_path, "2") == [(1, "2.png")]
    # '3' names no file: a 'missing' row of its own, not the image with id 3
    assert _select(tmp_path, "2", "3") == [(1, "2.png"), (6, "3")]


def test_ids_need_the_explicit_form(tmp_path):
    assert _select(tmp_path, "id:2", "id:4") == [(2, "a/cat.jpg"), (4, "b/bird.png")]
    with pytest.raises(ConfigError, match=r"id:9 is no image's id \(ids go from 1 to 5\)"):
        _select(tmp_path, "id:2", "id:9")
    with pytest.raises(ConfigError, match="expected id:N with N a whole number, got 'id:two'"):
        _select(tmp_path, "id:two")


@pytest.mark.parametrize("names, entry, both", [
    (["x/a.jpg", "y/a.jpg"], "a", ("x/a.jpg", "y/a.jpg")),  # one stem in two folders
    (["a.jpg", "a.png"], "a", ("a.jpg", "a.png")),  # one stem, two extensions
    (["x/a.jpg", "x/a.png"], "x/a", ("x/a.jpg", "x/a.png")),  # a path without its extension
])
def test_an_entry_naming_two_images_is_refused_naming_both(tmp_path, names, entry, both):
    with pytest.raises(ConfigError) as info:
        _select(tmp_path, entry, names=names)
    message = str(info.value)
    assert f"got {entry!r} naming both {both[0]!r} and {both[1]!r}" in message
    assert "relative path (with its extension) or id:N" in message
    # the full relative path is never ambiguous
    assert _select(tmp_path, both[0], names=names) == [(names.index(both[0]) + 1, both[0])]


def test_a_relative_path_names_that_file_alone(tmp_path):
    # 'a' is the file a (no extension) and the stem of a.png: the path wins
    assert _select(tmp_path, "a", names=["a", "a.png"]) == [(1, "a")]


def test_an_unreadable_or_empty_list_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="got an empty file"):
        _select(tmp_path, "", " ")
    with pytest.raises(ConfigError, match="expected a UTF-8 text file"):
        filter_image_list(_refs(), str(tmp_path / "nope.txt"), "/src")


def test_the_run_refuses_an_ambiguous_entry_before_any_write(tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "src"
    for name in ("x/a.png", "y/a.png"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(src / name)
    (tmp_path / "list.txt").write_text("a\n")
    out = tmp_path / "out"
    rc = main(["--source", str(src), "--output", str(out), "--vocab", str(write_vocab(tmp_path / "v.txt")),
               "--model", "toy", "--saliency", "toy", "--device", "cpu", "--image-list", str(tmp_path / "list.txt"),
               "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "'a' naming both 'x/a.png' and 'y/a.png'" in err
    assert not out.exists()

"""Class colours that do not contradict class names (issue 23: class "red" was drawn in
VOC's colour for index 1, a dark red, whatever its name)."""

from __future__ import annotations

import pytest
from PIL import ImageColor

from annotator.review.palette import (
    MIN_DELTA_E,
    class_colors,
    color_category,
    css_color,
    delta_e,
    voc_palette,
)

OTHERS = ["cat", "dog", "person", "car", "tree", "sky", "road", "bus", "chair", "bottle", "sofa", "plant"]


def test_by_number_is_the_voc_palette_then_distinct_hues():
    voc = voc_palette(256)
    colors = class_colors(300)
    assert colors[:255] == [tuple(int(v) for v in voc[i]) for i in range(255)]
    assert len(set(colors)) == 300


def test_names_without_colour_words_keep_the_voc_colours():
    names = ["background", *OTHERS]
    assert class_colors(names) == class_colors(len(names))


@pytest.mark.parametrize("name,expected", [("red", (255, 0, 0)), ("Light Blue", (173, 216, 230)),
                                           ("dark_green", (0, 100, 0)), ("grey", (128, 128, 128)),
                                           ("traffic light", None), ("redwood", None)])
def test_css_color(name, expected):
    assert css_color(name) == expected


@pytest.mark.parametrize("colour", sorted(ImageColor.colormap))
def test_every_css_colour_name_gets_its_colour_and_no_other_class_looks_like_it(colour):
    names = ["background", *OTHERS[:5], colour, *OTHERS[5:]]
    colors = class_colors(names)
    if colour == "black":  # background is black: the class is a shade lighter
        assert colors[6] != colors[0] and delta_e(colors[6], (0, 0, 0)) < 15
    else:
        assert colors[6] == css_color(colour)
    assert len(set(colors)) == len(colors)
    term = color_category(colors[6])
    for name, c in zip(names[1:], colors[1:], strict=True):
        if name != colour:
            assert delta_e(c, colors[6]) >= MIN_DELTA_E, (name, c)
            assert color_category(c) != term, (name, c, term)


def test_the_colour_vocabulary_of_the_toy_model():
    """jobs/vocab/colours.txt plus ordinary classes: each colour class in its colour, the
    others in none of those six basic colours."""
    colours = ["red", "green", "blue", "yellow", "orange", "purple"]
    names = ["background", *colours, *OTHERS]
    colors = class_colors(names)
    assert colors[1:7] == [css_color(c) for c in colours]
    assert colors[1] != tuple(int(v) for v in voc_palette(2)[1])  # not VOC's dark red for index 1
    for c in colors[7:]:
        assert color_category(c) not in colours, c
    assert len(set(colors)) == len(colors)


def test_synonymous_colour_names_stay_apart():
    colors = class_colors(["background", "grey", "gray", "cat"])
    assert colors[1] == (128, 128, 128) and colors[2] != colors[1]
    assert delta_e(colors[2], colors[1]) < 20  # still near grey


def test_every_colour_word_at_once_still_gives_distinct_colours():
    names = ["background", *sorted(ImageColor.colormap), *OTHERS]
    colors = class_colors(names)
    assert len(set(colors)) == len(colors)

"""The one table of output formats: names, media types, extensions, and file names the CLI accepts."""

import pytest

from zimage_serve.core.errors import InvalidInput
from zimage_serve.core.formats import FORMATS, format_of_path, image_format


def test_the_table():
    assert {n: (f.media_type, f.extension) for n, f in FORMATS.items()} == {
        "png": ("image/png", "png"), "jpeg": ("image/jpeg", "jpg"), "webp": ("image/webp", "webp")}


@pytest.mark.parametrize("path, name", [("a.png", "png"), ("dir/a.JPG", "jpeg"), ("a.jpeg", "jpeg"), ("x.webp", "webp")])
def test_format_of_path(path, name):
    assert format_of_path(path).name == name


@pytest.mark.parametrize("path", ["a.gif", "noext", "dir.png/file"])
def test_other_file_names_are_refused_by_name(path):
    with pytest.raises(InvalidInput, match="--out must end in"):
        format_of_path(path)


def test_unknown_format_names_the_field():
    with pytest.raises(InvalidInput) as e:
        image_format("gif")
    assert e.value.param == "output_format"

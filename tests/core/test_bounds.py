import pytest

from zimage_serve.core.errors import InvalidInput
from zimage_serve.core.bounds import Bounds, check_prompt, check_seed, check_steps, parse_bytes, parse_size


def test_parse_size():
    assert parse_size("1024x768") == (1024, 768)
    assert parse_size(" 64X64 ") == (64, 64)


@pytest.mark.parametrize("bad", ["1000x1024", "1024", "x", "", "4096x4096", "32x32", "-16x16", "1024x1024x3"])
def test_bad_sizes_name_the_field(bad):
    with pytest.raises(InvalidInput) as e:
        parse_size(bad)
    assert e.value.param == "size"


def test_bounds():
    assert parse_size("4096x4096", Bounds(max_side=4096)) == (4096, 4096)
    with pytest.raises(InvalidInput, match="steps"):
        check_steps(0)
    with pytest.raises(InvalidInput, match="steps"):
        check_steps(51)
    with pytest.raises(InvalidInput, match="empty"):
        check_prompt("  \n")
    with pytest.raises(InvalidInput, match="limit"):
        check_prompt("a" * 10_001)
    with pytest.raises(InvalidInput, match="seed"):
        check_seed(-1)


def test_parse_bytes():
    assert parse_bytes("24GiB") == 24 * 2**30
    assert parse_bytes("16 GB") == 16 * 10**9
    assert parse_bytes("1.5gib") == int(1.5 * 2**30)
    with pytest.raises(InvalidInput):
        parse_bytes("lots")

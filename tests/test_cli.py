"""The CLI as a user runs it: a real process, the real tiny checkpoint."""

import pytest
from PIL import Image

from conftest import max_pixel_diff, stock_image


def test_generate_writes_the_stock_image(cli, tmp_path, stock_pipe):
    out = tmp_path / "cat.png"
    r = cli("generate", "--prompt", "a cat", "--model", "tiny", "--size", "64x96", "--seed", "5", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "random test weights" in r.stdout and "seed 5" in r.stdout
    assert "plan: cpu" in r.stderr  # the plan is shown at start
    image = Image.open(out)
    assert image.size == (64, 96)
    assert max_pixel_diff(image.convert("RGB"), stock_image(stock_pipe, "a cat", 5, 64, 96)) <= 1


@pytest.mark.parametrize("args, message", [
    (["--prompt", ""], "prompt must not be empty"),
    (["--prompt", "x", "--size", "100x100"], "multiple of 16"),
    (["--prompt", "x", "--size", "99999x64"], "size"),
    (["--prompt", "x", "--steps", "0"], "steps must be between"),
    (["--prompt", "x", "--steps", "two"], "expected an integer"),
    (["--prompt", "x", "--model", "/no/such/model"], "neither a local directory nor a hub id"),
    (["--prompt", "x", "--out", "x.gif"], "--out must end in"),
    ([], "the following arguments are required: --prompt"),
])
def test_bad_arguments_give_one_line_and_exit_2(cli, args, message):
    r = cli("generate", *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_plan_for_a_16_gib_card_fits(cli):
    r = cli("plan", "--vram", "16GiB")
    assert r.returncode == 0, r.stderr
    assert "plan: resident on cuda" in r.stdout and "official Z-Image-Turbo config" in r.stdout
    r = cli("plan", "--vram", "4GiB", "--policy", "resident")
    assert r.returncode == 2 and "no resident plan fits 4.00 GiB" in r.stderr


def test_plan_of_a_local_checkpoint_reads_its_headers(cli, tiny_path):
    r = cli("plan", "--model", str(tiny_path), "--vram", "8GiB", "--size", "512x512", "--json")
    assert r.returncode == 0, r.stderr
    assert '"kind": "resident"' in r.stdout and "safetensors headers" in r.stdout


def test_make_tiny(cli, tmp_path):
    r = cli("make-tiny", str(tmp_path / "t"))
    assert r.returncode == 0 and (tmp_path / "t" / "model_index.json").exists()

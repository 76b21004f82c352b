"""The CLI: one real process as a user runs it (generate, and one refused argument), the rest in-process
through ``zimage_serve.cli.main`` (each new process re-imports torch and diffusers: seconds a case)."""

import pytest
from PIL import Image

from conftest import max_pixel_diff, run_cli, stock_image


def test_generate_writes_the_stock_image(capsys, caplog, tmp_path, stock_pipe):
    """In this process (a real process's whole output is tests/test_startup_output.py's)."""
    out = tmp_path / "cat.png"
    caplog.set_level("INFO", logger="zimage_serve")
    code, stdout, stderr = run_cli(capsys, "generate", "--prompt", "a cat", "--model", "tiny", "--size", "64x96",
                                   "--seed", "5", "--out", str(out))
    assert code == 0, stderr
    assert "random test weights" in stdout and "seed 5" in stdout
    assert "plan: cpu" in caplog.text  # the plan is shown at start
    image = Image.open(out)
    assert image.size == (64, 96)
    assert max_pixel_diff(image.convert("RGB"), stock_image(stock_pipe, "a cat", 5, 64, 96)) <= 1


def test_a_bad_argument_in_a_real_process_is_one_line_and_exit_2(cli):
    """The whole process's stderr (imports, logging set-up and all) is the one line."""
    r = cli("generate", "--prompt", "x", "--model", "/no/such/model")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "neither a local directory nor a hub id" in r.stderr
    assert r.stdout == ""


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
def test_bad_arguments_give_one_line_and_exit_2(capsys, args, message):
    code, out, err = run_cli(capsys, "generate", *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("zimage-serve"), err
    assert "Traceback" not in err and out == ""


def test_plan_for_a_16_gib_card_fits(capsys):
    code, out, err = run_cli(capsys, "plan", "--vram", "16GiB")
    assert code == 0, err
    assert "plan: resident on cuda" in out and "official Z-Image-Turbo config" in out
    code, out, err = run_cli(capsys, "plan", "--vram", "4GiB", "--policy", "resident")
    assert code == 2 and "no resident plan fits 4.00 GiB" in err and len(err.strip().splitlines()) == 1


def test_plan_keeps_more_free_for_an_allocator_of_fixed_segments(capsys, monkeypatch):
    """GPU processes use expandable segments unless the user set PYTORCH_CUDA_ALLOC_CONF; set without them, a plan
    keeps 0.5 GiB more free, and `plan` says so."""
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    code, out, err = run_cli(capsys, "plan", "--vram", "8GiB")
    assert code == 0 and "budget 8.00 GiB free" in out and "allocator" not in out, err
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")
    code, out, err = run_cli(capsys, "plan", "--vram", "8GiB")
    assert code == 0 and "budget 7.50 GiB free" in out, err
    assert "PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:128 has no expandable segments: 0.50 GiB more kept free" in out


def test_plan_of_a_local_checkpoint_reads_its_headers(capsys, tiny_path):
    code, out, err = run_cli(capsys, "plan", "--model", str(tiny_path), "--vram", "8GiB", "--size", "512x512", "--json")
    assert code == 0, err
    assert '"kind": "resident"' in out and "safetensors headers" in out


def test_make_tiny(capsys, tmp_path, tiny_path):
    code, out, err = run_cli(capsys, "make-tiny", str(tmp_path / "t"))
    assert code == 0, err
    assert out.startswith("wrote a tiny Z-Image checkpoint with random test weights to ")
    written = sorted(p.relative_to(tmp_path / "t") for p in (tmp_path / "t").rglob("*") if p.is_file())
    assert written == sorted(p.relative_to(tiny_path) for p in tiny_path.rglob("*") if p.is_file())  # the hub layout
    assert (tmp_path / "t" / "model_index.json").read_text() == (tiny_path / "model_index.json").read_text()


def test_generate_edits_an_image_as_stock_diffusers_does(capsys, tmp_path, stock_pipe):
    import numpy as np
    import torch
    from diffusers import ZImageInpaintPipeline

    source = Image.fromarray(np.random.RandomState(1).randint(0, 255, (64, 72, 3), dtype=np.uint8))
    source.save(tmp_path / "in.png")
    mask = Image.new("L", (72, 64))
    mask.paste(255, (10, 10, 50, 40))
    mask.save(tmp_path / "mask.png")
    out = tmp_path / "edited.png"
    code, stdout, stderr = run_cli(capsys, "generate", "--prompt", "a door", "--model", "tiny", "--image",
                                   str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), "--strength", "0.8",
                                   "--seed", "2", "--out", str(out))
    assert code == 0, stderr
    assert "64x64" in stdout and "inpaint of" in stdout and "strength 0.8" in stdout  # 72 rounded down to 64
    pipe = ZImageInpaintPipeline(**stock_pipe.components)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(prompt="a door", image=pipe.image_processor.resize(source, 64, 64), mask_image=mask, strength=0.8,
               height=64, width=64, num_inference_steps=8, guidance_scale=0.0,
               generator=torch.Generator("cpu").manual_seed(2)).images[0]
    assert max_pixel_diff(Image.open(out).convert("RGB"), ref) <= 1


@pytest.mark.parametrize("args, message", [
    (["--image", "/no/such.png"], "can't read --image /no/such.png"),
    (["--mask", "m.png"], "--mask and --strength edit an image: give it with --image"),
    (["--image", "{png}", "--strength", "0"], "strength must be greater than 0"),
    (["--image", "{png}", "--mask", "{small}"], "mask is 16x16 but image is 64x64"),
    (["--image", "{txt}"], "is not a PNG, JPEG, WebP, GIF or BMP image"),
])
def test_bad_edit_arguments_give_one_line_and_exit_2(capsys, tmp_path, args, message):
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    Image.new("L", (16, 16)).save(tmp_path / "small.png")
    (tmp_path / "a.txt").write_text("not an image")
    paths = {"png": tmp_path / "a.png", "small": tmp_path / "small.png", "txt": tmp_path / "a.txt"}
    code, out, err = run_cli(capsys, "generate", "--prompt", "x", "--model", "tiny", "--out", str(tmp_path / "o.png"),
                             *(a.format(**paths) for a in args))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("zimage-serve"), err
    assert not (tmp_path / "o.png").exists()


def test_make_lora_then_generate_with_it_equals_stock_diffusers_with_the_adapter(capsys, tmp_path, tiny_path):
    import torch
    from diffusers import ZImagePipeline

    code, out, err = run_cli(capsys, "make-lora", str(tmp_path / "ink"), "--rank", "8", "--seed", "5")
    assert code == 0, err
    assert out.startswith("wrote a rank-8 LoRA adapter with random test weights to ")
    image = tmp_path / "ink.png"
    code, out, err = run_cli(capsys, "generate", "--prompt", "a tram", "--model", "tiny", "--size", "64x64",
                             "--steps", "3", "--seed", "7", "--lora", f"{tmp_path / 'ink'}:0.6", "--out", str(image))
    assert code == 0, err
    assert "LoRA" in out and "scale 0.6" in out
    pipe = ZImagePipeline.from_pretrained(tiny_path, dtype=torch.float32)  # its own: the adapter stays there
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(tmp_path / "ink"), adapter_name="ink")
    pipe.set_adapters(["ink"], [0.6])
    ref = pipe(prompt="a tram", height=64, width=64, num_inference_steps=3, guidance_scale=0.0,
               generator=torch.Generator("cpu").manual_seed(7)).images[0]
    assert max_pixel_diff(Image.open(image).convert("RGB"), ref) <= 1


@pytest.mark.parametrize("lora, message", [
    ("/no/such/adapter", "--lora: /no/such/adapter does not exist"),
    ("{dir}:2.5", "--lora must be from 0 to 2, got 2.5"),
    ("{bad}", "is not a readable safetensors file"),  # before the model loads
])
def test_a_bad_lora_gives_one_line_and_exit_2(capsys, tmp_path, lora, message):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00not json")
    code, out, err = run_cli(capsys, "generate", "--prompt", "x", "--model", "tiny", "--size", "64x64", "--steps", "1",
                             "--out", str(tmp_path / "o.png"),
                             "--lora", lora.format(dir=tmp_path / "adapter", bad=tmp_path / "bad.safetensors"))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("zimage-serve"), err
    assert not (tmp_path / "o.png").exists()

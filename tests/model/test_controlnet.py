"""The ControlNet modes (model/modes/controlnet*.py) against stock ZImageControlNetPipeline /
ZImageControlNetInpaintPipeline built from the same tiny checkpoint's components and the same random ControlNet,
pixel for pixel; both published layouts load; the planner counts the ControlNet."""


import numpy as np
import pytest
import torch
from diffusers import ZImageControlNetInpaintPipeline, ZImageControlNetModel, ZImageControlNetPipeline

from conftest import edges, max_pixel_diff, picture, png, square_mask
PROMPT = "a red barn in snow"
from zimage_serve.core.control import with_control_image
from zimage_serve.core.errors import ModelSourceError
from zimage_serve.core.images import with_edit_inputs
from zimage_serve.core.request import GenerationRequest
from zimage_serve.model.controlnet import find_controlnet, inferred_config
from zimage_serve.model.engine import Engine, Job
from zimage_serve.model.planner import ControlNetSizes, Workload, make_plan
from zimage_serve.model.sizes import sizes_of
from zimage_serve.model.startup import warm_up


def engine_with(tiny_source, path):
    cn = find_controlnet(str(path))
    plan = make_plan(sizes_of(tiny_source), None, Workload(128, 128, 4), controlnet=ControlNetSizes.of(cn.shapes))
    e = Engine.load(tiny_source, plan, controlnet=cn)
    e.set_progress(False)
    return e


@pytest.fixture(scope="module")
def engines(tiny_source, tiny_controlnets):
    return {v: engine_with(tiny_source, p) for v, p in tiny_controlnets.items()}


def stock_controlnet(stock_pipe, path, inpaint=False):
    cn = find_controlnet(str(path))
    if cn.single_file:  # the published file carries no config: diffusers is given the one we infer, offline
        import json, tempfile
        d = tempfile.mkdtemp()
        config = inferred_config(cn, dict(stock_pipe.transformer.config))
        open(f"{d}/config.json", "w").write(json.dumps({"_class_name": "ZImageControlNetModel", **config}))
        model = ZImageControlNetModel.from_single_file(str(path), config=d, local_files_only=True)
    else:
        model = ZImageControlNetModel.from_pretrained(path)
    cls = ZImageControlNetInpaintPipeline if inpaint else ZImageControlNetPipeline
    pipe = cls(controlnet=model, **{k: v for k, v in stock_pipe.components.items()})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def control_job(engine, seed, control, scale=None, width=64, height=64, preprocess="none", **kw):
    request = with_control_image(GenerationRequest(PROMPT, seed=seed, width=width, height=height, **kw), png(control),
                                 preprocess, scale=scale)
    return Job.of(request, engine.encode(list(request.texts)))


@pytest.mark.parametrize("version", ["1.0", "2.0", "2.1"])
def test_controlnet_equals_stock_for_both_layouts(engines, stock_pipe, tiny_controlnets, version):
    engine = engines[version]
    ours = engine.generate([control_job(engine, 4, edges())]).images[0]
    ref = stock_controlnet(stock_pipe, tiny_controlnets[version])(
        prompt=PROMPT, control_image=edges(), height=64, width=64, num_inference_steps=8, guidance_scale=0.0,
        generator=torch.Generator("cpu").manual_seed(4)).images[0]
    assert max_pixel_diff(ours, ref) <= 1
    plain = engine.generate([Job.of(GenerationRequest(PROMPT, seed=4, width=64, height=64),
                                    engine.encode([PROMPT]))]).images[0]
    assert max_pixel_diff(ours, plain) > 8  # the control shows (the random ControlNet's projections are not zero)


def test_control_scale_and_resized_control_image_equal_stock(engines, stock_pipe, tiny_controlnets):
    engine = engines["2.1"]
    big = edges(96, 80)  # another size: resized by the pipeline, as stock resizes it
    ours = engine.generate([control_job(engine, 9, big, scale=1.5)]).images[0]
    ref = stock_controlnet(stock_pipe, tiny_controlnets["2.1"])(
        prompt=PROMPT, control_image=big, controlnet_conditioning_scale=1.5, height=64, width=64,
        num_inference_steps=8, guidance_scale=0.0, generator=torch.Generator("cpu").manual_seed(9)).images[0]
    assert max_pixel_diff(ours, ref) <= 1


def test_controlnet_inpaint_equals_stock(engines, stock_pipe, tiny_controlnets):
    engine = engines["2.1"]
    request = with_control_image(GenerationRequest(PROMPT, seed=6), png(edges()))
    request = with_edit_inputs(request, png(picture()), png(square_mask()), (64, 64))
    assert request.mode == "controlnet-inpaint" and request.strength is None
    ours = engine.generate([Job.of(request, engine.encode([PROMPT]))]).images[0]
    ref = stock_controlnet(stock_pipe, tiny_controlnets["2.1"], inpaint=True)(
        prompt=PROMPT, image=picture(), mask_image=square_mask(), control_image=edges(), height=64, width=64,
        num_inference_steps=8, guidance_scale=0.0, generator=torch.Generator("cpu").manual_seed(6)).images[0]
    assert max_pixel_diff(ours, ref) <= 1


def test_batched_control_requests_equal_each_alone(engines):
    engine = engines["2.1"]
    jobs = [control_job(engine, s, edges() if s % 2 else picture()) for s in (1, 2, 3)]
    plain = Job.of(GenerationRequest(PROMPT, seed=1, width=64, height=64), engine.encode([PROMPT]))
    together = engine.generate(jobs + [plain])
    assert sorted(together.batch_sizes) == [1, 3]
    for job, image in zip(jobs + [plain], together.images):
        assert max_pixel_diff(image, engine.generate([job]).images[0]) <= 1


def test_canny_preprocess_makes_edges(engines):
    engine = engines["2.1"]
    job = control_job(engine, 1, square_mask().convert("RGB"), preprocess="canny")  # a white square on black
    seen = np.asarray(job.request.control_image.image())[..., 0]
    assert set(np.unique(seen)) == {0, 255}
    rows, cols = np.nonzero(seen)
    for lo, hi in ((rows.min(), rows.max()), (cols.min(), cols.max())):  # the square's sides are at 16 and 47
        assert 15 <= lo <= 16 and 47 <= hi <= 48
    assert seen[20:44, 20:44].max() == 0


def test_planner_counts_the_controlnet(tiny_controlnets):
    from zimage_serve.model.planner import GiB, Z_IMAGE_TURBO

    union21 = ControlNetSizes(params=3_360_000_000, block_params=200_000_000, blocks=17)
    plain = make_plan(Z_IMAGE_TURBO, 40 * GiB, Workload())
    with_cn = make_plan(Z_IMAGE_TURBO, 40 * GiB, Workload(), controlnet=union21)
    assert (plain.controlnet, with_cn.controlnet) == ("none", "gpu")
    assert with_cn.weights_on_gpu_gib - plain.weights_on_gpu_gib == pytest.approx(3.36e9 * 2 / GiB, abs=0.01)
    assert "controlnet    gpu" in with_cn.describe()
    small = make_plan(Z_IMAGE_TURBO, 16 * GiB, Workload(), controlnet=union21)
    assert (small.kind, small.controlnet) == ("partial", "gpu")  # the ControlNet resident, transformer blocks streamed
    from zimage_serve.core.errors import PlanError

    with pytest.raises(PlanError, match="a ControlNet is served \\(it is never streamed\\)"):
        make_plan(Z_IMAGE_TURBO, 16 * GiB, Workload(), policy="sequential", controlnet=union21)
    with pytest.raises(PlanError, match="The smallest needs"):  # below the smallest partial plan: no streamed one
        make_plan(Z_IMAGE_TURBO, 6 * GiB, Workload(), controlnet=union21)
    assert small.peak_gib <= 16


def test_a_controlnet_for_another_model_is_refused(tmp_path, tiny_path):
    from safetensors.torch import save_file

    save_file({"control_all_x_embedder.2-1.weight": torch.zeros(128, 64), "control_layers.0.after_proj.weight":
               torch.zeros(128, 128)}, str(tmp_path / "wide.safetensors"))
    cn = find_controlnet(str(tmp_path / "wide.safetensors"))
    from zimage_serve.model.controlnet import check_fits
    from diffusers import ZImageTransformer2DModel

    with pytest.raises(ModelSourceError, match="width 128; this model's is 64"):
        check_fits(cn, ZImageTransformer2DModel.load_config(str(tiny_path), subfolder="transformer"))
    with pytest.raises(ModelSourceError, match="does not exist"):
        find_controlnet(str(tmp_path / "missing.safetensors"))
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelSourceError, match="holds no Z-Image ControlNet weights"):
        find_controlnet(str(tmp_path / "other.safetensors"))


def test_warmup_runs_the_controlnet_path_too(engines):
    engine = engines["1.0"]
    warm = warm_up(engine, 64, 64, batch_sizes=(1, 2), steps=1, caption_tokens=(16,))
    assert [call[:2] + call[3:] for call in warm.calls] == [(1, 16), (1, 16, "controlnet"), (2, 16),
                                                                     (2, 16, "controlnet")]


@pytest.mark.parametrize("version", ["1.0", "2.1"])
def test_compiled_and_fused_control_blocks_equal_eager(tiny_controlnets, tiny_source, version):
    """accelerate_controlnet's fused projections and one compiled graph for every control block (of every stack
    depth): the hints equal the eager ControlNet's up to float rounding."""
    from zimage_serve.model.optim.accel import accelerate_controlnet

    engine = engine_with(tiny_source, tiny_controlnets[version])
    pipe = engine.pipeline(ZImageControlNetPipeline)  # the ControlNet shares the transformer's modules
    cn = pipe.controlnet
    torch.manual_seed(0)
    x = [torch.randn(16, 1, 8, 8)]
    t = torch.tensor([0.5])
    cap = [torch.randn(7, engine.pipe.transformer.config.cap_feat_dim)]
    ctx = [torch.randn(cn.config.control_in_dim, 1, 8, 8)]
    with torch.inference_mode():
        eager = cn(x, t, cap, ctx, conditioning_scale=0.8)
        applied = accelerate_controlnet(cn, compile=True, fuse=True)
        compiled = cn(x, t, cap, ctx, conditioning_scale=0.8)
    assert applied["controlnet_fused_blocks"] >= 1 and "one graph" in applied["controlnet_compile"]
    assert eager.keys() == compiled.keys()
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-4, atol=1e-4)


def test_a_modelscope_id_is_read_from_the_cache_as_published(tiny_controlnets, tiny_source, tmp_path, monkeypatch):
    """The published repo holds the single file (and its README): an id found in MODELSCOPE_CACHE loads as the file
    does; an id neither cached nor reachable is one line naming the cache."""
    import shutil

    repo = tmp_path / "ms" / "PAI" / "Z-Image-Turbo-Fun-Controlnet-Union"
    repo.mkdir(parents=True)
    shutil.copy(tiny_controlnets["1.0"], repo / "Z-Image-Turbo-Fun-Controlnet-Union.safetensors")
    (repo / "README.md").write_text("a model card\n")
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    monkeypatch.setenv("MODELSCOPE_DOMAIN", "127.0.0.1")  # unreachable: nothing is downloaded
    cn = find_controlnet("PAI/Z-Image-Turbo-Fun-Controlnet-Union")
    assert cn.single_file and cn.version == "1.0" and cn.path.name.endswith(".safetensors")
    engine = engine_with(tiny_source, cn.path)
    assert engine.controlnet.config.control_in_dim == 16
    with pytest.raises(ModelSourceError, match="MODELSCOPE_CACHE"):
        find_controlnet("PAI/not-in-the-cache")


@pytest.mark.parametrize("policy", ["offload", "partial"])
def test_every_plan_kind_places_the_controlnet_and_makes_the_resident_image(tiny_source, tiny_controlnets, engines,
                                                                             policy):
    """GPU plans followed on CPU (the CPU as 'GPU'): the ControlNet offloaded with the transformer (model offload
    hooks, neither sending the other back), or resident beside a partly streamed transformer; the image equals the
    resident engine's."""
    from zimage_serve.model.planner import GiB

    cn = find_controlnet(str(tiny_controlnets["2.1"]))
    plan = make_plan(sizes_of(tiny_source), 80 * GiB, Workload(64, 64, 1), policy=policy,
                     controlnet=ControlNetSizes.of(cn.shapes))
    assert (plan.kind, plan.controlnet) == (policy, {"offload": "offload", "partial": "gpu"}[policy])
    engine = Engine.load(tiny_source, plan, device="cpu", dtype="float32", controlnet=cn)
    engine.set_progress(False)
    if policy == "partial":
        assert engine.streamer is not None
    else:
        te, cn_hook, t_hook = engine.loaded.hooks  # the text encoder's turn, then the ControlNet's and transformer's
        assert cn_hook.hook.prev_module_hook is te and t_hook.hook.prev_module_hook is te
    image = engine.generate([control_job(engine, 4, edges())]).images[0]
    resident = engines["2.1"]
    assert max_pixel_diff(image, resident.generate([control_job(resident, 4, edges())]).images[0]) <= 1

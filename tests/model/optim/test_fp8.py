"""FP8 Linear layers: the rowwise-scaled e4m3 matmul against the same arithmetic done by hand."""

import pytest
import torch

from zimage_serve.model.optim.fp8 import E4M3, Float8Linear, quantize_linears, quantize_rows


def test_quantize_rows_scales_each_row_to_the_e4m3_range():
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [100.0, 3.0, -7.0]])
    q, scale = quantize_rows(x)
    assert q.dtype == E4M3 and scale.shape == (3, 1)
    assert q.float().abs().amax(dim=1).tolist() == [448.0, 0.0, 448.0]  # the zero row stays zero, no NaN
    torch.testing.assert_close(q.float() * scale, x, rtol=0.07, atol=1e-6)  # e4m3 keeps 3 mantissa bits


def test_float8_linear_equals_the_dequantized_matmul():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48, bias=True)
    x = torch.randn(2, 5, 64)
    fp8 = Float8Linear(linear)
    x8, xs = quantize_rows(x.reshape(-1, 64))
    expected = (x8.float() * xs) @ (fp8.weight.float() * fp8.weight_scale.t()).t() + linear.bias
    got = fp8(x)
    assert got.shape == (2, 5, 48)
    torch.testing.assert_close(got.reshape(-1, 48), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got, linear(x), rtol=0.15, atol=0.15)  # and close to the float matmul


def test_quantize_linears_takes_only_wide_layers():
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Sequential(torch.nn.Linear(32, 16)),
                                torch.nn.Linear(16, 8))
    assert quantize_linears(model, min_features=16) == 2
    assert isinstance(model[0], Float8Linear) and isinstance(model[2][0], Float8Linear)
    assert isinstance(model[3], torch.nn.Linear)
    assert model(torch.randn(3, 32)).shape == (3, 8)


def test_fp8_on_a_machine_without_a_gpu_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from zimage_serve.model.optim.accel import quantize_fp8

    with pytest.raises(RuntimeError, match="fp8 needs a CUDA GPU"):
        quantize_fp8(torch.nn.Linear(2048, 2048))


def test_fp8_blocks_of_the_real_transformer_stay_close(tiny_path):
    from diffusers import ZImageTransformer2DModel

    from zimage_serve.model.optim.fusion import fuse_projections

    model = ZImageTransformer2DModel.from_pretrained(tiny_path, subfolder="transformer", dtype=torch.bfloat16).eval()
    g = torch.Generator().manual_seed(0)
    latents = [torch.randn(16, 1, 4, 4, generator=g).bfloat16()]
    caption = [torch.randn(7, 32, generator=g).bfloat16()]
    with torch.inference_mode():
        ref = model(latents, torch.tensor([0.5]), caption, return_dict=False)[0][0].float()
        fuse_projections(model)
        blocks = [m for m in model.modules() if type(m).__name__ in model._repeated_blocks]
        assert sum(quantize_linears(b, min_features=16) for b in blocks) >= len(blocks)
        out = model(latents, torch.tensor([0.5]), caption, return_dict=False)[0][0].float()
    assert torch.isfinite(out).all()
    assert (out - ref).abs().mean() < 0.1 * ref.abs().mean()

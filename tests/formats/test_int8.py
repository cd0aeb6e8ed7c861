"""int8 quantization against the DESIGN formula."""

import pytest
import torch

from sparsedm.formats import Int8FormatError, dequantize_int8, quantize_activation_int8, quantize_weight_int8


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_weight_per_channel(dtype):
    w = torch.randn(7, 33, generator=torch.Generator().manual_seed(0)).to(dtype)
    q, s = quantize_weight_int8(w)
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and s.shape == (7,)
    expected_s = w.float().abs().amax(1) / 127
    torch.testing.assert_close(s, expected_s, rtol=0, atol=0)
    expected_q = torch.round(w.float() / expected_s[:, None]).clamp(-127, 127).to(torch.int8)
    assert torch.equal(q, expected_q)
    # The largest magnitude of each row maps to +-127.
    assert torch.equal(q.abs().amax(1), torch.full((7,), 127, dtype=torch.int8))
    err = (dequantize_int8(q, s) - w.float()).abs()
    assert bool((err <= s[:, None] / 2 + 1e-6).all()), f"max err {err.max()}"


def test_round_half_to_even():
    w = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5]])  # scale is exactly 1
    q, s = quantize_weight_int8(w)
    assert float(s) == 1.0
    assert q.tolist() == [[127, 0, 2, 2, 0, -2]]


def test_activation_per_token_batch_dims():
    x = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(1))
    q, s = quantize_activation_int8(x)
    assert q.shape == x.shape and s.shape == (2, 3)
    torch.testing.assert_close(s, x.abs().amax(-1) / 127, rtol=0, atol=0)
    assert torch.equal(q, torch.round(x / s[..., None]).clamp(-127, 127).to(torch.int8))


def test_zero_rows_give_zero_scale_and_codes():
    x = torch.zeros(2, 8)
    x[1] = torch.arange(8.0) - 3
    q, s = quantize_activation_int8(x)
    assert float(s[0]) == 0.0 and not bool(q[0].any())
    assert not torch.isnan(dequantize_int8(q, s)).any()


def test_errors():
    with pytest.raises(Int8FormatError, match="2-D weight"):
        quantize_weight_int8(torch.randn(2, 3, 4))
    with pytest.raises(Int8FormatError, match="floating-point"):
        quantize_activation_int8(torch.ones(2, 4, dtype=torch.int32))

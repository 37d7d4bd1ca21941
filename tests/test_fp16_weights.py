"""fp16 weights multiplied in float32 (specdec.fp16_weights): the layer, the loader's choice of
it for bf16 on a CPU without bf16 matrix kernels, and the model it computes. End-to-end
exactness with an fp16-weight target is in test_exactness.py."""

import pytest
import torch
from torch import nn

from specdec import fp16_weights, models
from specdec.errors import InvalidArgument
from specdec.fp16_weights import Fp16Linear, use_fp16_weights
from specdec.models import load_model
from specdec.quantize import _LowBit

pytestmark = pytest.mark.skipif(not fp16_weights.available(),
                                reason="this torch has no fbgemm (non-x86 build)")


def test_the_layer_multiplies_float32_rows_by_its_fp16_weights():
    torch.manual_seed(0)
    linear = nn.Linear(96, 40)
    layer = Fp16Linear(linear)
    x = torch.randn(2, 7, 96)
    want = x.double() @ linear.weight.detach().half().double().t() + linear.bias.double()
    got = layer(x)
    assert got.dtype == torch.float32 and got.shape == (2, 7, 40)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    assert layer.inexact > 0  # random float32 weights lose bits in fp16


def test_bf16_weights_are_held_exactly():
    """Every bf16 value in fp16's range is an fp16 value: a bf16 model loses nothing."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 32).to(torch.bfloat16)
    layer = Fp16Linear(linear)
    assert layer.inexact == 0
    eye = torch.eye(64)
    torch.testing.assert_close(layer(eye) - layer(torch.zeros(1, 64)),
                               linear.weight.float().t(), rtol=0, atol=0)


def test_use_fp16_weights_replaces_every_linear_and_makes_the_rest_float32():
    model = nn.Sequential(nn.Embedding(10, 16), nn.LayerNorm(16), nn.Linear(16, 10))
    model.to(torch.bfloat16)
    counts = use_fp16_weights(model)
    assert counts == {"quantized": 1, "kept": 0, "inexact_weights": 0}
    assert isinstance(model[2], Fp16Linear)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 10)


@pytest.mark.parametrize("bf16_fast", [False, True])
def test_bf16_on_a_cpu_without_bf16_kernels_loads_fp16_weights(model_dirs, monkeypatch,
                                                                tmp_path, bf16_fast):
    """Asked for bf16 where oneDNN has no bf16 kernels, the loader holds the bf16 weights as
    fp16 and computes in float32 (reported as quantization fp16, dtype float32); where it
    has them, bf16 stays bf16. The two compute the same bf16 weights."""
    monkeypatch.setattr(models, "cpu_bf16_usable", lambda: True)
    monkeypatch.setattr(models, "cpu_bf16_fast", lambda: bf16_fast)
    lm = load_model(str(model_dirs["target"]), "bfloat16", "cpu", str(tmp_path))
    linears = [m for m in lm.model.modules() if isinstance(m, (nn.Linear, Fp16Linear))]
    if bf16_fast:
        assert (lm.dtype, lm.quantization) == (torch.bfloat16, "none")
        assert all(type(m) is nn.Linear for m in linears)
        return
    assert (lm.dtype, lm.quantization) == (torch.float32, "fp16")
    assert linears and all(isinstance(m, Fp16Linear) for m in linears)
    # only bf16 values below fp16's subnormal steps (~2^-17) round: a few of random weights
    weights = sum(m.in_features * m.out_features for m in linears)
    assert sum(m.inexact for m in linears) <= weights * 1e-4
    monkeypatch.setattr(models, "cpu_bf16_fast", lambda: True)
    ref = load_model(str(model_dirs["target"]), "bfloat16", "cpu", str(tmp_path))
    ref.model.float()  # the same bf16 weights, computed in float32
    ids = torch.tensor([[5, 17, 42, 7, 99, 3, 8, 9]])
    with torch.inference_mode():
        torch.testing.assert_close(lm.model(ids).logits, ref.model(ids).logits,
                                   rtol=1e-4, atol=1e-4)


def test_fp16_can_be_chosen_for_float32_weights(model_dirs, tmp_path):
    lm = load_model(str(model_dirs["draft_perturbed"]), "float32", "cpu", str(tmp_path), "fp16")
    assert (lm.dtype, lm.quantization) == (torch.float32, "fp16")
    assert any(isinstance(m, Fp16Linear) for m in lm.model.modules())


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_without_bf16_kernels_wide_passes_of_low_bit_layers_use_fp16_weights(
        model_dirs, monkeypatch, tmp_path, scheme):
    """bf16 with int8/int4 on a CPU without bf16 kernels: a low-bit layer's passes of more than
    max_rows rows (prefills) multiply an fp16 copy of its dequantized weights in float32,
    which computes the same quantized model as its low-bit kernels do row by row."""
    monkeypatch.setattr(models, "cpu_bf16_usable", lambda: True)
    monkeypatch.setattr(models, "cpu_bf16_fast", lambda: False)
    lm = load_model(str(model_dirs["target"]), "bfloat16", "cpu", str(tmp_path), scheme)
    assert (lm.dtype, lm.quantization) == (torch.bfloat16, scheme)
    layers = [m for m in lm.model.modules() if isinstance(m, _LowBit)]
    assert layers and all(isinstance(layer.dense, Fp16Linear) for layer in layers)
    layer = layers[0]
    torch.manual_seed(0)
    x = torch.randn(1, layer.max_rows + 3, layer.in_features, dtype=torch.bfloat16)
    with torch.inference_mode():
        many = layer(x)                                                  # the fp16 path
        one_by_one = torch.cat([layer(x[:, i:i + 1]) for i in range(x.shape[1])], dim=1)
    assert many.dtype == torch.bfloat16
    torch.testing.assert_close(many.float(), one_by_one.float(), rtol=0.02, atol=0.02)


def test_fp16_without_fbgemm_is_refused_with_a_clear_error(model_dirs, monkeypatch, tmp_path):
    monkeypatch.setattr(models.fp16_weights, "available", lambda: False)
    with pytest.raises(InvalidArgument, match="needs fbgemm"):
        load_model(str(model_dirs["target"]), "float32", "cpu", str(tmp_path), "fp16")

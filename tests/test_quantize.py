"""Weight-only int8/int4 layers (specdec.quantize) against the matrix product of their own
dequantized weights, and quantized models through the real loading path. End-to-end
exactness with quantized drafts is in test_exactness.py."""

import json
import time

import pytest
import torch
from torch import nn

from specdec.models import load_model
from specdec.quantize import (
    CALIBRATION_ROWS,
    SMALL_ROWS,
    Int4Linear,
    Int8Linear,
    calibrate,
    quantize,
)


def dequantized_int8(layer: Int8Linear) -> torch.Tensor:
    return layer.qweight.float() * layer.scales.float()[:, None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_layer_computes_with_its_dequantized_weights(dtype):
    torch.manual_seed(0)
    linear = nn.Linear(256, 96, bias=True).to(dtype)
    layer = Int8Linear(linear)
    x = torch.randn(2, 2, 256, dtype=dtype)                    # [B, T, K]: 4 rows, low-bit
    want = x.float() @ dequantized_int8(layer).t() + linear.bias.float()
    got = layer(x)
    assert got.shape == (2, 2, 96) and got.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 0.5
    assert torch.allclose(got.float(), want, atol=tol)
    if dtype == torch.float32:  # weights within half a quantization step of the originals
        err = (dequantized_int8(layer) - linear.weight).abs().amax(dim=1)
        assert (err <= layer.scales / 2 + 1e-6).all()


def test_int4_layer_computes_with_its_dequantized_weights():
    torch.manual_seed(0)
    linear = nn.Linear(256, 64, bias=False)
    layer = Int4Linear(linear, group_size=64)
    # dequantize through the kernel itself: multiply by the identity
    eye = torch.eye(256)
    w = layer.low_bit(eye).t()                                                # [N, K]
    assert w.shape == linear.weight.shape
    groups = linear.weight.reshape(-1, 64)
    step = (groups.amax(1) - groups.amin(1)) / 15                            # [N*K/G]
    err = (w - linear.weight).reshape(-1, 64).abs().amax(1)
    assert (err <= step / 2 + 1e-5).all()  # each weight within half a quantization step
    x = torch.randn(SMALL_ROWS, 256)
    assert torch.allclose(layer(x), x @ w.t(), atol=1e-3)


@pytest.mark.parametrize("make", [Int8Linear, lambda lin: Int4Linear(lin, 64)])
def test_passes_of_many_rows_compute_the_same_quantized_model(make):
    """Low-bit kernels do not amortize across rows, so a prefill (or a large verify or
    batch) runs a plain matrix product, with the dequantized weights: the same model as the
    low-bit path, so the output does not depend on how many rows a pass has."""
    torch.manual_seed(0)
    linear = nn.Linear(128, 64)
    original = linear.weight.detach().clone()
    layer = make(linear)
    x = torch.randn(1, SMALL_ROWS + 1, 128)
    many = layer(x)                                                    # one dense pass
    one_by_one = torch.cat([layer(x[:, i:i + 1]) for i in range(SMALL_ROWS + 1)], dim=1)
    assert torch.allclose(many, one_by_one, atol=1e-4)
    assert not torch.allclose(many, x @ original.t() + linear.bias, atol=1e-3)


@pytest.mark.parametrize("make", [Int8Linear, lambda lin: Int4Linear(lin, 64)])
def test_strided_rows_go_through_the_low_bit_kernels(make):
    """The last row of each sequence of a batch (a batched pass keeping one row of logits per
    session) is a strided view; the kernels need contiguous rows."""
    torch.manual_seed(0)
    layer = make(nn.Linear(128, 64))
    x = torch.randn(3, 5, 128)
    last = x[:, -1:, :]                                                   # [3, 1, 128]
    assert not last.reshape(-1, 128).is_contiguous()
    assert torch.allclose(layer(last), layer(last.contiguous()), atol=1e-5)


def test_a_head_tied_to_the_embeddings_leaves_them_unquantized():
    torch.manual_seed(0)
    embed, head = nn.Embedding(64, 128), nn.Linear(128, 64, bias=False)
    head.weight = embed.weight  # tied, as in Qwen2.5-0.5B
    before = embed.weight.detach().clone()
    model = nn.ModuleDict({"embed": embed, "head": head})
    assert quantize(model, "int4")["quantized"] == 1
    assert torch.equal(model["embed"].weight, before)


def test_quantize_replaces_linear_layers_and_keeps_what_the_kernels_do_not_take():
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 13))  # 13 % 8 != 0
    counts = quantize(model, "int4")
    assert counts == {"quantized": 1, "kept": 1, "cached": 0, "repacked": 0}
    assert isinstance(model[0], Int4Linear) and isinstance(model[2], nn.Linear)
    with pytest.raises(ValueError, match="expected one of"):
        quantize(model, "int3")


@pytest.mark.parametrize("scheme, min_cosine", [("int8", 0.99), ("int4", 0.8)])
def test_quantized_model_loads_and_approximates_the_original(model_dirs, tmp_path, scheme,
                                                            min_cosine):
    """A close approximation, not the same model (random tiny weights have no structure to
    spare: int4 with one group per 64-wide row is rough here; acceptance on the real pair is
    measured by `make bench`)."""
    full = load_model(str(model_dirs["target"]), "float32", "cpu", str(tmp_path))
    ids = torch.tensor([[5, 17, 42, 7, 99, 3, 8, 9, 10, 11, 12, 13]])
    ref = full.model(ids).logits[0]                                           # [T, V]
    lm = load_model(str(model_dirs["target"]), "float32", "cpu", str(tmp_path), scheme)
    assert lm.quantization == scheme and lm.vocab_size == full.vocab_size
    assert any(isinstance(m, (Int8Linear, Int4Linear)) for m in lm.model.modules())
    got = lm.model(ids).logits[0]
    assert nn.functional.cosine_similarity(got, ref, dim=-1).min() >= min_cosine


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantized_layers_are_cached_and_restored_identically(model_dirs, tmp_path, scheme):
    """The first load quantizes and writes the packed layers under the cache directory; the
    second loads them instead, with the same buffers and the same logits."""
    cache = str(tmp_path)
    first = load_model(str(model_dirs["draft_perturbed"]), "float32", "cpu", cache, scheme)
    (cached,) = (tmp_path / "quantized").glob("*.pt")
    second = load_model(str(model_dirs["draft_perturbed"]), "float32", "cpu", cache, scheme)
    assert list((tmp_path / "quantized").glob("*.pt")) == [cached]  # read, not rewritten
    a, b = dict(first.model.named_buffers()), dict(second.model.named_buffers())
    assert a.keys() == b.keys() and any("qweight" in name for name in a)
    assert all(torch.equal(a[name], b[name]) for name in a)
    x = torch.tensor([first.tokenizer("def add(a, b):").input_ids])
    with torch.inference_mode():
        torch.testing.assert_close(first.model(x[:, :3]).logits, second.model(x[:, :3]).logits,
                                   rtol=0, atol=0)
    other = load_model(str(model_dirs["draft_perturbed"]), "float32", "cpu", cache,
                       "int8" if scheme == "int4" else "int4")
    assert other.quantization != first.quantization
    assert len(list((tmp_path / "quantized").glob("*.pt"))) == 2  # a key per scheme


def test_an_unreadable_cache_is_quantized_again(model_dirs, tmp_path):
    cache = str(tmp_path)
    load_model(str(model_dirs["draft_perturbed"]), "float32", "cpu", cache, "int8")
    (cached,) = (tmp_path / "quantized").glob("*.pt")
    cached.write_bytes(b"torn")
    lm = load_model(str(model_dirs["draft_perturbed"]), "float32", "cpu", cache, "int8")
    assert any(isinstance(m, Int8Linear) for m in lm.model.modules())
    assert torch.load(cached, weights_only=True)  # rewritten whole


def test_a_second_int4_load_reuses_the_cached_layers_and_calibration(model_dirs, tmp_path,
                                                                     monkeypatch):
    import specdec.quantize as quantize_module
    path, cache = str(model_dirs["draft_perturbed"]), str(tmp_path / "cache")
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    uncached = load_model(path, "float32", "cpu", str(tmp_path / "other"), "int4")
    first = load_model(path, "float32", "cpu", cache, "int4")
    (calibration,) = (tmp_path / "cache" / "quantized").glob("*.calibration.json")

    def no_measuring(*args, **kwargs):
        raise AssertionError("calibrated again despite a cached result")

    def no_quantizing(*args, **kwargs):
        raise AssertionError("quantized again despite cached codes")

    monkeypatch.setattr(quantize_module, "_measure_max_rows", no_measuring)
    monkeypatch.setattr(quantize_module, "_int4_codes", no_quantizing)
    second = load_model(path, "float32", "cpu", cache, "int4")
    dense = [[m.dense.weight for m in lm.model.modules() if isinstance(m, Int4Linear)]
             for lm in (first, second)]
    assert dense[0] and all(torch.equal(a, b) for a, b in zip(*dense, strict=True))
    assert all(m.codes is None for m in first.model.modules() if isinstance(m, Int4Linear))
    with torch.inference_mode():
        logits = [lm.model(ids).logits for lm in (uncached, first, second)]
    assert torch.equal(logits[1], logits[2]) and torch.equal(logits[0], logits[1])
    limits = {m.max_rows for m in second.model.modules() if isinstance(m, Int4Linear)}
    assert limits == {json.loads(calibration.read_text())["max_rows"]}
    calibration.write_text("torn")  # an unreadable calibration is measured again
    monkeypatch.undo()
    load_model(path, "float32", "cpu", cache, "int4")
    assert json.loads(calibration.read_text())["max_rows"] in (0, SMALL_ROWS, *CALIBRATION_ROWS)


def test_calibration_sets_one_row_limit_and_changes_speed_only():
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(256, 256) for _ in range(3)))
    quantize(model, "int4")
    limit = calibrate(model, repeats=1)
    assert limit in (0, SMALL_ROWS, *CALIBRATION_ROWS)
    assert {m.max_rows for m in model if isinstance(m, Int4Linear)} == {limit}
    x = torch.randn(12, 256)
    outputs = []
    for rows in (SMALL_ROWS, 32):  # 12 rows: dense product, then low-bit kernel
        for m in model:
            m.max_rows = rows
        outputs.append(model(x))
    assert torch.allclose(outputs[0], outputs[1], atol=1e-4)


def test_calibration_turns_the_low_bit_path_off_where_it_loses_even_at_one_row(monkeypatch):
    """(As int4 with float32 activations does on an AVX2-only CPU: a stand-in kernel that
    sleeps 2 ms per layer.)"""
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(256, 256) for _ in range(3)))
    quantize(model, "int4")
    kernel = Int4Linear.low_bit

    def slow(self, rows):
        time.sleep(0.002)
        return kernel(self, rows)

    monkeypatch.setattr(Int4Linear, "low_bit", slow)
    assert calibrate(model, repeats=1) == 0
    monkeypatch.setattr(Int4Linear, "low_bit", lambda self, rows: pytest.fail("low-bit used"))
    model(torch.randn(1, 256))  # one row: the dense product


# int4 on CUDA (specdec.quantize_cuda). Without a GPU: the selection and refusal logic, and
# the layer against stand-ins for torch's two CUDA kernels that follow their documented
# contract (int4mm.cu); with one: the real kernels.

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_nibble_order_matches_the_cuda_packing_kernels_documented_equivalence():
    """int4mm.cu's matrix_to_m16n8k16_Bint4_layout packs four input bytes v[0..3] into
    v[3]L|v[2]L|v[1]L|v[0]L|v[3]H|v[2]H|v[1]H|v[0]H, documented as equal to packing the
    eight codes c[0..7] (int32 input) into c[7]|c[5]|c[3]|c[1]|c[6]|c[4]|c[2]|c[0]; with
    the low nibble first (the cache's pack_codes) the two would differ."""
    from specdec.quantize import pack_codes
    from specdec.quantize_cuda import pack_nibbles
    torch.manual_seed(0)
    q = torch.randint(0, 16, (16, 8))

    def from_bytes(v):
        v = [int(b) for b in v]
        return sum((v[i] & 0xF) << (16 + 4 * i) | (v[i] >> 4) << (4 * i) for i in range(4))

    def from_codes(c):
        c = [int(x) for x in c]
        return sum(c[2 * i] << (4 * i) | c[2 * i + 1] << (16 + 4 * i) for i in range(4))

    assert all(from_bytes(b) == from_codes(c) for b, c in zip(pack_nibbles(q), q, strict=True))
    assert any(from_bytes(b) != from_codes(c) for b, c in zip(pack_codes(q), q, strict=True))


def test_cuda_int4_layer_is_the_cpu_quantized_model_without_a_dense_copy(fake_cuda_kernels):
    """The same codes, scales and zeros as the CPU layer (only packing and product differ),
    every pass through the int4 kernel whatever its rows, and no dense weight kept."""
    from specdec.quantize_cuda import CudaInt4Linear
    torch.manual_seed(0)
    linear = nn.Linear(256, 64, bias=True).to(torch.bfloat16)
    copy = nn.Linear(256, 64).to(torch.bfloat16)
    copy.load_state_dict(linear.state_dict())
    cpu_dense = Int4Linear(copy, 64)  # (it replaces its linear's weight: a copy)
    layer = CudaInt4Linear(linear, 64)
    floats = sum(t.numel() for t in [*layer.parameters(), *layer.buffers()]
                 if t.is_floating_point())
    assert floats < 256 * 64 / 8  # scales, zeros and bias only
    want_w = cpu_dense.dense.weight.float()                      # the CPU layer's [N, K]
    for rows in (1, SMALL_ROWS + 1, 40):
        x = torch.randn(rows, 256, dtype=torch.bfloat16)[None]  # [1, rows, K]
        got = layer(x)
        assert got.shape == (1, rows, 64) and got.dtype == torch.bfloat16
        want = x.float() @ want_w.t() + linear.bias.float()
        torch.testing.assert_close(got.float(), want, atol=0.1, rtol=0.02)
    strided = torch.randn(3, 5, 256, dtype=torch.bfloat16)[:, -1:, :]
    torch.testing.assert_close(layer(strided), layer(strided.contiguous()))


def test_cuda_refusals_are_clear():
    from specdec.errors import InvalidArgument
    from specdec.quantize_cuda import check
    check("int4", torch.bfloat16, (9, 0))  # H100: allowed
    check("none", torch.float32, (7, 5))
    with pytest.raises(InvalidArgument, match="int8 is CPU only.*use --quantization int4"):
        check("int8", torch.bfloat16, (9, 0))
    with pytest.raises(InvalidArgument, match="needs --dtype bfloat16"):
        check("int4", torch.float16, (9, 0))
    with pytest.raises(InvalidArgument, match="8.0 or newer.*has 7.5"):
        check("int4", torch.bfloat16, (7, 5))


def test_load_model_on_cuda_checks_the_scheme_before_loading(model_dirs, tmp_path,
                                                            monkeypatch):
    from specdec.errors import InvalidArgument
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    with pytest.raises(InvalidArgument, match="int8 is CPU only"):  # (nothing loaded)
        load_model("no/such-model", "bfloat16", "cuda", str(tmp_path), "int8")
    with pytest.raises(InvalidArgument, match="bfloat16"):
        load_model("no/such-model", "float32", "cuda", str(tmp_path), "int4")
    if not torch.cuda.is_available():  # int4 passes the checks: it fails moving to the GPU
        with pytest.raises(Exception) as failed:
            load_model(str(model_dirs["target"]), "bfloat16", "cuda", str(tmp_path), "int4")
        assert not isinstance(failed.value, InvalidArgument)


@cuda
@pytest.mark.parametrize("k, group", [(512, 128), (64, 64), (96, 32)])  # inner k-tiles 8/4/2
def test_cuda_int4_kernel_multiplies_by_the_shared_dequantized_weights(k, group):
    from specdec.quantize import _int4_codes, dequantize_codes
    from specdec.quantize_cuda import CudaInt4Linear
    torch.manual_seed(0)
    linear = nn.Linear(k, 128, bias=True, device="cuda", dtype=torch.bfloat16)
    q, _, _ = _int4_codes(linear.weight.detach(), group)
    layer = CudaInt4Linear(linear, group)
    want_w = dequantize_codes(q, layer.scales_and_zeros, group, torch.bfloat16)
    torch.testing.assert_close(layer.dequantized(), want_w, rtol=2**-7, atol=1e-6)
    x = torch.randn(1, 300, k, device="cuda", dtype=torch.bfloat16)
    many = layer(x)
    torch.testing.assert_close(many.float(), (x.float() @ want_w.float().t()
                                              + linear.bias.float()), atol=0.05, rtol=0.02)
    one_by_one = torch.cat([layer(x[:, i:i + 1]) for i in range(0, 300, 37)], dim=1)
    torch.testing.assert_close(many[:, ::37], one_by_one)


@cuda
def test_int4_model_loads_on_cuda_and_approximates_the_original(model_dirs, tmp_path):
    from specdec.quantize_cuda import CudaInt4Linear
    path = str(model_dirs["target"])
    full = load_model(path, "bfloat16", "cuda", str(tmp_path))
    lm = load_model(path, "bfloat16", "cuda", str(tmp_path), "int4")
    assert lm.quantization == "int4" and lm.device.type == "cuda"
    assert not any(isinstance(m, nn.Linear) for m in lm.model.modules())
    assert any(isinstance(m, CudaInt4Linear) for m in lm.model.modules())
    assert not list((tmp_path / "quantized").glob("*.pt"))  # nothing cached on CUDA
    ids = torch.tensor([[5, 17, 42, 7, 99, 3, 8, 9, 10, 11, 12, 13]], device="cuda")
    with torch.inference_mode():
        ref, got = full.model(ids).logits[0].float(), lm.model(ids).logits[0].float()
    assert nn.functional.cosine_similarity(got, ref, dim=-1).min() >= 0.8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rebuilding_dense_weights_from_codes_is_bit_identical_to_the_plain_expression(dtype):
    """The cached start's rebuild (dense_from_codes: in place, a few rows at a time) gives
    exactly what the plain expressions gave before (issue 30), as does dequantize_codes."""
    from specdec.quantize import (
        _int4_codes,
        dense_from_codes,
        dequantize_codes,
        pack_codes,
        tinygemm_scales_and_zeros,
    )
    torch.manual_seed(0)
    w = torch.randn(48, 256) * 0.05
    q, scales, zeros = _int4_codes(w, 64)
    sz = tinygemm_scales_and_zeros(scales, zeros, 48, dtype)
    packed = pack_codes(q)
    plain_q = torch.stack([packed & 15, packed >> 4], dim=2).reshape(48, -1).float()
    s = sz.float().transpose(0, 1)
    plain = ((plain_q.reshape(48, -1, 64) - 8) * s[..., :1] + s[..., 1:]).reshape(48, 256)
    assert torch.equal(plain_q, q)
    assert torch.equal(dequantize_codes(q, sz, 64, dtype), plain.to(dtype))
    for step in (256 * 5, 1 << 20):  # 5 rows a step (the last step 3), or all at once
        rebuilt = dense_from_codes(packed, sz, 64, dtype, step=step)
        assert rebuilt.dtype == dtype and torch.equal(rebuilt, plain.to(dtype))

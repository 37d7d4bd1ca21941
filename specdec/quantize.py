"""Weight-only int8 / int4 linear layers on torch's own CPU kernels (int4 on CUDA too).

Every token step of a small model streams all its weights; with 8- or 4-bit weights it
streams a half or a quarter of the bytes. torch's kernels dequantize per row of activations,
so they pay off for few rows at a time (a draft's 1-token steps) and not for a target's
(K+1)-token verify passes (docs/benchmarks.md).

- int8: per output channel symmetric scales, `torch._weight_int8pack_mm`.
- int4: groups of `group_size` input channels with a scale and zero point each (the
  "tinygemm" layout of gpt-fast and torchao), `aten._weight_int4pack_mm_for_cpu`.

Activations stay in the model's dtype. Passes of more rows than a layer's `max_rows` (a
prefill, a large batch) use a plain matrix product with the dequantized weights (in the
model's dtype, where the original weights were): there the low-bit kernels are slower, and a
150-token prefill would cost ~150 single steps. Both paths compute the same quantized model,
up to rounding. Where the two cross depends on the shapes and the machine (4-5 rows for the
1.5B target's 1536x8960 weights here, beyond 16 for the 0.5B draft's), so `calibrate`
measures it on the model's own layers when it is loaded. So quantization speeds up small
passes and costs memory (the low-bit copy on top of the dense one). Layers whose shapes a
kernel does not take stay as they are (counted in the returned summary).
On CUDA, int4 runs torch's CUDA int4 kernel on the same codes, scales and zeros, with no
dense copy, and int8 is refused (specdec.quantize_cuda; not yet run on a GPU).
The scheme "fp16" (fp16 weights, float32 activations, fbgemm) lives in specdec.fp16_weights.

Quantizing a 0.5B model takes tens of seconds on a small CPU, so the packed weights can be
cached (`cache_file`): a later start with the same weights, scheme and torch version loads
them instead.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import structlog
import torch
from torch import nn

from . import fp16_weights
from .config import QUANTIZATIONS
from .gguf_int4 import GROUP as GGUF_GROUP

log = structlog.get_logger(__name__)

SCHEMES = QUANTIZATIONS
INT4_GROUP_SIZES = (128, 64, 32)
INT4_INNER_K_TILES = 2
REBUILD_STEP = 1 << 20  # weights per step of dense_from_codes: 4 MiB of float32, in the L3
SMALL_ROWS = 4  # passes of at most this many rows use the low-bit kernels (until calibrated)
CALIBRATION_ROWS = (4, 8, 16, 32)  # the row limits calibrate() tries


class _LowBit(nn.Module):
    """Keeps the layer for passes of many rows, its weights replaced by the dequantized
    low-bit ones: every pass computes the same quantized model, whatever its number of rows
    (otherwise a target's output would depend on K and on the batch)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.dense = linear  # (or an fp16_weights.Fp16Linear of it: use_fp16_dense_paths)
        self.bias = linear.bias  # (shared with the dense layer)
        self.dtype = linear.weight.dtype  # of the activations
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.max_rows = SMALL_ROWS  # passes of more rows use the dense product

    def _use_dequantized(self, weight: torch.Tensor) -> None:
        # a new tensor, not a copy into the old one: an output head may share its weight
        # with the input embeddings, which must stay as they are
        self.dense.weight = nn.Parameter(weight, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).contiguous()  # (the kernels need packed rows)
        if rows.shape[0] > self.max_rows:
            return self.dense(x)
        y = self.low_bit(rows).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def low_bit(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def packed(self) -> dict:
        """What restore() needs to rebuild this layer without quantizing again; int4 adds
        its 4-bit codes (two per byte), which the packed kernel layout cannot give back,
        so that a restore rebuilds the dense weights without quantizing them again."""
        extra = {} if getattr(self, "codes", None) is None else {"codes": self.codes}
        return {"kind": type(self).__name__, "group_size": getattr(self, "group_size", 0),
                **{name: buf for name, buf in self.named_buffers() if "." not in name},
                **extra}

    @staticmethod
    def restore(linear: nn.Linear, packed: dict) -> _LowBit:
        cls = {"Int8Linear": Int8Linear, "Int4Linear": Int4Linear}[packed["kind"]]
        layer = cls.__new__(cls)
        _LowBit.__init__(layer, linear)
        for name, value in packed.items():
            if isinstance(value, torch.Tensor) and name != "codes":
                layer.register_buffer(name, value)
        if packed["group_size"]:
            layer.group_size = packed["group_size"]
        codes = packed.get("codes")
        if codes is not None:
            layer._use_dequantized(dense_from_codes(codes, layer.scales_and_zeros,
                                                    layer.group_size, linear.weight.dtype))
        elif isinstance(layer, Int4Linear):  # a cache from before the codes: quantize the
            q, _, _ = _int4_codes(linear.weight.detach(), layer.group_size)  # once more and
            layer.codes = pack_codes(q)  # keep them, so quantize() rewrites the cache
            layer._use_dequantized(layer._from_codes(q, linear.weight.dtype))
        else:
            layer._use_dequantized(layer.dequantized(linear.weight))
        return layer


class Int8Linear(_LowBit):
    def __init__(self, linear: nn.Linear):
        super().__init__(linear)
        w = linear.weight.detach().float()                                   # [N, K]
        scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127                   # [N]
        self.register_buffer("qweight", torch.round(w / scales[:, None]).clamp(-128, 127)
                             .to(torch.int8))
        self.register_buffer("scales", scales.to(linear.weight.dtype))
        self._use_dequantized(self.dequantized(linear.weight))

    def dequantized(self, weight: torch.Tensor) -> torch.Tensor:                # [N, K]
        return (self.qweight.float() * self.scales.float()[:, None]).to(weight.dtype)

    def low_bit(self, rows: torch.Tensor) -> torch.Tensor:                  # [M, K] -> [M, N]
        return torch._weight_int8pack_mm(rows, self.qweight, self.scales)


def int4_group_size(k: int) -> int | None:
    return next((g for g in INT4_GROUP_SIZES if k % g == 0), None)


def _int4_codes(w: torch.Tensor, group_size: int):
    """Asymmetric 4-bit codes of w [N, K] per group of group_size input channels: (q [N, K]
    in [0, 15], scales, zeros [N*K/G, 1]) with w ~ (q - 8) * scale + zero."""
    groups = w.float().reshape(-1, group_size)                               # [N*K/G, G]
    lo, hi = groups.amin(dim=1, keepdim=True), groups.amax(dim=1, keepdim=True)
    scales = (hi - lo).clamp(min=1e-6) / 15
    q = ((groups - lo) / scales).round().clamp(0, 15)
    return q.reshape(w.shape), scales, lo + scales * 8


def tinygemm_scales_and_zeros(scales: torch.Tensor, zeros: torch.Tensor, n: int,
                              dtype: torch.dtype) -> torch.Tensor:
    """_int4_codes' scales and zeros [N*K/G, 1] -> [K/G, N, 2] in dtype, the layout both
    torch int4 kernels (CPU and CUDA) take."""
    return torch.cat([scales.reshape(n, -1, 1), zeros.reshape(n, -1, 1)], dim=2) \
        .transpose(0, 1).contiguous().to(dtype)


def dequantize_codes(q: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
                     dtype: torch.dtype, in_place: bool = False) -> torch.Tensor:
    """(q - 8) * scale + zero [N, K] in dtype, with the scales and zeros the kernels use, in
    float32. in_place: q (float32 codes, contiguous) holds the float32 result afterwards. The
    same operations in the same order either way (bit-identical), but full-size temporaries
    cost more than the arithmetic: a cached start rebuilds every layer (issue 30)."""
    n, k = q.shape
    sz = scales_and_zeros.float().transpose(0, 1)                            # [N, K/G, 2]
    groups = q.view(n, -1, group_size).sub_(8) if in_place else q.reshape(n, -1, group_size) - 8
    groups.mul_(sz[..., :1]).add_(sz[..., 1:])
    return groups.view(n, k).to(dtype)


def pack_codes(q: torch.Tensor) -> torch.Tensor:
    """4-bit codes [N, K] (values 0..15, K even) -> [N, K/2] uint8, two per byte."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def dense_from_codes(packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
                     dtype: torch.dtype, step: int = REBUILD_STEP) -> torch.Tensor:
    """The dense weights [N, K] in dtype from pack_codes' [N, K/2] uint8: the codes unpacked
    and dequantize_codes'd in place, bit for bit what the two give apart, a few rows at a time
    (about `step` weights) so the work stays in the CPU's cache, each weight written to memory
    once. A cached start rebuilds every layer this way (issue 30)."""
    n, half = packed.shape
    rows = max(1, step // (2 * half))
    out = torch.empty(n, 2 * half, dtype=dtype)
    scratch = None if dtype == torch.float32 else torch.empty(rows, 2 * half)
    for r in range(0, n, rows):
        part = packed[r:r + rows]
        q = out[r:r + rows] if scratch is None else scratch[:part.shape[0]]
        pairs = q.view(-1, half, 2)
        pairs[..., 0] = part & 15
        pairs[..., 1] = part >> 4
        dequantize_codes(q, scales_and_zeros[:, r:r + rows], group_size, torch.float32,
                         in_place=True)
        if scratch is not None:
            out[r:r + rows] = q  # (rounds as .to(dtype) does)
    return out


def given_codes(blocks: tuple):
    """A GGUF tensor's 4-bit blocks (specdec.gguf.int4_blocks' value) as _int4_codes' result
    with group size gguf_int4.GROUP: (q float32 [N, K], scales, zeros [N*K/G, 1])."""
    from .gguf_int4 import int4_codes
    q, scales, zeros = int4_codes(*blocks)
    return q.float(), scales.reshape(-1, 1), zeros.reshape(-1, 1)


class Int4Linear(_LowBit):
    def __init__(self, linear: nn.Linear, group_size: int, codes: tuple | None = None):
        """codes: given_codes' (q, scales, zeros) to take as they are (a GGUF's own 4-bit
        weights) instead of quantizing the layer's weights."""
        super().__init__(linear)
        n, k = linear.weight.shape
        q, scales, zeros = codes or _int4_codes(linear.weight.detach(), group_size)
        dtype = linear.weight.dtype
        self.register_buffer("qweight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            q.to(torch.int32), INT4_INNER_K_TILES))
        self.register_buffer("scales_and_zeros",
                             tinygemm_scales_and_zeros(scales, zeros, n, dtype))
        self.group_size = group_size
        self.codes = pack_codes(q)  # [N, K/2] uint8, for the cache only (quantize drops it)
        self._use_dequantized(self._from_codes(q, dtype))

    def _from_codes(self, q: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:  # [N, K]
        """The dense weights; consumes q (float32 codes, overwritten)."""
        return dequantize_codes(q, self.scales_and_zeros, self.group_size, dtype, in_place=True)

    def low_bit(self, rows: torch.Tensor) -> torch.Tensor:                  # [M, K] -> [M, N]
        return torch.ops.aten._weight_int4pack_mm_for_cpu(
            rows, self.qweight, self.group_size, self.scales_and_zeros)


def fastest_pass(calls: list, repeats: int = 2) -> float:
    """Seconds of the fastest of `repeats` passes over every call (each a no-argument
    callable), after one more pass that warms up; in inference mode."""
    best = float("inf")
    with torch.inference_mode():
        for i in range(repeats + 1):
            start = time.perf_counter()
            for call in calls:
                call()
            best = best if i == 0 else min(best, time.perf_counter() - start)
    return best


def _calibration_key(layers: list) -> str:
    """What a calibration result depends on: this machine's CPU and threads, torch, and the
    layers' shapes, dtypes and dense paths."""
    cpu = platform.processor()
    try:
        cpu = next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    except OSError:
        pass
    return json.dumps([platform.machine(), cpu, os.cpu_count(), torch.get_num_threads(),
                       torch.__version__, CALIBRATION_ROWS, SMALL_ROWS,
                       [(m.in_features, m.out_features, str(m.dtype), type(m).__name__,
                         type(m.dense).__name__) for m in layers]])


def calibrate(model: nn.Module, repeats: int = 2, cache_file: Path | None = None) -> int:
    """Set every low-bit layer's max_rows to the largest of CALIBRATION_ROWS (at least
    SMALL_ROWS) at which its low-bit kernels, summed over the model's layers, still beat the
    dense product on this machine, or to 0 where they lose even for one row; returns it. Both
    paths compute the same model, so this changes speed only. With cache_file (a JSON file),
    reuse the result saved there for the same machine, torch and layers (_calibration_key),
    else measure and save it."""
    layers = [m for m in model.modules() if isinstance(m, _LowBit)]
    if not layers:
        return SMALL_ROWS
    key = _calibration_key(layers)
    if cache_file is not None and cache_file.exists():
        try:
            saved = json.loads(cache_file.read_text())
            if saved["key"] == key:
                for layer in layers:
                    layer.max_rows = int(saved["max_rows"])
                return int(saved["max_rows"])
        except Exception as e:  # a torn or foreign file: measure again and rewrite it
            log.warning("ignoring an unreadable calibration cache", path=str(cache_file),
                        error=str(e))
    limit = _measure_max_rows(layers, repeats)
    for layer in layers:
        layer.max_rows = limit
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_suffix(".partial")
        partial.write_text(json.dumps({"key": key, "max_rows": limit}))
        partial.replace(cache_file)  # atomic
    return limit


def _measure_max_rows(layers: list, repeats: int) -> int:
    dtype = layers[0].dtype

    def seconds(path, rows: int) -> float:
        xs = [torch.randn(rows, layer.in_features, dtype=dtype) for layer in layers]
        return fastest_pass([functools.partial(path, layer, x)
                             for layer, x in zip(layers, xs, strict=True)], repeats)

    low_bit, dense = (lambda layer, x: layer.low_bit(x)), (lambda layer, x: layer.dense(x))
    if seconds(low_bit, 1) >= seconds(dense, 1):  # (e.g. int4 with float32 activations on
        return 0  # an AVX2-only CPU: ~10x a float32 product): every pass takes the dense path
    limit = SMALL_ROWS
    for rows in CALIBRATION_ROWS:
        if seconds(low_bit, rows) >= seconds(dense, rows):
            break
        limit = max(limit, rows)
    return limit


def use_fp16_dense_paths(model: nn.Module) -> int:
    """For a bf16 model on a CPU without bf16 matrix kernels: the dense paths of its low-bit
    layers (passes of more than max_rows rows: prefills) and the linear layers left dense
    multiply fp16 copies of their weights in float32 (fbgemm; exact for bf16 weights) instead
    of bf16 products that cost ~a 1-token step per row there. Call before calibrate(), which
    then compares the low-bit kernels with these. Returns how many layers that covers."""
    low_bit = [m for m in model.modules() if isinstance(m, _LowBit)]
    for layer in low_bit:
        layer.dense = fp16_weights.Fp16Linear(layer.dense)
    return len(low_bit) + fp16_weights.pack_linears(model)["quantized"]


def quantize(model: nn.Module, scheme: str, cache_file: Path | None = None,
             blocks: Callable[[], dict] | None = None) -> dict[str, int]:
    """Replace the model's nn.Linear layers (the output head included) in place; with
    cache_file, load the packed layers from it if it exists, else save them there.
    blocks(): for int4, the layers a GGUF file holds as 4-bit blocks (specdec.gguf.
    int4_blocks), which keep those weights (group size 32) instead of being quantized again;
    called only when there is no cache to load.
    Returns {"quantized": n, "kept": m, "cached": 0 or 1, "repacked": r}."""
    if scheme not in SCHEMES:
        raise ValueError(f"quantization {scheme!r}: expected one of {', '.join(SCHEMES)}")
    counts = {"quantized": 0, "kept": 0, "cached": 0, "repacked": 0}
    if scheme == "none":
        return counts
    if scheme == fp16_weights.SCHEME:  # fbgemm packs in a second or so: nothing to cache
        return {**fp16_weights.use_fp16_weights(model), "cached": 0}
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    repack = blocks is not None and scheme == "int4"
    if any(m.weight.is_cuda for _, m in targets):  # (cache_file unused: quantize_cuda)
        from .quantize_cuda import quantize_model
        return quantize_model(model, scheme, targets, blocks() if repack else {})
    saved = None
    if cache_file is not None and cache_file.exists():
        try:
            saved = torch.load(cache_file, weights_only=True)
            counts["cached"] = 1
        except Exception as e:  # a torn or foreign file: quantize again and rewrite it
            log.warning("ignoring an unreadable quantization cache", path=str(cache_file),
                        error=str(e))
    given = blocks() if repack and saved is None else {}
    for name, linear in targets:
        new = None
        if saved is not None:
            new = _LowBit.restore(linear, saved[name]) if name in saved else None
        elif linear.weight.device.type == "cpu":
            if scheme == "int8":
                new = Int8Linear(linear)
            elif linear.out_features % 8 == 0 and name in given:
                new = Int4Linear(linear, GGUF_GROUP, given_codes(given[name]))
                counts["repacked"] += 1
            elif (g := int4_group_size(linear.in_features)) is not None and \
                    linear.out_features % 8 == 0:
                new = Int4Linear(linear, g)
        if new is None:
            counts["kept"] += 1
            continue
        fp16_weights.replace_module(model, name, new)
        counts["quantized"] += 1
    stale = saved is not None and any(getattr(m, "codes", None) is not None
                                      for m in model.modules() if isinstance(m, Int4Linear))
    if cache_file is not None and (saved is None or stale):
        packed = {name: m.packed() for name, m in model.named_modules()
                  if isinstance(m, _LowBit)}
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_suffix(".partial")
        torch.save(packed, partial)
        partial.replace(cache_file)  # atomic: a reader never sees half a file
    for m in model.modules():  # the codes were kept for the cache only
        if isinstance(m, Int4Linear):
            m.codes = None
    return counts

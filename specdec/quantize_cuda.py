"""Weight-only int4 on CUDA through torch's own int4 kernel (tinygemm). NOT YET RUN ON A GPU:
written and tested on a CPU-only machine against the kernel's documented contract; the
CUDA tests in tests/test_quantize.py and bench/gpu.py's phase Q check it on a GPU.

The quantized model is specdec.quantize's: the same codes, scales and zeros (_int4_codes,
tinygemm_scales_and_zeros), so a draft quantized on CUDA is the model quantized on a CPU,
up to rounding. Only the packing and the product differ (aten/src/ATen/native/cuda/int4mm.cu):
- packing: codes [N, K] -> uint8 [N, K/2] with the even input channel in the HIGH nibble
  (pack_nibbles; the order _convert_weight_to_int4pack documents for its uint8 input, and
  the one gpt-fast and torchao feed it) -> int32 [N/8, K/(16*inner_k_tiles), 32,
  inner_k_tiles/2] by aten._convert_weight_to_int4pack on the GPU;
- product: aten._weight_int4pack_mm(x bf16 [M, K] contiguous, packed, group_size,
  scales_and_zeros bf16 [K/G, N, 2]) -> bf16 [M, N], w = (q - 8) * scale + zero; compute
  capability 8.0 or newer; group sizes 32-256; N a multiple of 8.

No dense copy of a layer stays on the GPU: there 4-bit weights are for memory and bandwidth.
Rule for passes of many rows: every pass, whatever its row count, runs the int4 kernel. It
takes any number of rows (in tiles of 16) and each output row depends on its own input row
only, so a pass computes the same model as 1-row steps whatever its row count (no switch
point to calibrate, unlike the CPU's). For a prefill it is slower than cuBLAS on dense bf16
would be, but a transient dequantized weight per call would write and read a bf16 copy of
every layer per pass (4x the int4 bytes, twice) and briefly hold the largest one; a prefill
is once per request. bench/gpu.py phase Q times a 128-row pass beside bf16 to revisit this.

int8 is refused on CUDA (check()): torch's CUDA _weight_int8pack_mm is a reference kernel
(one thread per output walking K, activations copied to float32; int8mm.cu), and torchao's
int8 weight-only linear outside torch.compile is the unfused `mm(x, w.to(x.dtype)) * scale`
(it streams the int8 weight and writes and reads a dense copy): neither is a kernel that
would make a step cheaper than the bf16 product it replaces.
"""

from __future__ import annotations

import torch
from torch import nn

from . import fp16_weights
from .errors import InvalidArgument

INNER_K_TILES = (8, 4, 2)  # the kernel's choices; the largest that divides K is used
MIN_CAPABILITY = (8, 0)  # tinygemm's mma instructions: Ampere or newer


def check(scheme: str, dtype: torch.dtype, capability: tuple[int, int]) -> None:
    """Raise InvalidArgument unless `scheme` can run on a CUDA device of `capability` with
    activations in `dtype` (before anything is loaded)."""
    if scheme == "int8":
        raise InvalidArgument(
            "--quantization int8 is CPU only: on CUDA neither torch's _weight_int8pack_mm "
            "(a reference kernel) nor torchao's int8 weight-only product (unfused outside "
            "torch.compile) would beat the bf16 product; use --quantization int4 (torch's "
            "int4 kernel) or none")
    if scheme != "int4":
        return
    if dtype != torch.bfloat16:
        raise InvalidArgument(f"--quantization int4 on CUDA needs --dtype bfloat16 (or auto): "
                              f"torch's int4 kernel takes bf16 activations only, not {dtype}")
    if tuple(capability) < MIN_CAPABILITY:
        raise InvalidArgument(
            "--quantization int4 on CUDA needs compute capability "
            f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer (torch's int4 kernel); this "
            f"GPU has {capability[0]}.{capability[1]}: use --quantization none")


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """4-bit codes [N, K] (0..15, K even) -> uint8 [N, K/2], channel 2i in the high nibble and
    2i+1 in the low one: the input _convert_weight_to_int4pack takes (unlike the cache's
    specdec.quantize.pack_codes, low nibble first)."""
    q = q.to(torch.uint8)
    return (q[:, 0::2] << 4) | q[:, 1::2]


def inner_k_tiles(k: int) -> int:
    return next(t for t in INNER_K_TILES if k % (16 * t) == 0)


# the two kernels, module-level so that tests without a GPU can stand in for them
def _pack(nibbles: torch.Tensor, tiles: int) -> torch.Tensor:
    return torch.ops.aten._convert_weight_to_int4pack(nibbles, tiles)


def _mm(rows: torch.Tensor, packed: torch.Tensor, group_size: int,
        scales_and_zeros: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten._weight_int4pack_mm(rows, packed, group_size, scales_and_zeros)


class CudaInt4Linear(nn.Module):
    """An nn.Linear as 4-bit codes in the tinygemm layout, bf16 scales and zeros per group of
    group_size input channels, and the layer's bias; no dense weight."""

    def __init__(self, linear: nn.Linear, group_size: int, codes: tuple | None = None):
        """codes: quantize.given_codes' (a GGUF's own 4-bit weights), else quantized here."""
        super().__init__()
        from .quantize import _int4_codes, tinygemm_scales_and_zeros
        n, k = linear.weight.shape
        q, scales, zeros = codes or _int4_codes(linear.weight.detach(), group_size)
        dev = linear.weight.device  # (a GGUF's codes are read on the CPU)
        q, scales, zeros = (t.to(dev) for t in (q, scales, zeros))
        self.in_features, self.out_features = k, n
        self.group_size = group_size
        self.register_buffer("qweight", _pack(pack_nibbles(q).contiguous(), inner_k_tiles(k)))
        self.register_buffer("scales_and_zeros",
                             tinygemm_scales_and_zeros(scales, zeros, n, torch.bfloat16))
        self.bias = linear.bias  # (an nn.Parameter or None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).contiguous()  # (the kernel needs packed rows)
        y = _mm(rows, self.qweight, self.group_size, self.scales_and_zeros)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def dequantized(self) -> torch.Tensor:
        """The weights [N, K] the kernel multiplies by, read through the kernel itself (the
        identity times them: one product per output, exact). For checks, not for serving."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16, device=self.qweight.device)
        return _mm(eye, self.qweight, self.group_size, self.scales_and_zeros).t().contiguous()


def quantize_model(model: nn.Module, scheme: str, targets: list, given: dict
                   ) -> dict[str, int]:
    """specdec.quantize.quantize for layers on a CUDA device: each (name, nn.Linear) of
    targets the kernel takes becomes a CudaInt4Linear (from the GGUF blocks in `given`
    where it has them). Nothing is cached: the quantization is elementwise work on the GPU,
    and the packed layout is the GPU kernel's."""
    from .quantize import GGUF_GROUP, given_codes, int4_group_size
    device = next(m.weight.device for _, m in targets if m.weight.is_cuda)
    check(scheme, next(m.weight.dtype for _, m in targets if m.weight.is_cuda),
          torch.cuda.get_device_capability(device))
    counts = {"quantized": 0, "kept": 0, "cached": 0, "repacked": 0}
    for name, linear in targets:
        g = int4_group_size(linear.in_features)
        if g is None or linear.out_features % 8 or linear.weight.device != device:
            counts["kept"] += 1
            continue
        if name in given:
            new = CudaInt4Linear(linear, GGUF_GROUP, given_codes(given[name]))
            counts["repacked"] += 1
        else:
            new = CudaInt4Linear(linear, g)
        fp16_weights.replace_module(model, name, new)
        counts["quantized"] += 1
    return counts

"""bf16 passes of many rows on a CPU without bf16 matrix kernels, computed in float32.

Where oneDNN has no bf16 kernels (no AVX-512 or AMX: e.g. AVX2-only hosts), torch's bf16
matrix product costs about as much per row as a 1-token step does: measured on a 2-core
AVX2 host, one 8960x1536 weight took 25 ms for 16 rows, 61 ms for 40, 178 ms for 118, while
converting the weight to float32 first and multiplying there took 54, 60 and 91 ms (the
conversion alone ~31 ms). So a prefill of a long prompt, the costliest pass there is, runs
about twice as fast (more for longer prompts) with its products in float32, and 1-token
steps keep bf16's halved weight traffic. The weights stay bf16 (no copy is kept); only a
pass of at least WIDE_ROWS rows converts them, layer by layer. Both paths accumulate in
float32 and round to bf16; they differ only in the order of the sums.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

WIDE_ROWS = 64  # passes of at least this many rows compute in float32 (break-even ~40 rows)


def upcast_wide_passes(model: nn.Module, min_rows: int = WIDE_ROWS) -> int:
    """Make the bf16 linear layers of `model` compute passes of at least min_rows rows in
    float32; returns how many layers that covers."""
    layers = [m for m in model.modules()
              if type(m) is nn.Linear and m.weight.dtype == torch.bfloat16]
    for linear in layers:
        linear.forward = functools.partial(_forward, linear, min_rows)
    return len(layers)


def _forward(linear: nn.Linear, min_rows: int, x: torch.Tensor) -> torch.Tensor:
    if x.numel() < min_rows * linear.in_features:  # [..., in] with fewer than min_rows rows
        return F.linear(x, linear.weight, linear.bias)
    bias = None if linear.bias is None else linear.bias.float()
    return F.linear(x.float(), linear.weight.float(), bias).to(x.dtype)

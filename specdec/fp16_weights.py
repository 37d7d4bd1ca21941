"""Half-precision weights multiplied in float32 on a CPU (fbgemm's fp16 matrix product).

Where oneDNN has no bf16 matrix kernels (x86 CPUs with AVX2 but no AVX-512 or AMX), a bf16
product costs about as much per row as a whole 1-token step, so a (K+1)-row verify costs
~K+1 steps and speculation cannot pay (docs/benchmarks.md). fbgemm, built into every x86
torch, multiplies fp16 weights (converted to float32 in registers, F16C) with float32
activations at any number of rows. Measured on a 2-core AVX2 host (`python -m bench.rows`),
one 8960x1536 weight: 1.41 ms for 1 row and 2.02 ms for 5 (bf16: 1.84 and 6.93); the 1.5B
target's step ~170 ms, its 5-row verify ~200-240 ms, its 120-token prefill ~1.9 s (bf16:
~200-350 ms, ~800-1,000 ms, 7-8 s; docs/benchmarks.md).

A bf16 checkpoint loses nothing: a bf16 value is exact in fp16 unless its magnitude is above
65504 or below ~2^-17 (fp16's subnormals); `use_fp16_weights` counts the weights fp16 rounds
and the loader logs them (none in the Qwen2.5-Coder pair). Activations, norms, attention and
logits are float32, so the model computes its bf16 weights more precisely than bf16 would.
As with any matrix kernel, a row's float32 sums may be ordered differently in passes of
different row counts (relative differences ~1e-6), far below bf16's rounding.
"""

from __future__ import annotations

import torch
from torch import nn

SCHEME = "fp16"


def available() -> bool:
    """Whether this torch has fbgemm's fp16 product (x86 builds do)."""
    return ("fbgemm" in torch.backends.quantized.supported_engines
            and hasattr(torch.ops.quantized, "linear_prepack_fp16"))


class Fp16Linear(nn.Module):
    """An nn.Linear whose weight is packed as fp16 for fbgemm; computes in float32 and
    returns the input's dtype (float32 in a model on fp16 weights; bf16 where it stands in for
    a bf16 layer's product, specdec.quantize.use_fp16_dense_paths). The packed weight is not
    a parameter or buffer: `.float()` / `.to()` leave it as it is."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()                              # [N, K]
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.inexact = int((weight.half().float() != weight).sum())  # weights fp16 rounds
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.packed = torch.ops.quantized.linear_prepack_fp16(weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                  # [..., K] -> [..., N]
        rows = x.reshape(-1, self.in_features).float()
        y = torch.ops.quantized.linear_dynamic_fp16(rows, self.packed)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp16"


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the submodule called `name` is."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def pack_linears(model: nn.Module) -> dict[str, int]:
    """Replace the CPU nn.Linear layers of `model` (the output head included) with Fp16Linear,
    in place. Returns {"quantized": layers replaced, "kept": layers left (not on the CPU),
    "inexact_weights": weights fp16 rounded}."""
    counts = {"quantized": 0, "kept": 0, "inexact_weights": 0}
    names = [name for name, m in model.named_modules() if type(m) is nn.Linear]
    for name in names:  # (by name: each bf16 layer is freed as soon as it is replaced)
        linear = model.get_submodule(name)
        if linear.weight.device.type != "cpu":
            counts["kept"] += 1
            continue
        new = Fp16Linear(linear)
        replace_module(model, name, new)
        counts["quantized"] += 1
        counts["inexact_weights"] += new.inexact
    return counts


def use_fp16_weights(model: nn.Module) -> dict[str, int]:
    """pack_linears, then make everything else float32, in place; returns pack_linears'
    counts."""
    if not available():
        raise RuntimeError("this torch has no fbgemm fp16 kernels (x86 builds do): "
                           "--quantization fp16 cannot run here")
    counts = pack_linears(model)
    model.float()  # embeddings, norms: float32 activations throughout
    return counts

"""GGUF 4-bit blocks as int4 codes with a scale and a zero point per 32 values: the layout
specdec.quantize's Int4Linear uses (w = (q - 8) * scale + zero), read straight from the
blocks, so a GGUF model served with --quantization int4 keeps its own 4-bit weights instead
of being dequantized and quantized a second time.

Block formats (llama.cpp's ggml-quants; the `gguf` package's dequantize is the reference):
  * Q4_0: 32 values in 18 bytes: d (fp16), 16 bytes of codes;
    w = d * (q - 8)                       -> scale d, zero 0
  * Q4_1: 32 values in 20 bytes: d, m (fp16), 16 bytes of codes;
    w = d * q + m                         -> scale d, zero 8 d + m
  * Q4_K: 256 values in 144 bytes: d, dmin (fp16), 12 bytes of eight 6-bit scales sc and
    eight 6-bit mins mn, 128 bytes of codes; sub-block j of 32 values:
    w = d * sc[j] * q - dmin * mn[j]      -> scale d sc[j], zero 8 d sc[j] - dmin mn[j]
In a 32-value block, value i < 16 is the low nibble of byte i and value i + 16 its high
nibble; in a Q4_K super-block, sub-blocks 2j and 2j + 1 are the low and high nibbles of
bytes 32j .. 32j + 31. Other types (Q5_0, Q6_K, Q8_0, …) hold more than 4 bits: None.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf.quants import Q4_K  # (its 6-bit scale and min unpacking)

GROUP = 32  # values per scale and zero point, for every format here
_BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q4_K": 144}


def repackable(type_name: str) -> bool:
    return type_name in _BLOCK_BYTES


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[runs, B] bytes -> [runs, 2B] codes: the low nibbles, then the high ones."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _f16(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32)[..., 0]


def int4_codes(type_name: str, rows: np.ndarray
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """rows: [N, bytes per row] uint8 blocks of one tensor of type `type_name` (repackable).
    Returns (codes [N, K] uint8 in 0..15, scales [N, K/32] float32, zeros [N, K/32] float32)
    with w = (codes - 8) * scale + zero for each 32 values: the values the `gguf` package
    dequantizes the blocks to, up to float32 rounding."""
    n = rows.shape[0]
    blocks = rows.reshape(-1, _BLOCK_BYTES[type_name])                   # [N * blocks, bytes]
    if type_name == "Q4_K":
        d, dmin = _f16(blocks[:, 0:2])[:, None], _f16(blocks[:, 2:4])[:, None]
        sc, mn = (x.astype(np.float32) for x in Q4_K.get_scale_min(blocks[:, 4:16]))
        codes = _nibbles(blocks[:, 16:].reshape(-1, 32)).reshape(-1, 8 * 32)
        scales = d * sc                                                  # [N * blocks, 8]
        zeros = 8 * scales - dmin * mn
    else:
        d = _f16(blocks[:, 0:2])[:, None]                                # [N * blocks, 1]
        offset = 4 if type_name == "Q4_1" else 2
        codes = _nibbles(blocks[:, offset:offset + 16])
        scales = d
        zeros = (8 * d + _f16(blocks[:, 2:4])[:, None] if type_name == "Q4_1"
                 else np.zeros_like(d))
    return (torch.from_numpy(np.ascontiguousarray(codes.reshape(n, -1))),
            torch.from_numpy(np.ascontiguousarray(scales.reshape(n, -1))),
            torch.from_numpy(np.ascontiguousarray(zeros.reshape(n, -1))))

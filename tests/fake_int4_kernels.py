"""Stand-ins for torch's two CUDA int4 kernels (specdec.quantize_cuda._pack and _mm) that
follow their documented contract (aten/src/ATen/native/cuda/int4mm.cu), so the CUDA layer's
code runs on a CPU. They check what the real kernels check and decode the uint8 input the
way the packing kernel documents it; they cannot show that the real kernels agree."""

import torch


def fake_pack(nibbles, tiles):
    """Stands in for _convert_weight_to_int4pack: keeps its documented input, uint8 [N, K/2]
    with channel 2i in the high nibble."""
    assert nibbles.dtype == torch.uint8 and nibbles.is_contiguous() and tiles in (2, 4, 8)
    assert nibbles.shape[1] * 2 % (16 * tiles) == 0
    return nibbles.clone()


def fake_mm(rows, packed, group_size, scales_and_zeros):
    """Stands in for _weight_int4pack_mm: bf16 contiguous rows [M, K], scales and zeros
    [K/G, N, 2], w = (q - 8) * scale + zero, bf16 out."""
    assert rows.dtype == torch.bfloat16 and rows.is_contiguous() and rows.dim() == 2
    assert rows.device == packed.device == scales_and_zeros.device  # (the kernel checks it)
    n, k = packed.shape[0], packed.shape[1] * 2
    assert scales_and_zeros.shape == (k // group_size, n, 2)
    assert scales_and_zeros.dtype == torch.bfloat16
    q = torch.stack([packed >> 4, packed & 15], dim=2).reshape(n, k).float()
    sz = scales_and_zeros.float()
    scale, zero = sz[..., 0].t()[..., None], sz[..., 1].t()[..., None]       # [N, K/G, 1]
    w = ((q.reshape(n, -1, group_size) - 8) * scale + zero).reshape(n, k)
    return (rows.float() @ w.t()).to(torch.bfloat16)


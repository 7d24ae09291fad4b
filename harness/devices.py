"""Choosing where and in which precision local models run."""

from __future__ import annotations


def resolve_device(device: str) -> str:
    """``auto``: CUDA, else Apple's MPS, else the CPU; anything else as given."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto``: bfloat16 (float16 without bf16 support) on CUDA, float32 elsewhere."""
    import torch

    if dtype == "auto":
        # Half precision only where kernels exist for it; float32 on CPU, where
        # bfloat16 is slow and float16 unsupported for many operations.
        if device.startswith("cuda"):
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float32"
    if not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r} (use auto, float32, bfloat16 or float16)")
    return dtype

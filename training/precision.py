"""Training precision and memory layout: USE_AMP (auto/true/false) resolved for the device, and CHANNELS_LAST."""

from __future__ import annotations

import contextlib

import torch

from config import Config


def memory_format(cfg: Config, images: torch.Tensor) -> torch.Tensor:
    """CHANNELS_LAST: the batch in channels-last (NHWC) memory, as the model's weights are."""
    return images.contiguous(memory_format=torch.channels_last) if cfg.channels_last else images


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX tiles): where bf16 autocast is a speed-up
    (2.2x images/s on an AVX-512 BF16 host, BENCHMARKS.md); elsewhere oneDNN emulates it."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's probes of cpuid
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """USE_AMP resolved: fp16 on CUDA, bf16 on CPU, or None (fp32). 'auto' is on for CUDA and for a CPU with native
    bf16, off for other CPUs."""
    on = cfg.use_amp if cfg.use_amp != "auto" else device.type == "cuda" or (device.type == "cpu" and native_bf16())
    if not on:
        return None
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def describe_amp(cfg: Config, device: torch.device) -> str:
    """The log's word on precision: 'AMP bf16 (USE_AMP=auto: this CPU has native bf16)'."""
    dtype = amp_dtype(cfg, device)
    name = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "off (fp32)")
    if cfg.use_amp != "auto":
        return f"AMP {name} (USE_AMP={str(cfg.use_amp).lower()})"
    why = ("CUDA" if device.type == "cuda" else "this CPU has native bf16" if dtype else
           "this CPU has no native bf16, which would be emulated")
    return f"AMP {name} (USE_AMP=auto: {why})"


def autocast(cfg: Config, device: torch.device):
    """fp16 on CUDA, bf16 on CPU, or nothing (amp_dtype)."""
    dtype = amp_dtype(cfg, device)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)

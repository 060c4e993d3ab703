"""Flags and helpers shared by several subcommands."""

from __future__ import annotations

import argparse


def device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"],
                   help="compute dtype (default: the checkpoint's on GPU, fp32 on CPU)")


def resolve_device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")

"""Weight-space interpolation of a fine-tuned model with the pretrained one it started from.

    theta = (1 - alpha) * theta_pretrained + alpha * theta_fine_tuned

WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022): fine-tuning on a
small set gains where that set is and forgets elsewhere; the straight line between the two
weight vectors keeps most of both, because a fine-tuned model stays in the pretrained one's
basin. alpha = 0 is the pretrained model, 1 the fine-tuned one. Measured in docs/pretrained.md.

The result is a posepipe checkpoint (model weights and config, no optimizer): ``export-model``,
``posepipe predict`` via export, the evaluation and ``--init`` read it like any other.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch

from posepipe.datasets import atomic
from posepipe.datasets.errors import PosepipeError

from .model import ModelConfig


def interpolate(start: str, checkpoint: Path, alpha: float) -> dict:
    """The interpolated checkpoint's content (``torch.save`` it, or call :func:`write`)."""
    from posepipe.pretrained.cache import sha256_of

    from .init import resolve
    from .train import CHECKPOINT_FORMAT, load_checkpoint

    if not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise PosepipeError(f"--alpha must be between 0 and 1 (0: the pretrained model, 1: the fine-tuned one), got {alpha}")
    _, pretrained = resolve(start)
    ckpt = load_checkpoint(checkpoint)
    tuned = ckpt["model"]
    if set(pretrained) != set(tuned):
        extra = sorted(set(tuned) ^ set(pretrained))[0]
        raise PosepipeError(f"{checkpoint}: its weights are not a fine-tuning of {start} (tensor {extra!r} is in one only)")
    state = {}
    for name, value in tuned.items():
        base = pretrained[name]
        if base.shape != value.shape:
            raise PosepipeError(f"{checkpoint}: tensor {name!r} is {tuple(value.shape)} here, "
                                f"{tuple(base.shape)} in {start}: not a fine-tuning of it")
        if value.is_floating_point():
            mixed = (1.0 - alpha) * base.to(torch.float64) + alpha * value.to(torch.float64)
            state[name] = mixed.to(value.dtype)
        else:
            state[name] = value.clone()
    config = ModelConfig.from_dict(ckpt["config"])
    init = dict(config.init or {})
    init["interpolation"] = {"alpha": alpha, "pretrained": start, "fine_tuned": str(checkpoint),
                             "fine_tuned_sha256": sha256_of(checkpoint)}
    return {"format": CHECKPOINT_FORMAT, "config": {**config.to_dict(), "init": init}, "model": state,
            "step": int(ckpt.get("step", 0)), "epoch": int(ckpt.get("epoch", 0))}


def write(start: str, checkpoint: Path, alpha: float, out: Path) -> Path:
    payload = interpolate(start, checkpoint, alpha)
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic.write_bytes(out, buf.getvalue())
    return out

"""posepipe interpolate (WiSE-FT): fine-tuned weights mixed with the pretrained ones they started from."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch

from posepipe.datasets.errors import PosepipeError
from posepipe.training import interpolate
from posepipe.training.init import resolve
from posepipe.training.train import CHECKPOINT_FORMAT


@pytest.fixture(scope="module")
def lightning(model_cache):
    from posepipe.pretrained.pull import pull

    pull("movenet-lightning", model_cache)
    return "movenet-lightning"


def _fine_tuned(start: str, path, drop: str | None = None):
    config, state = resolve(start)
    gen = torch.Generator().manual_seed(0)
    tuned = {k: (v + 0.01 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v)
             for k, v in state.items() if k != drop}
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "model": tuned, "step": 7}, buf)
    path.write_bytes(buf.getvalue())
    return state, tuned


def test_alpha_walks_the_line_between_the_two(lightning, tmp_path):
    pretrained, tuned = _fine_tuned(lightning, tmp_path / "ft.pt")
    ends = {a: interpolate.interpolate(lightning, tmp_path / "ft.pt", a)["model"] for a in (0.0, 0.5, 1.0)}
    name = next(k for k, v in tuned.items() if v.is_floating_point() and v.numel() > 10)
    torch.testing.assert_close(ends[0.0][name], pretrained[name], rtol=0, atol=1e-7)
    torch.testing.assert_close(ends[1.0][name], tuned[name], rtol=0, atol=1e-7)
    torch.testing.assert_close(ends[0.5][name], (pretrained[name] + tuned[name]) / 2, rtol=0, atol=1e-6)
    out = interpolate.write(lightning, tmp_path / "ft.pt", 0.5, tmp_path / "wise.pt")
    from posepipe.training.export import load_model

    model, config = load_model(out)  # loads like any checkpoint
    assert config.init["interpolation"]["alpha"] == 0.5 and config.init["model"] == lightning
    _, state = resolve(str(out))  # and starts a training run
    torch.testing.assert_close(state[name], ends[0.5][name])


def test_what_is_no_fine_tuning_of_the_start_is_refused(lightning, tmp_path):
    key = next(iter(resolve(lightning)[1]))
    _fine_tuned(lightning, tmp_path / "odd.pt", drop=key)
    with pytest.raises(PosepipeError, match="not a fine-tuning of movenet-lightning"):
        interpolate.interpolate(lightning, tmp_path / "odd.pt", 0.5)
    _fine_tuned(lightning, tmp_path / "ft.pt")
    with pytest.raises(PosepipeError, match="--alpha must be between 0 and 1"):
        interpolate.interpolate(lightning, tmp_path / "ft.pt", 1.5)
    proc = subprocess.run([sys.executable, "-m", "posepipe.flows.cli", "interpolate", "--checkpoint",
                           str(tmp_path / "odd.pt"), "--init", lightning, "--out", str(tmp_path / "x.pt")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "not a fine-tuning" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.pt").exists()

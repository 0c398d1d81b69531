"""MixedRatioSampler: exact ratio on every batch of every rank, deterministic, weighted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from posepipe.datasets import MixedRatioSampler
from posepipe.datasets.mix_plan import PlanError, parse_ratio


def _frame(n_real: int = 300, n_synth: int = 90, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    kinds = np.array(["real"] * n_real + ["synthetic"] * n_synth)
    rng.shuffle(kinds)  # kinds interleaved, as in a manifest that lists several sources
    return pd.DataFrame({"source_kind": kinds, "weight": rng.uniform(1.0, 4.0, len(kinds))})


class _Rows(torch.utils.data.Dataset):
    def __init__(self, frame: pd.DataFrame):
        self.synthetic = torch.tensor((frame["source_kind"] == "synthetic").to_numpy())

    def __len__(self):
        return len(self.synthetic)

    def __getitem__(self, i):
        return i, self.synthetic[i]


@pytest.mark.parametrize("ratio", [(1, 3), (1, 1), (1, 2), (0, 1), (2, 3)])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_batch_of_every_rank_holds_the_ratio(ratio, world):
    frame = _frame()
    k = sum(ratio)
    batch = 4 * k
    per_rank = []
    for rank in range(world):
        sampler = MixedRatioSampler(frame, ratio=ratio, num_replicas=world, rank=rank, seed=11)
        sampler.set_epoch(3)
        loader = DataLoader(_Rows(frame), batch_sampler=sampler.batch_sampler(batch))
        seen = []
        for index, synthetic in loader:
            assert len(index) % k == 0
            assert int(synthetic.sum()) == ratio[0] * len(index) // k  # exactly the ratio, every batch
            seen.extend(index.tolist())
        assert len(seen) == len(sampler)
        per_rank.append(seen)
    assert len({len(s) for s in per_rank}) == 1  # equal lengths: no rank waits in DDP
    # Ranks partition one epoch plan: together they are the plan that every rank computed.
    plan = MixedRatioSampler(frame, ratio=ratio, num_replicas=world, rank=0, seed=11).plan(epoch=3)
    dealt = np.concatenate([np.asarray(per_rank[r]).reshape(-1, k) for r in range(world)])
    assert sorted(map(tuple, dealt)) == sorted(map(tuple, plan))
    # Default epoch: one pass over the real rows, padded to whole blocks per rank.
    blocks = -(-300 // ratio[1])
    assert len(plan) == -(-blocks // world) * world


def test_same_seed_same_plan_other_epoch_or_seed_differs():
    frame = _frame()
    a = MixedRatioSampler(frame, num_replicas=2, rank=1, seed=5)
    b = MixedRatioSampler(frame, num_replicas=2, rank=1, seed=5)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(MixedRatioSampler(frame, num_replicas=2, rank=1, seed=6)) != list(b)


def test_draw_frequencies_match_the_weights():
    """Chi-square goodness of fit, fixed seed. Tolerance: chi2 < df + 6 * sqrt(2 df) per kind
    (six standard deviations of the chi-square's normal approximation)."""
    n_real, n_synth = 200, 100
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({
        "source_kind": ["real"] * n_real + ["synthetic"] * n_synth,
        "weight": np.r_[rng.choice([1.0, 2.0, 4.0], n_real), rng.choice([0.0, 1.0, 3.0], n_synth)],
    })
    sampler = MixedRatioSampler(frame, ratio=(1, 3), seed=2024, num_samples=4 * 60_000)
    counts = np.bincount(np.fromiter(iter(sampler), dtype=np.int64), minlength=len(frame))
    weight = frame["weight"].to_numpy()
    for rows in (np.arange(n_real), np.arange(n_real, n_real + n_synth)):
        w = weight[rows]
        drawn = counts[rows]
        assert (drawn[w == 0] == 0).all()  # zero weight: never drawn
        live = w > 0
        expected = drawn.sum() * w[live] / w[live].sum()
        chi2 = float(((drawn[live] - expected) ** 2 / expected).sum())
        df = int(live.sum()) - 1
        assert chi2 < df + 6 * np.sqrt(2 * df), (chi2, df)
        # And the weight classes are hit in proportion to their total weight (within 2%).
        for value in np.unique(w[live]):
            share = drawn[w == value].sum() / drawn.sum()
            assert share == pytest.approx(w[w == value].sum() / w.sum(), rel=0.02)


def test_without_replacement_uses_each_row_at_most_once_when_there_are_enough():
    frame = _frame(n_real=300, n_synth=120)
    sampler = MixedRatioSampler(frame, ratio=(1, 3), seed=1, replacement=False)
    drawn = sampler.plan().reshape(-1)
    assert len(drawn) == len(np.unique(drawn)) == 400
    assert sampler.with_replacement == {"synthetic": False, "real": False}
    short = MixedRatioSampler(_frame(n_real=300, n_synth=50), ratio=(1, 3), seed=1, replacement=False)
    assert short.with_replacement == {"synthetic": True, "real": False}


def test_batch_size_must_be_whole_blocks():
    sampler = MixedRatioSampler(_frame(), ratio=(1, 3))
    with pytest.raises(ValueError, match="batch size per rank 6 is not a positive multiple of the block size 4"):
        sampler.batch_sampler(6)
    with pytest.raises(ValueError, match="block size 4"):
        sampler.check_batch_size(0)
    sampler.check_batch_size(32)
    with pytest.raises(ValueError, match="num_samples 10"):
        MixedRatioSampler(_frame(), ratio=(1, 3), num_samples=10)
    assert len(MixedRatioSampler(_frame(), ratio=(1, 3), num_samples=12)) == 12


def test_is_a_distributed_sampler_and_reads_the_manifest_file(tmp_path):
    frame = _frame()
    frame["split"] = np.where(np.arange(len(frame)) % 5 == 0, "val", "train")
    path = tmp_path / "manifest.parquet"
    frame.to_parquet(path)
    sampler = MixedRatioSampler(path, ratio="1:2", num_replicas=2, rank=0)
    assert isinstance(sampler, DistributedSampler)
    assert (sampler.manifest["split"] == "train").all() and len(sampler.manifest) == (frame["split"] == "train").sum()
    assert max(sampler) < len(sampler.manifest)  # positions in the train frame


def test_real_only_mix_and_clear_errors():
    real_only = _frame(n_real=50, n_synth=0)
    drawn = list(MixedRatioSampler(real_only, ratio=(0, 1), seed=0))
    assert len(drawn) == 50 and set(drawn) <= set(range(50))
    with pytest.raises(ValueError, match="needs synthetic rows but the manifest has none"):
        MixedRatioSampler(real_only, ratio=(1, 3))
    with pytest.raises(ValueError, match="source_kind 'fake'"):
        MixedRatioSampler(pd.DataFrame({"source_kind": ["real", "fake"], "weight": [1.0, 1.0]}), ratio=(0, 1))
    with pytest.raises(ValueError, match="weight -1.0"):
        MixedRatioSampler(pd.DataFrame({"source_kind": ["real", "real"], "weight": [1.0, -1.0]}), ratio=(0, 1))
    with pytest.raises(ValueError, match="lacks column"):
        MixedRatioSampler(pd.DataFrame({"source_kind": ["real"]}))
    with pytest.raises(ValueError, match="rank 2 is not in"):
        MixedRatioSampler(real_only, ratio=(0, 1), num_replicas=2, rank=2)
    for bad in ("1-3", "0:0", (1, -1), "a:b", (1, 2, 3)):
        with pytest.raises(PlanError, match="SYNTHETIC:REAL"):
            parse_ratio(bad)


_DDP_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    import numpy as np, torch, torch.distributed as dist
    from torch.utils.data import DataLoader, TensorDataset
    from posepipe.datasets import MixedRatioSampler

    dist.init_process_group("gloo")
    sampler = MixedRatioSampler(sys.argv[1], ratio=(1, 3), seed=7)  # world and rank from the group
    kinds = torch.tensor((sampler.manifest["source_kind"] == "synthetic").to_numpy())
    loader = DataLoader(TensorDataset(torch.arange(len(kinds)), kinds), batch_sampler=sampler.batch_sampler(8))
    result = {"rank": dist.get_rank(), "world": sampler.num_replicas, "epochs": []}
    for epoch in range(2):
        sampler.set_epoch(epoch)
        synth_per_batch, seen = [], []
        for index, synthetic in loader:
            synth_per_batch.append([int(synthetic.sum()), len(index)])
            seen.extend(index.tolist())
        plan_hash = hashlib.sha256(sampler.plan().tobytes()).hexdigest()
        result["epochs"].append({"batches": synth_per_batch, "seen": seen, "plan": plan_hash})
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, result)
    if dist.get_rank() == 0:
        with open(sys.argv[2], "w") as fh:
            json.dump(gathered, fh)
    dist.destroy_process_group()
    """
)


def test_torchrun_two_processes_agree_on_the_plan_and_keep_the_ratio(tmp_path):
    frame = _frame(n_real=120, n_synth=40)
    frame["split"] = "train"
    frame.to_parquet(tmp_path / "manifest.parquet")
    script = tmp_path / "ddp_check.py"
    script.write_text(_DDP_SCRIPT)
    out = tmp_path / "ranks.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(tmp_path / "manifest.parquet"), str(out)],
        check=True, env=env, cwd=tmp_path, timeout=600, capture_output=True,
    )
    ranks = json.loads(out.read_text())
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world"] == 2 for r in ranks)
    for epoch in range(2):
        per_rank = [r["epochs"][epoch] for r in ranks]
        assert per_rank[0]["plan"] == per_rank[1]["plan"]  # same plan, no communication
        for r in per_rank:
            assert all(s * 4 == n for s, n in r["batches"])  # 1 synthetic in every 4, every batch
        # 120 real rows / 3 per block = 40 blocks, 20 per rank, 80 samples each.
        assert len(per_rank[0]["seen"]) == len(per_rank[1]["seen"]) == 80
    assert ranks[0]["epochs"][0]["plan"] != ranks[0]["epochs"][1]["plan"]

"""Training and validation data: a mixed manifest's instances, read from the store.

A manifest is a folder written by ``posepipe mix``: ``manifest.parquet`` (instance_id, image_id,
source, source_kind, weight, split) and ``report.json`` naming the store. Keypoints and boxes
come from the store's instances table, image bytes from its shards (``PoseStore.read_image``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.instance_dataset import Instances
from posepipe.datasets.store import PoseStore

from .heatmaps import centernet_targets, gaussian_targets
from .model import HEATMAP_STRIDE
from .transforms import AugmentConfig, PixelAugment, top_down_crop, to_input

TARGETS = ("heatmaps", "centernet")
MANIFEST_COLUMNS = ("instance_id", "image_id", "source", "source_kind", "weight", "split")


@dataclass
class Manifest:
    folder: Path
    rows: pd.DataFrame
    store_root: Path

    def split(self, name: str) -> pd.DataFrame:
        return self.rows[self.rows["split"] == name].reset_index(drop=True)


def load_manifest(folder: str | Path, store: str | Path | None = None) -> Manifest:
    """Read a manifest folder; the store is ``store`` when given, else the one report.json names."""
    folder = Path(folder)
    path = folder / "manifest.parquet"
    if not path.is_file():
        raise PosepipeError(f"{path}: no manifest here (make one with `posepipe mix`)")
    rows = pd.read_parquet(path)
    missing = [c for c in MANIFEST_COLUMNS if c not in rows.columns]
    if missing:
        raise PosepipeError(f"{path}: missing column(s) {', '.join(missing)}")
    if store is None:
        report = folder / "report.json"
        try:
            store = json.loads(report.read_text())["store"]
        except (OSError, ValueError, KeyError, TypeError):
            raise PosepipeError(f"{report}: cannot read field 'store'; pass --store") from None
        if not Path(store).is_absolute() and not Path(store).exists() and (folder / store).exists():
            store = folder / store
    store_root = Path(store)
    if not (store_root / "tables").is_dir():
        raise PosepipeError(f"{store_root}: not a posepipe store (named by {folder})")
    return Manifest(folder, rows.reset_index(drop=True), store_root)


def decode_image(data: bytes, what: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise PosepipeError(f"{what}: image bytes in the store do not decode")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class PoseDataset(torch.utils.data.Dataset):
    """Top-down samples: a normalised crop, its Gaussian targets and per-joint target weights.

    Augmentation draws from a generator seeded by (seed, epoch, index), so a sample is the same
    bytes in any rank or worker and after a resume; call :meth:`set_epoch` each epoch.
    """

    def __init__(
        self,
        store: PoseStore,
        instances: Instances,
        input_size: tuple[int, int],
        train: bool,
        seed: int = 0,
        augment: AugmentConfig | None = None,
        sigma: float = 2.0,
        targets: str = "heatmaps",
    ):
        self.store = store
        self.instances = instances
        self.input_size = input_size
        self.heatmap_size = (input_size[0] // HEATMAP_STRIDE, input_size[1] // HEATMAP_STRIDE)
        self.train = train
        self.seed = seed
        self.augment = (augment or AugmentConfig()) if train else None
        self.pixel = PixelAugment(self.augment.pixel_prob) if train else None
        self.sigma = sigma
        if targets not in TARGETS:
            raise PosepipeError(f"unknown target kind {targets!r}; known: {', '.join(TARGETS)}")
        self.targets = targets  # "heatmaps" (PoseNet) or "centernet" (MoveNet's four heads)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.instances)

    def image(self, i: int) -> np.ndarray:
        ins = self.instances
        data = self.store.read_image(ins.shard[i], int(ins.offset[i]), int(ins.num_bytes[i]))
        return decode_image(data, f"image {ins.image_id[i]} (instance {ins.instance_id[i]})")

    def sample(self, i: int) -> dict:
        ins = self.instances
        rng = np.random.default_rng([self.seed, self.epoch, i]) if self.train else None
        crop = top_down_crop(self.image(i), ins.keypoints[i], ins.bbox[i], self.input_size, rng, self.augment)
        pixels = crop.image
        if self.pixel is not None:
            pixels = self.pixel(pixels, int(rng.integers(2**31)))
        sample = {"image": to_input(pixels), "index": i, "center": crop.center, "scale": crop.scale}
        if self.targets == "centernet":
            sample.update(centernet_targets(crop.joints, self.input_size, HEATMAP_STRIDE))
        else:
            joints = crop.joints.copy()
            joints[:, :2] /= HEATMAP_STRIDE
            sample["target"], sample["target_weight"] = gaussian_targets(joints, self.heatmap_size, self.sigma)
        return sample

    def __getitem__(self, i: int) -> dict:
        s = self.sample(int(i))
        return {k: torch.as_tensor(v) for k, v in s.items()}

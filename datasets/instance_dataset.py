"""A torch Dataset over manifest rows: each item is one person with its decoded image.

This is the plain view a pulled release gives (``open_release``); training wraps the same
lookup with top-down crops and augmentation (``posepipe.training.data``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image

from . import schema
from .errors import PosepipeError
from .store import PoseStore


@dataclass
class Instances:
    """Everything needed to read the listed people, in the order asked for."""

    instance_id: np.ndarray
    image_id: np.ndarray
    keypoints: np.ndarray  # (N, 17, 3) float32
    bbox: np.ndarray  # (N, 4) float64
    shard: np.ndarray
    offset: np.ndarray
    num_bytes: np.ndarray

    def __len__(self) -> int:
        return len(self.instance_id)


def load_instances(store: PoseStore, instance_ids, sources=None, what: str = "manifest") -> Instances:
    """Keypoints, boxes and image locations for ``instance_ids``, in that order."""
    ids = pa.array(list(instance_ids), type=pa.string())
    inst = store.instances(sources)
    inst = inst.filter(pc.is_in(inst.column("instance_id"), value_set=ids))
    pos = {iid: i for i, iid in enumerate(inst.column("instance_id").to_pylist())}
    missing = [iid for iid in ids.to_pylist() if iid not in pos]
    if missing:
        raise PosepipeError(
            f"{what}: instance_id {missing[0]} (and {len(missing) - 1} more) is not in the store {store.root}"
        )
    inst = inst.take(pa.array([pos[iid] for iid in ids.to_pylist()], type=pa.int64()))
    images = store.images(sorted(set(inst.column("source").to_pylist())))
    img_pos = {iid: i for i, iid in enumerate(images.column("image_id").to_pylist())}
    images = images.take(pa.array([img_pos[iid] for iid in inst.column("image_id").to_pylist()], type=pa.int64()))
    return Instances(
        instance_id=np.array(inst.column("instance_id").to_pylist(), dtype=object),
        image_id=np.array(inst.column("image_id").to_pylist(), dtype=object),
        keypoints=schema.keypoints_from_arrow(inst.column("keypoints")).astype(np.float32),
        bbox=schema.bbox_from_arrow(inst.column("bbox")),
        shard=np.array(images.column("shard").to_pylist(), dtype=object),
        offset=images.column("offset").to_numpy(),
        num_bytes=images.column("num_bytes").to_numpy(),
    )


class InstanceDataset(torch.utils.data.Dataset):
    """``dataset[i]`` -> dict(image HxWx3 uint8, keypoints (17, 3) float32, bbox xywh, ids, weight)."""

    def __init__(self, manifest: pd.DataFrame, store: PoseStore):
        self.manifest = manifest.reset_index(drop=True)
        self.store = store
        self.instances = load_instances(store, self.manifest["instance_id"].tolist())

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, i: int) -> dict:
        ins = self.instances
        data = self.store.read_image(ins.shard[i], int(ins.offset[i]), int(ins.num_bytes[i]))
        image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        row = self.manifest.iloc[i]
        return {
            "image": image,
            "keypoints": ins.keypoints[i],
            "bbox": ins.bbox[i].astype(np.float32),
            "instance_id": ins.instance_id[i],
            "image_id": ins.image_id[i],
            "source_kind": row["source_kind"],
            "weight": float(row["weight"]),
        }

"""posepipe.datasets: the canonical store, format readers and writers, mixing and versioning.

Public names are imported lazily so that ``import posepipe.datasets`` stays cheap and does not
pull in torch or DVC for users who only read the store.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "PoseStore": "posepipe.datasets.store",
    "PosepipeError": "posepipe.datasets.errors",
    "ingest_coco": "posepipe.datasets.coco",
    "export_coco": "posepipe.datasets.coco_export",
    "stats": "posepipe.datasets.stats",
    "MixedRatioSampler": "posepipe.datasets.sampler",
    "build_manifest": "posepipe.datasets.mix",
    "MixConfig": "posepipe.datasets.mix",
    "InstanceDataset": "posepipe.datasets.instance_dataset",
    # Releases are pulled with DVC, which lives in the orchestration layer (posepipe.flows).
    "open_release": "posepipe.flows.versioning",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'posepipe.datasets' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

"""The LabelMe config that puts posepipe's convention in the annotator's hands.

It lists the labels (``person`` and the 17 COCO joints, so labelme validates them exactly), the
image-level flag ``crowd``, the shape flags (``occluded`` and ``check`` on joints, ``crowd`` on
person rectangles; ``check`` marks a model's unsure pre-annotations), and saves without embedded image data. labelme itself is never imported here.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import yaml

from posepipe.datasets import atomic

from . import convention


def labelme_config() -> dict:
    joints = "|".join(convention.JOINTS)
    return {
        "labels": list(convention.LABELS),
        "flags": [convention.CROWD_FLAG],
        "label_flags": {
            f"^{convention.PERSON_LABEL}$": [convention.CROWD_FLAG],
            f"^({joints})$": [convention.OCCLUDED_FLAG, convention.CHECK_FLAG],
        },
        "validate_label": "exact",
        "store_data": False,
        "auto_save": True,
        "display_label_popup": True,
        "sort_labels": False,
    }


def write_config(out: str | os.PathLike) -> Path:
    path = Path(out)
    text = "# posepipe LabelMe config: one group_id per person, joints are points named as in COCO.\n"
    text += yaml.safe_dump(labelme_config(), sort_keys=False)
    atomic.write_text(path, text)
    return path


def labelme_command(config_path: str | os.PathLike, images: str | os.PathLike = ".") -> str:
    """The exact command an annotator runs (labelme >= 5.5, ``pip install posepipe[annotate]``)."""
    return shlex.join(["labelme", str(images), "--config", str(config_path),
                       "--labels", ",".join(convention.LABELS), "--nodata", "--autosave"])

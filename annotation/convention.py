"""posepipe's LabelMe annotation convention: what labels, groups and flags mean.

* One person = one ``group_id``. Each joint is a ``point`` shape labelled with its COCO-17 name.
* A ``rectangle`` labelled ``person`` with the same ``group_id`` is the person's box.
* A labelled but hidden joint is occluded (v=1). The shape flag ``occluded: true`` says so; the
  equivalents found in the wild are accepted too (see :func:`is_occluded`).
* ``crowd`` marks iscrowd regions: as a flag on a person rectangle (that region), or as the
  image-level flag (every person in the file).
"""

from __future__ import annotations

import difflib
from typing import Any

from posepipe.datasets import schema

PERSON_LABEL = "person"
CROWD_FLAG = "crowd"
OCCLUDED_FLAG = "occluded"
# Model pre-annotations flag the joints the model was unsure of; intake ignores it (a joint left
# as it is counts as checked and correct).
CHECK_FLAG = "check"
OCCLUDED_SUFFIX = "_occluded"
JOINTS: tuple[str, ...] = schema.COCO17_JOINTS
JOINT_INDEX = schema.JOINT_INDEX
LABELS: tuple[str, ...] = (PERSON_LABEL, *JOINTS)

def normalise_label(label: str) -> str:
    """'Left Eye', 'left-eye' and 'left_eye' are the same label."""
    return "_".join(label.strip().lower().replace("-", " ").split())


def parse_joint_label(label: str) -> tuple[str | None, bool]:
    """(COCO joint name or None, whether the label carries the ``_occluded`` suffix)."""
    if label in JOINT_INDEX:  # the common case, without normalising
        return label, False
    name = normalise_label(label)
    if name in JOINT_INDEX:
        return name, False
    if name.endswith(OCCLUDED_SUFFIX) and name[: -len(OCCLUDED_SUFFIX)] in JOINT_INDEX:
        return name[: -len(OCCLUDED_SUFFIX)], True
    return None, False


def is_person_label(label: str) -> bool:
    return label == PERSON_LABEL or normalise_label(label) == PERSON_LABEL  # the common case first


def suggest(label: str) -> str | None:
    """The valid label closest to a misspelt one, or None when nothing is close."""
    name = normalise_label(label)
    if name.endswith(OCCLUDED_SUFFIX):
        name = name[: -len(OCCLUDED_SUFFIX)]
    hits = difflib.get_close_matches(name, LABELS, n=1, cutoff=0.6)
    return hits[0] if hits else None


def is_occluded(flags: dict[str, Any] | None, difficult: Any, description: Any, suffix: bool) -> tuple[bool, str | None]:
    """Whether a joint is labelled-but-hidden, and which convention said so (None for the flag).

    X-AnyLabeling's ``visible`` key is its canvas show/hide toggle, not occlusion: it is ignored.
    """
    if flags and flags.get(OCCLUDED_FLAG) is True:
        return True, None
    if difficult is None and not description and not suffix:  # the usual visible joint
        return False, None
    if difficult is True:
        return True, "occluded_from_difficult"
    if isinstance(description, str) and description.strip().lower() == OCCLUDED_FLAG:
        return True, "occluded_from_description"
    if suffix:
        return True, "occluded_from_label_suffix"
    return False, None

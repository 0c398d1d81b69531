"""COCO visibility of a synthetic keypoint from what a camera ray meets on its way to the joint.

v=0 the joint is outside the image or behind the camera (unlabelled, as COCO does for out-of-frame);
v=1 the ray from the camera meets geometry before the joint: by the person's own body ("self")
    deeper than the joint's tolerance, or by anything else ("object": another person, an occluder);
v=2 otherwise. The tolerance is about the radius of the limb holding the joint, so a joint inside
    its own limb (an elbow inside the arm) is visible when that limb's near surface is what the
    camera sees there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SELF = "self"
OBJECT = "object"


@dataclass(frozen=True)
class RayHit:
    distance: float  # from the camera to the first surface on the way to the joint
    owner: int  # person index, or -1 for anything that is not a person (occluders)


def decide(in_frame: bool, joint_distance: float, hit: RayHit | None, person: int,
           tolerance: float) -> tuple[int, str | None]:
    """(visibility, occlusion kind) of one joint of ``person``; the kind is None unless v=1."""
    if not in_frame:
        return 0, None
    if hit is None or hit.distance >= joint_distance:
        return 2, None
    if hit.owner != person:
        return 1, OBJECT
    if joint_distance - hit.distance > tolerance:
        return 1, SELF
    return 2, None


def histogram(visibility: np.ndarray, kinds: list[list[str | None]]) -> dict[str, int]:
    """Counts of v=0/1/2 and of self/object occlusions, over (N, 17) flags and their kinds."""
    v = np.asarray(visibility, dtype=np.int64).reshape(-1)
    counts = np.bincount(np.clip(v, 0, 2), minlength=3) if v.size else np.zeros(3, dtype=np.int64)
    flat = [k for row in kinds for k in row]
    return {"v0": int(counts[0]), "v1": int(counts[1]), "v2": int(counts[2]),
            "v1_self": flat.count(SELF), "v1_object": flat.count(OBJECT)}

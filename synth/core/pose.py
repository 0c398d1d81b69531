"""Joint-angle poses for the Rigify human metarig: a limits table, named extreme families, a sampler.

A pose is a dict of anatomical degrees of freedom (DOF) in degrees, e.g. ``hip_flex.L``. Zero is
the anatomical neutral stance (arms by the side, legs straight); :func:`bone_eulers` turns a pose
into bone-local XYZ Euler angles of the metarig (whose rest pose has the arms abducted ~60 degrees).

Limits (degrees, min..max). Normal adult ranges of motion are those of the AAOS
(Greene & Heckman, *The Clinical Measurement of Joint Motion*, AAOS 1994) and Norkin & White,
*Measurement of Joint Motion*, 5th ed. 2016 (Appendix A). Where the families need trained
(gymnast/dancer/yoga) ranges, the limit is widened and marked "trained":

=================  ======  =====  ======================================================
DOF                min     max    source / note
=================  ======  =====  ======================================================
trunk_flex         -60     90     AAOS thoracolumbar flexion 80; extension 25, trained
                                  backbend to 60 (bridge)
trunk_side         -40     40     AAOS lateral flexion 35
trunk_rot          -50     50     AAOS rotation 45
neck_flex          -50     50     AAOS cervical flexion 45, extension 45
neck_side          -45     45     AAOS cervical lateral flexion 45
neck_rot           -70     70     AAOS cervical rotation 60-80
shoulder_flex      -60     180    AAOS flexion 180, extension 60
shoulder_abd       0       180    AAOS abduction 180 (adduction past the side is blocked
                                  by the torso)
shoulder_rot       -70     90     AAOS internal 70, external 90
elbow_flex         0       150    AAOS 150
forearm_rot        -80     80     AAOS pronation 80, supination 80
hip_flex           -45     160    AAOS flexion 120, extension 30; trained splits to
                                  160 / -45
hip_abd            -30     90     AAOS abduction 45, adduction 30; trained straddle 90
hip_rot            -45     45     AAOS internal 45, external 45
knee_flex          0       155    AAOS 135; deep squat 150-160 (Hemmerich et al. 2006)
ankle_flex         -50     25     AAOS plantarflexion 50, dorsiflexion 20 (+5 squat)
=================  ======  =====  ======================================================

Sampling is deliberately biased to the extremes: a free DOF is drawn from Beta(0.5, 0.5) over
its range, which puts most mass near both ends. Families fix some DOFs to ranges that define
them (e.g. both shoulders near 180 flexion for ``arms_overhead``) and add a global orientation.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

SIDES = ("L", "R")
_AXIAL = ("trunk_flex", "trunk_side", "trunk_rot", "neck_flex", "neck_side", "neck_rot")
_LIMB = ("shoulder_flex", "shoulder_abd", "shoulder_rot", "elbow_flex", "forearm_rot",
         "hip_flex", "hip_abd", "hip_rot", "knee_flex", "ankle_flex")

LIMITS: dict[str, tuple[float, float]] = {
    "trunk_flex": (-60, 90), "trunk_side": (-40, 40), "trunk_rot": (-50, 50),
    "neck_flex": (-50, 50), "neck_side": (-45, 45), "neck_rot": (-70, 70),
    "shoulder_flex": (-60, 180), "shoulder_abd": (0, 180), "shoulder_rot": (-70, 90),
    "elbow_flex": (0, 150), "forearm_rot": (-80, 80),
    "hip_flex": (-45, 160), "hip_abd": (-30, 90), "hip_rot": (-45, 45),
    "knee_flex": (0, 155), "ankle_flex": (-50, 25),
}
DOFS: tuple[str, ...] = _AXIAL + tuple(f"{d}.{s}" for s in SIDES for d in _LIMB)

# The metarig's rest pose holds the upper arms ~62 degrees from the body's side.
REST_SHOULDER_ABD = 60.0

# Family -> DOF ranges that define it ("*" stands for both sides, each drawn independently) and
# the global orientation: (pitch range, roll range) in degrees about the body's left-right and
# front-back axes; yaw is always free.
FAMILIES: dict[str, dict] = {
    "inversion": {"dofs": {"shoulder_flex.*": (160, 180), "elbow_flex.*": (0, 15), "hip_flex.*": (-20, 60),
                           "knee_flex.*": (0, 100)}, "pitch": (160, 200), "roll": (-20, 20)},
    "bridge": {"dofs": {"trunk_flex": (-60, -40), "neck_flex": (-50, -30), "shoulder_flex.*": (150, 180),
                        "elbow_flex.*": (0, 20), "hip_flex.*": (-45, -25), "knee_flex.*": (80, 110)},
               "pitch": (-100, -80), "roll": (-10, 10)},
    "split": {"dofs": {"knee_flex.*": (0, 10), "trunk_flex": (-10, 30), "shoulder_abd.*": (60, 120)},
              "pitch": (-15, 15), "roll": (-10, 10), "split": True},
    "deep_squat": {"dofs": {"hip_flex.*": (120, 150), "knee_flex.*": (140, 155), "ankle_flex.*": (15, 25),
                            "trunk_flex": (20, 50), "shoulder_flex.*": (40, 100)}, "pitch": (-10, 10), "roll": (-10, 10)},
    "lying": {"dofs": {"hip_flex.*": (-10, 60), "knee_flex.*": (0, 90)}, "pitch": (80, 100), "roll": (-10, 10),
              "flip": True},
    "kneeling": {"dofs": {"hip_flex.*": (-10, 30), "knee_flex.*": (85, 100), "trunk_flex": (-20, 40)},
                 "pitch": (-10, 10), "roll": (-10, 10)},
    "arms_overhead": {"dofs": {"shoulder_flex.*": (150, 180), "shoulder_abd.*": (0, 40), "elbow_flex.*": (0, 40)},
                      "pitch": (-10, 10), "roll": (-10, 10)},
    "falling": {"dofs": {"shoulder_abd.*": (70, 170), "elbow_flex.*": (10, 90), "hip_flex.*": (-30, 90)},
                "pitch": (30, 80), "roll": (-60, 60), "flip": True},
    "twisted_torso": {"dofs": {"trunk_rot": (35, 50), "trunk_side": (20, 40), "neck_rot": (40, 70)},
                      "pitch": (-15, 15), "roll": (-15, 15), "mirror_axial": True},
    "free": {"dofs": {}, "pitch": (-180, 180), "roll": (-180, 180)},
}
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)


@dataclass
class Pose:
    family: str
    dofs: dict[str, float]  # degrees
    orientation: tuple[float, float, float]  # pitch, roll, yaw in degrees (applied yaw . roll . pitch)
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"family": self.family, "dofs": {k: round(v, 4) for k, v in self.dofs.items()},
               "orientation": [round(v, 4) for v in self.orientation]}
        if self.params:
            out["params"] = self.params
        return out


def _extreme(rng: np.random.Generator, lo: float, hi: float) -> float:
    """U-shaped draw over [lo, hi]: Beta(0.5, 0.5) puts most of the mass near both limits."""
    return float(lo + (hi - lo) * rng.beta(0.5, 0.5))


_DOF_LIMITS = {name: LIMITS[name.split(".")[0]] for name in DOFS}  # looked up per DOF per draw


def clamp_to_limits(dofs: dict[str, float]) -> dict[str, float]:
    out = {}
    for name, value in dofs.items():
        lo, hi = _DOF_LIMITS.get(name) or LIMITS[name.split(".")[0]]
        out[name] = float(min(max(value, lo), hi))
    return out


@functools.lru_cache(maxsize=None)
def _fixed_ranges(family: str) -> dict[str, tuple[float, float]]:
    """DOF -> range that ``family`` fixes ("*" expanded to both sides). Do not mutate: cached."""
    fixed: dict[str, tuple[float, float]] = {}
    for key, rng_deg in FAMILIES[family]["dofs"].items():
        for side in SIDES if key.endswith(".*") else ("",):
            fixed[key[:-1] + side if side else key] = rng_deg
    return fixed


def sample_pose(rng: np.random.Generator, family: str | None = None, extremeness: float = 0.6) -> Pose:
    """A pose of ``family`` (drawn uniformly when None); other DOFs extreme with prob. ``extremeness``.

    Free DOFs that are not drawn extreme stay within a calm band (the middle 30% of the range around
    neutral) so that each image has a readable main pose rather than noise everywhere.
    """
    if family is None:
        family = FAMILY_NAMES[int(rng.integers(len(FAMILY_NAMES)))]
    if family not in FAMILIES:
        raise ValueError(f"unknown pose family {family!r}; known: {', '.join(FAMILY_NAMES)}")
    spec = FAMILIES[family]
    fixed = _fixed_ranges(family)
    dofs: dict[str, float] = {}
    for name in DOFS:
        lo, hi = _DOF_LIMITS[name]
        if name in fixed:
            a, b = fixed[name]
            dofs[name] = float(rng.uniform(a, b))
        elif rng.random() < extremeness:
            dofs[name] = _extreme(rng, lo, hi)
        else:
            neutral = min(max(0.0, lo), hi)
            band = 0.15 * (hi - lo)
            dofs[name] = float(rng.uniform(max(lo, neutral - band), min(hi, neutral + band)))
    if spec.get("split"):
        if rng.random() < 0.5:  # front split: one hip flexed, the other extended
            front = SIDES[int(rng.integers(2))]
            back = "R" if front == "L" else "L"
            dofs[f"hip_flex.{front}"] = float(rng.uniform(140, 160))
            dofs[f"hip_flex.{back}"] = float(rng.uniform(-45, -30))
            dofs["hip_abd.L"] = dofs["hip_abd.R"] = float(rng.uniform(0, 10))
        else:  # side (straddle) split
            for side in SIDES:
                dofs[f"hip_abd.{side}"] = float(rng.uniform(75, 90))
                dofs[f"hip_flex.{side}"] = float(rng.uniform(-5, 15))
    if spec.get("mirror_axial") and rng.random() < 0.5:
        for name in ("trunk_rot", "trunk_side", "neck_rot"):
            dofs[name] = -dofs[name]
    pitch = float(rng.uniform(*spec["pitch"]))
    if spec.get("flip") and rng.random() < 0.5:
        pitch = -pitch  # face down as well as face up
    roll = float(rng.uniform(*spec["roll"]))
    yaw = float(rng.uniform(-180, 180))
    return Pose(family, clamp_to_limits(dofs), (pitch, roll, yaw))


def bone_eulers(dofs: dict[str, float]) -> dict[str, tuple[float, float, float]]:
    """Metarig bone -> local XYZ Euler angles in radians.

    Axes and signs were read off the metarig (figure faces -Y): a positive local X rotation bends
    knee and elbow, extends the hip, flexes shoulder, spine and neck forward; local Z abducts the
    left arm and adducts the left leg (mirrored on the right); local Y twists along the bone.
    """
    r = math.radians
    out: dict[str, tuple[float, float, float]] = {}
    for k, bone in enumerate(("spine.001", "spine.002", "spine.003")):
        out[bone] = (r(dofs["trunk_flex"]) / 3, r(dofs["trunk_rot"]) / 3, -r(dofs["trunk_side"]) / 3)
    for bone in ("spine.004", "spine.005"):
        out[bone] = (r(dofs["neck_flex"]) / 2, r(dofs["neck_rot"]) / 2, -r(dofs["neck_side"]) / 2)
    for side in SIDES:
        m = 1.0 if side == "L" else -1.0
        d = {k.split(".")[0]: v for k, v in dofs.items() if k.endswith("." + side)}
        out[f"upper_arm.{side}"] = (r(d["shoulder_flex"]), m * r(d["shoulder_rot"]),
                                    m * r(d["shoulder_abd"] - REST_SHOULDER_ABD))
        out[f"forearm.{side}"] = (r(d["elbow_flex"]), m * r(d["forearm_rot"]), 0.0)
        out[f"thigh.{side}"] = (-r(d["hip_flex"]), m * r(d["hip_rot"]), -m * r(d["hip_abd"]))
        out[f"shin.{side}"] = (r(d["knee_flex"]), 0.0, 0.0)
        out[f"foot.{side}"] = (-r(d["ankle_flex"]), 0.0, 0.0)
    return out


def orientation_matrix(pitch: float, roll: float, yaw: float) -> np.ndarray:
    """3x3 rotation: pitch about X (left-right), then roll about Y (front-back), then yaw about Z."""
    p, r_, y = (math.radians(a) for a in (pitch, roll, yaw))
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    ry = np.array([[math.cos(r_), 0, math.sin(r_)], [0, 1, 0], [-math.sin(r_), 0, math.cos(r_)]])
    rz = np.array([[math.cos(y), -math.sin(y), 0], [math.sin(y), math.cos(y), 0], [0, 0, 1]])
    return rz @ ry @ rx

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


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """The same number, from the same draw, as ``float(rng.uniform(lo, hi))``: numpy defines that as
    ``lo + (hi - lo) * rng.random()``. Spelled out, it skips ``uniform``'s argument handling, which
    costs more than the draw itself for one number; the sampler makes ~15 such draws per pose.
    (``tests/test_synth_posing_speed_equivalence.py`` checks that the two agree.)"""
    return lo + (hi - lo) * rng.random()


_DOF_LIMITS = {name: LIMITS[name.split(".")[0]] for name in DOFS}  # looked up per DOF per draw


def _calm_band(lo: float, hi: float) -> tuple[float, float]:
    """The middle 30% of the range around neutral (0, or the nearest limit)."""
    neutral = min(max(0.0, lo), hi)
    band = 0.15 * (hi - lo)
    return max(lo, neutral - band), min(hi, neutral + band)


_CALM_BANDS = {name: _calm_band(*_DOF_LIMITS[name]) for name in DOFS}


def clamp_to_limits(dofs: dict[str, float]) -> dict[str, float]:
    out = {}
    for name, value in dofs.items():
        lo, hi = _DOF_LIMITS.get(name) or LIMITS[name.split(".")[0]]
        # min(max(value, lo), hi), spelled out: two builtin calls per DOF cost more than the test
        out[name] = float(lo if value < lo else hi if value > hi else value)
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
        if name in fixed:
            dofs[name] = _uniform(rng, *fixed[name])
        elif rng.random() < extremeness:
            dofs[name] = _extreme(rng, *_DOF_LIMITS[name])
        else:
            dofs[name] = _uniform(rng, *_CALM_BANDS[name])
    if spec.get("split"):
        if rng.random() < 0.5:  # front split: one hip flexed, the other extended
            front = SIDES[int(rng.integers(2))]
            back = "R" if front == "L" else "L"
            dofs[f"hip_flex.{front}"] = _uniform(rng, 140, 160)
            dofs[f"hip_flex.{back}"] = _uniform(rng, -45, -30)
            dofs["hip_abd.L"] = dofs["hip_abd.R"] = _uniform(rng, 0, 10)
        else:  # side (straddle) split
            for side in SIDES:
                dofs[f"hip_abd.{side}"] = _uniform(rng, 75, 90)
                dofs[f"hip_flex.{side}"] = _uniform(rng, -5, 15)
    if spec.get("mirror_axial") and rng.random() < 0.5:
        for name in ("trunk_rot", "trunk_side", "neck_rot"):
            dofs[name] = -dofs[name]
    pitch = _uniform(rng, *spec["pitch"])
    if spec.get("flip") and rng.random() < 0.5:
        pitch = -pitch  # face down as well as face up
    roll = _uniform(rng, *spec["roll"])
    yaw = _uniform(rng, -180, 180)
    return Pose(family, clamp_to_limits(dofs), (pitch, roll, yaw))


# How each posed metarig bone's XYZ Euler angles follow from the DOFs: per bone, per axis
# (X, Y, Z), (DOF, sign, share) or None (that axis stays 0). The angle is
# ``sign * radians(dof - offset) / share``, where ``offset`` is REST_SHOULDER_ABD for shoulder
# abduction (the rest pose holds the arms out) and 0 otherwise; a motion spread over several bones
# (trunk over three spine bones, neck over two) gives each its share. Axes and signs were read off the metarig
# (figure faces -Y): a positive local X rotation bends knee and elbow, extends the hip, flexes
# shoulder, spine and neck forward; local Z abducts the left arm and adducts the left leg
# (mirrored on the right); local Y twists along the bone.
_EULER_TABLE: tuple[tuple[str, tuple], ...] = tuple(
    (bone, (("trunk_flex", 1, 3), ("trunk_rot", 1, 3), ("trunk_side", -1, 3)))
    for bone in ("spine.001", "spine.002", "spine.003")
) + tuple(
    (bone, (("neck_flex", 1, 2), ("neck_rot", 1, 2), ("neck_side", -1, 2)))
    for bone in ("spine.004", "spine.005")
) + tuple(
    row
    for side, m in (("L", 1), ("R", -1))
    for row in (
        (f"upper_arm.{side}", ((f"shoulder_flex.{side}", 1, 1), (f"shoulder_rot.{side}", m, 1),
                               (f"shoulder_abd.{side}", m, 1))),
        (f"forearm.{side}", ((f"elbow_flex.{side}", 1, 1), (f"forearm_rot.{side}", m, 1), None)),
        (f"thigh.{side}", ((f"hip_flex.{side}", -1, 1), (f"hip_rot.{side}", m, 1), (f"hip_abd.{side}", -m, 1))),
        (f"shin.{side}", ((f"knee_flex.{side}", 1, 1), None, None)),
        (f"foot.{side}", ((f"ankle_flex.{side}", -1, 1), None, None)),
    )
)
EULER_BONES: tuple[str, ...] = tuple(bone for bone, _ in _EULER_TABLE)
# The same table as flat arrays over the (bone, axis) entries, to evaluate it in a few numpy
# operations per pose (it runs for every pose re-draw): the DOFs it reads (in degrees, the
# rest-pose shoulder abduction taken off), and per entry which of them (the extra last slot
# holds 0 for axes no DOF drives), the sign and the share.
_EULER_DOFS: tuple[str, ...] = tuple(dict.fromkeys(e[0] for _, axes in _EULER_TABLE for e in axes if e))
_EULER_OFFSET = np.array([REST_SHOULDER_ABD if d.startswith("shoulder_abd") else 0.0 for d in _EULER_DOFS] + [0.0])
_EULER_INDEX = np.array([_EULER_DOFS.index(e[0]) if e else len(_EULER_DOFS) for _, axes in _EULER_TABLE for e in axes])
_EULER_SIGN = np.array([float(e[1]) if e else 1.0 for _, axes in _EULER_TABLE for e in axes])
_EULER_SHARE = np.array([float(e[2]) if e else 1.0 for _, axes in _EULER_TABLE for e in axes])


def bone_euler_array(dofs: dict[str, float]) -> np.ndarray:
    """(len(EULER_BONES), 3) local XYZ Euler angles in radians of the bones :data:`EULER_BONES`."""
    deg = np.array([dofs[name] for name in _EULER_DOFS] + [0.0], dtype=np.float64) - _EULER_OFFSET
    rad = deg * (math.pi / 180.0)  # exactly what math.radians does
    return (rad[_EULER_INDEX] * _EULER_SIGN / _EULER_SHARE).reshape(len(EULER_BONES), 3)


def bone_eulers(dofs: dict[str, float]) -> dict[str, tuple[float, float, float]]:
    """Metarig bone -> local XYZ Euler angles in radians (see ``_EULER_TABLE`` for the conventions)."""
    return {bone: tuple(e) for bone, e in zip(EULER_BONES, bone_euler_array(dofs).tolist())}


def orientation_matrix(pitch: float, roll: float, yaw: float) -> np.ndarray:
    """3x3 rotation: pitch about X (left-right), then roll about Y (front-back), then yaw about Z."""
    cp, sp = math.cos(math.radians(pitch)), math.sin(math.radians(pitch))
    cr, sr = math.cos(math.radians(roll)), math.sin(math.radians(roll))
    cy, sy = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    # Rz(yaw) @ Ry(roll) @ Rx(pitch) written out: this runs for every pose re-draw, and three
    # 3x3 arrays and their product cost several times more than nine products in Python.
    cy_sr, sy_sr = cy * sr, sy * sr
    return np.array([
        [cy * cr, cy_sr * sp - sy * cp, cy_sr * cp + sy * sp],
        [sy * cr, sy_sr * sp + cy * cp, sy_sr * cp - cy * sp],
        [-sr, cr * sp, cr * cp],
    ])

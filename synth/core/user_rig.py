"""A user's own rigged human (glTF/FBX) posed like the metarig: joint-map file and retargeting maths.

Plain numpy and the standard library; the Blender side (import, posing, rays) is
``synth/renderer/user_rig.py``. See ``docs/user_rig.md`` for a complete example.

Joint-map file (JSON, UTF-8)
----------------------------
::

    {
      "model": "human.glb",                      # .glb/.gltf/.fbx, relative to this file's folder
      "keypoints": {                             # every COCO-17 joint, exactly once
        "left_shoulder": {"bone": "upperarm_l", "end": "head"},
        "nose": {"bone": "head", "end": "head", "offset": 0.4, "local": [0.0, 0.0, 0.6]},
        ...
      },
      "pose": {                                  # metarig bone -> user bone
        "spine": "pelvis", "spine.001": "spine_01", "upper_arm.L": "upperarm_l", ...
      },
      "rotate_deg": [0, 0, 0]                    # optional: XYZ Euler turning the imported model
    }                                            # upright (Z up) and facing -Y, as the metarig

* ``model`` must stay inside the map's folder (no ``..`` escape, no absolute path) and exist.
* A keypoint is a point on a user bone: ``end`` is ``"head"`` or ``"tail"``; ``offset`` (default 0)
  moves it along the bone by that fraction of the bone's length (head -> tail is +1); ``local``
  (default [0, 0, 0]) moves it along the bone's own rest X, Y, Z axes, in bone lengths (for face
  landmarks on a rig without face bones).
* ``pose`` keys are the metarig bones of :data:`POSE_BONES`. ``spine``, ``spine.006`` (the head)
  and the upper arm, forearm, thigh and shin of each side are required; a user bone drives at most
  one metarig bone. Unmapped user bones follow their parent.

Errors are :class:`~posepipe.datasets.errors.PosepipeError` naming the file, the field and the value.

Retargeting
-----------
The user's armature is described by :class:`RigRest` (each bone's ``matrix_local`` in armature space,
parent and length, as Blender reports them). For a metarig pose (``basis``: bone -> 3x3 local
rotation, what :func:`rig.pose_matrices` takes), each mapped user bone takes its metarig bone's
*world delta* ``posed @ rest.T`` applied to its own rest orientation. Limb bones (shoulder, upper
arm, forearm, thigh, shin) are then swung (smallest rotation) so that the user's segment from the
bone's head to the head of the next mapped bone (forearm for the upper arm, ...) points along the
metarig's posed segment; hand and foot swing their own +Y onto the metarig bone's +Y. Directions,
not lengths, are copied: the user's proportions stay its own. The result is each user bone's local
rotation (3x3), which :func:`forward` (Blender's pose formula
``pose[b] = pose[parent] @ inv(rest[parent]) @ rest[b] @ basis[b]``) turns into pose matrices.

Per image the integrator calls :meth:`UserRigPoser.pose` with the metarig basis and the armature
object's world matrix (:meth:`UserRigPoser.armature_matrix`), then hands ``basis`` to the Blender
side and uses ``keypoints`` (17x3 world) as the person's keypoints.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.schema import COCO17_JOINTS

from . import rig
from .retarget import swing

MODEL_EXTENSIONS = (".glb", ".gltf", ".fbx")
_SIDED = ("shoulder", "upper_arm", "forearm", "hand", "thigh", "shin", "foot")
POSE_BONES: tuple[str, ...] = ("spine", "spine.001", "spine.002", "spine.003", "spine.004", "spine.005",
                               "spine.006") + tuple(f"{b}.{s}" for s in ("L", "R") for b in _SIDED)
REQUIRED_POSE = ("spine", "spine.006", "upper_arm.L", "upper_arm.R", "forearm.L", "forearm.R", "thigh.L",
                 "thigh.R", "shin.L", "shin.R")
# Limb bone -> the metarig bone whose head ends its segment (the swing target).
SEGMENT_END = {f"{a}.{s}": f"{b}.{s}" for s in ("L", "R") for a, b in
               (("shoulder", "upper_arm"), ("upper_arm", "forearm"), ("forearm", "hand"), ("thigh", "shin"),
                ("shin", "foot"))}
# Bones swung onto their own +Y (no next bone on the chain).
_OWN_AXIS = {f"{b}.{s}" for s in ("L", "R") for b in ("hand", "foot")}
_REST_INV = {b: np.linalg.inv(rig.REST[b][:3, :3]) for b in POSE_BONES}


# ---------------------------------------------------------------------------------------------
# Joint map file
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KeypointRef:
    bone: str
    end: str  # "head" or "tail"
    offset: float = 0.0  # along the bone, in bone lengths
    local: tuple[float, float, float] = (0.0, 0.0, 0.0)  # along the bone's rest axes, in bone lengths

    def fraction(self) -> float:
        """Where the point lies along the bone: 0 at the head, 1 at the tail."""
        return (1.0 if self.end == "tail" else 0.0) + self.offset


@dataclass(frozen=True)
class JointMap:
    path: Path  # the map file
    model: Path  # absolute path of the model file
    keypoints: tuple[KeypointRef, ...]  # in COCO-17 order
    pose: dict[str, str]  # metarig bone -> user bone
    rotate_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def bones(self) -> set[str]:
        """Every user bone the map names."""
        return {k.bone for k in self.keypoints} | set(self.pose.values())

    def rotation(self) -> np.ndarray:
        """3x3 of ``rotate_deg`` (Blender's XYZ Euler)."""
        return rig.euler_xyz(*(math.radians(a) for a in self.rotate_deg))


def _fail(path: Path, where: str, message: str) -> PosepipeError:
    return PosepipeError(f"{path}: {where}: {message}")


def _number(path: Path, where: str, value) -> float:
    # bool is an int in Python, but true/false is never a meant as a number here
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(path, where, f"expected a number, got {value!r}")
    return float(value)


def _vector3(path: Path, where: str, value) -> tuple[float, float, float]:
    if not isinstance(value, list) or len(value) != 3:
        raise _fail(path, where, f"expected a list of 3 numbers, got {value!r}")
    return tuple(_number(path, f"{where}[{i}]", v) for i, v in enumerate(value))


def _model_path(path: Path, value) -> Path:
    if not isinstance(value, str) or not value:
        raise _fail(path, "model", f"expected a file name, got {value!r}")
    rel = PurePosixPath(value.replace("\\", "/"))
    if rel.is_absolute() or PureWindowsPath(value).drive or ".." in rel.parts:
        raise _fail(path, "model", f"{value!r} must be a path inside {path.parent} (no absolute path, no '..')")
    if rel.suffix.lower() not in MODEL_EXTENSIONS:
        raise _fail(path, "model", f"{value!r}: unsupported extension (use {', '.join(MODEL_EXTENSIONS)})")
    model = (path.parent / rel).resolve()
    if not model.is_relative_to(path.parent.resolve()):  # a symlink pointing out of the folder
        raise _fail(path, "model", f"{value!r} resolves outside {path.parent}")
    if not model.is_file():
        raise _fail(path, "model", f"{value!r}: no such file {model}")
    return model


def _keypoint(path: Path, joint: str, value) -> KeypointRef:
    where = f"keypoints.{joint}"
    if not isinstance(value, dict):
        raise _fail(path, where, f"expected an object with 'bone' and 'end', got {value!r}")
    unknown = sorted(set(value) - {"bone", "end", "offset", "local"})
    if unknown:
        raise _fail(path, where, f"unknown field {unknown[0]!r} (use bone, end, offset, local)")
    bone = value.get("bone")
    if not isinstance(bone, str) or not bone:
        raise _fail(path, f"{where}.bone", f"expected a bone name, got {bone!r}")
    end = value.get("end")
    if end not in ("head", "tail"):
        raise _fail(path, f"{where}.end", f"expected 'head' or 'tail', got {end!r}")
    offset = _number(path, f"{where}.offset", value.get("offset", 0.0))
    local = _vector3(path, f"{where}.local", value.get("local", [0.0, 0.0, 0.0]))
    return KeypointRef(bone, end, offset, local)


def _pose_map(path: Path, value) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _fail(path, "pose", f"expected an object metarig bone -> user bone, got {value!r}")
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for meta, user in value.items():
        if meta not in POSE_BONES:
            raise _fail(path, "pose", f"unknown metarig bone {meta!r} (use {', '.join(POSE_BONES)})")
        if not isinstance(user, str) or not user:
            raise _fail(path, f"pose.{meta}", f"expected a bone name, got {user!r}")
        if user in seen:
            raise _fail(path, f"pose.{meta}", f"bone {user!r} already drives {seen[user]!r}")
        seen[user] = meta
        out[meta] = user
    missing = [b for b in REQUIRED_POSE if b not in out]
    if missing:
        raise _fail(path, "pose", f"missing metarig bone {missing[0]!r} (required: {', '.join(REQUIRED_POSE)})")
    return out


def parse_joint_map(data, path: Path) -> JointMap:
    """Validate a decoded joint map; ``path`` is the file it came from (model paths are relative to it)."""
    path = Path(path)
    if not isinstance(data, dict):
        raise _fail(path, "(top level)", f"expected an object, got {type(data).__name__}")
    unknown = sorted(set(data) - {"model", "keypoints", "pose", "rotate_deg"})
    if unknown:
        raise _fail(path, unknown[0], "unknown field (use model, keypoints, pose, rotate_deg)")
    for key in ("model", "keypoints", "pose"):
        if key not in data:
            raise _fail(path, key, "missing")
    model = _model_path(path, data["model"])
    kps = data["keypoints"]
    if not isinstance(kps, dict):
        raise _fail(path, "keypoints", f"expected an object COCO joint -> bone, got {kps!r}")
    for joint in kps:
        if joint not in COCO17_JOINTS:
            raise _fail(path, "keypoints", f"unknown COCO joint {joint!r}")
    missing = [j for j in COCO17_JOINTS if j not in kps]
    if missing:
        raise _fail(path, "keypoints", f"missing joint {missing[0]!r}")
    refs = tuple(_keypoint(path, j, kps[j]) for j in COCO17_JOINTS)
    pose = _pose_map(path, data["pose"])
    rotate = _vector3(path, "rotate_deg", data.get("rotate_deg", [0.0, 0.0, 0.0]))
    return JointMap(path, model, refs, pose, rotate)


def load_joint_map(path: str | Path) -> JointMap:
    """Read and validate a joint-map file (see the module docstring)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PosepipeError(f"{path}: joint map not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PosepipeError(f"{path}: (file): not valid JSON: {exc}") from None
    return parse_joint_map(data, path)


def check_bones(joint_map: JointMap, rest: "RigRest") -> None:
    """Every bone the map names exists in the model (raise naming the first that does not)."""
    for meta, user in joint_map.pose.items():
        if user not in rest.rest:
            raise _fail(joint_map.path, f"pose.{meta}", f"no bone {user!r} in {joint_map.model.name}")
    for joint, ref in zip(COCO17_JOINTS, joint_map.keypoints):
        if ref.bone not in rest.rest:
            raise _fail(joint_map.path, f"keypoints.{joint}.bone", f"no bone {ref.bone!r} in {joint_map.model.name}")


# ---------------------------------------------------------------------------------------------
# The user's armature and its forward kinematics
# ---------------------------------------------------------------------------------------------

@dataclass
class RigRest:
    """A user armature at rest, in armature space, as Blender reports it (``bone.matrix_local``)."""

    rest: dict[str, np.ndarray]  # bone -> 4x4 rest bone -> armature space
    parent: dict[str, str | None]
    length: dict[str, float]
    order: tuple[str, ...] = ()  # parents first (computed when empty)
    _rel: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.rest = {n: np.asarray(m, dtype=np.float64) for n, m in self.rest.items()}
        if not self.order:
            self.order = _parents_first(self.parent)
        # rest of each bone relative to its parent, as in rig.py
        self._rel = {n: np.linalg.inv(self.rest[p]) @ self.rest[n] for n, p in self.parent.items() if p}

    @classmethod
    def from_bones(cls, bones) -> "RigRest":
        """From ``(name, parent, length, 4x4)`` rows, the layout of :data:`metarig_rest.BONES`."""
        rows = list(bones)
        return cls({n: np.array(m, dtype=np.float64) for n, _p, _l, m in rows}, {n: p for n, p, _l, _m in rows},
                   {n: float(ln) for n, _p, ln, _m in rows})

    def head(self, bone: str) -> np.ndarray:
        return self.rest[bone][:3, 3]


def _parents_first(parent: dict[str, str | None]) -> tuple[str, ...]:
    order: list[str] = []
    placed: set[str] = set()

    def place(name: str, trail: tuple[str, ...]) -> None:
        if name in placed:
            return
        if name in trail:
            raise ValueError(f"bone hierarchy has a cycle through {name!r}")
        p = parent[name]
        if p is not None:
            if p not in parent:
                raise ValueError(f"bone {name!r} has unknown parent {p!r}")
            place(p, trail + (name,))
        placed.add(name)
        order.append(name)

    for name in parent:
        place(name, ())
    return tuple(order)


def forward(rest: RigRest, basis: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """bone -> 4x4 pose matrix in armature space; ``basis``: bone -> 3x3 local rotation (absent: rest)."""
    out: dict[str, np.ndarray] = {}
    for name in rest.order:
        parent = rest.parent[name]
        m = rest.rest[name] if parent is None else out[parent] @ rest._rel[name]
        rot = basis.get(name)
        if rot is not None:
            local = np.eye(4)
            local[:3, :3] = rot
            m = m @ local
        out[name] = m
    return out


def keypoints(rest: RigRest, joint_map: JointMap, pose: dict[str, np.ndarray], armature: np.ndarray) -> np.ndarray:
    """(17, 3) world keypoints from the pose matrices and the armature -> world matrix."""
    out = np.empty((len(joint_map.keypoints), 3))
    for j, ref in enumerate(joint_map.keypoints):
        length = rest.length[ref.bone]
        local = np.array([ref.local[0], ref.local[1] + ref.fraction(), ref.local[2], 0.0]) * length
        local[3] = 1.0
        out[j] = (armature @ pose[ref.bone] @ local)[:3]
    return out


# ---------------------------------------------------------------------------------------------
# Retargeting
# ---------------------------------------------------------------------------------------------

def retarget(rest: RigRest, pose_map: dict[str, str], metarig_basis: dict[str, np.ndarray],
             frame: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """User bone -> 3x3 local rotation reproducing the metarig pose (see the module docstring).

    ``frame``: rotation from the user armature's space to the metarig's (upright, Z up, facing -Y);
    identity when the imported armature already stands like the metarig."""
    f = np.eye(3) if frame is None else np.asarray(frame, dtype=np.float64)
    meta_pose = rig.pose_matrices(metarig_basis)
    by_user = {user: meta for meta, user in pose_map.items()}
    posed: dict[str, np.ndarray] = {}
    basis: dict[str, np.ndarray] = {}
    for bone in rest.order:
        parent = rest.parent[bone]
        own = rest.rest[bone][:3, :3]
        # inverses, not transposes: Blender's float32 rest matrices are orthonormal only to ~1e-7
        inherited = own if parent is None else posed[parent] @ rest._rel[bone][:3, :3]
        meta = by_user.get(bone)
        if meta is None:
            posed[bone] = inherited
            continue
        # the metarig's world delta and posed direction, seen in the user's armature space
        delta = f.T @ meta_pose[meta][:3, :3] @ _REST_INV[meta] @ f
        target = delta @ own
        now_want = _segment(rest, pose_map, meta, bone, meta_pose)
        if now_want is not None:
            now, want = delta @ now_want[0], f.T @ now_want[1]
            if np.linalg.norm(now) > 1e-9 and np.linalg.norm(want) > 1e-9:
                target = swing(now, want) @ target
        posed[bone] = target
        basis[bone] = np.linalg.solve(inherited, target)
    return basis


def _segment(rest: RigRest, pose_map: dict[str, str], meta: str, bone: str, meta_pose):
    """(the user's rest direction, the metarig's posed direction) a limb bone is swung by, or None."""
    end = SEGMENT_END.get(meta)
    if end is not None and end in pose_map:
        now = rest.head(pose_map[end]) - rest.head(bone)
        want = meta_pose[end][:3, 3] - meta_pose[meta][:3, 3]
        return now, want
    if end is not None or meta in _OWN_AXIS:  # no next bone mapped: the bone's own axis
        return rest.rest[bone][:3, 1], meta_pose[meta][:3, 1]
    return None  # torso and head: the delta alone (their segment ends differ between skeletons)


# ---------------------------------------------------------------------------------------------
# Per image
# ---------------------------------------------------------------------------------------------

@dataclass
class PosedRig:
    basis: dict[str, np.ndarray]  # user bone -> 3x3 local rotation: set on the pose bones
    pose: dict[str, np.ndarray]  # user bone -> 4x4 pose matrix, armature space
    armature: np.ndarray  # 4x4 armature object -> world
    keypoints: np.ndarray  # (17, 3) world


class UserRigPoser:
    """Poses one user rig like the metarig; ``import_matrix`` is the armature object's ``matrix_world``
    right after import (it may carry the importer's axis conversion and unit scale)."""

    def __init__(self, rest: RigRest, joint_map: JointMap, import_matrix: np.ndarray | None = None):
        check_bones(joint_map, rest)
        self.rest, self.joint_map = rest, joint_map
        self.import_matrix = np.eye(4) if import_matrix is None else np.asarray(import_matrix, dtype=np.float64)
        # model space: the imported model turned upright by the map's rotate_deg
        self.model_matrix = np.eye(4)
        self.model_matrix[:3, :3] = joint_map.rotation()
        self.model_matrix = self.model_matrix @ self.import_matrix
        lin = self.model_matrix[:3, :3]
        u, _s, vt = np.linalg.svd(lin)  # drop the scale: the frame is a pure rotation
        self.frame = u @ vt
        self.pelvis = (self.model_matrix @ np.append(rest.head(joint_map.pose["spine"]), 1.0))[:3]

    def armature_matrix(self, orientation: np.ndarray, location, scale: float = 1.0) -> np.ndarray:
        """Armature object -> world: the model turned by ``orientation`` (3x3) and scaled about its
        pelvis (the head of the bone mapped to ``spine``), the pelvis put at ``location``, like
        :func:`posing.armature_matrix` does for the metarig."""
        m = np.eye(4)
        m[:3, :3] = np.asarray(orientation, dtype=np.float64) * scale
        m[:3, 3] = np.asarray(location, dtype=np.float64) - m[:3, :3] @ self.pelvis
        return m @ self.model_matrix

    def pose(self, metarig_basis: dict[str, np.ndarray], armature: np.ndarray) -> PosedRig:
        basis = retarget(self.rest, self.joint_map.pose, metarig_basis, self.frame)
        pose = forward(self.rest, basis)
        return PosedRig(basis, pose, armature, keypoints(self.rest, self.joint_map, pose, armature))

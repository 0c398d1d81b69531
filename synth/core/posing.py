"""A person's posed mannequin in world space, from a pose and a person spec (numpy, no Blender)."""

from __future__ import annotations

import numpy as np

from . import body as body_mod
from . import rig
from .pose import EULER_BONES, Pose, bone_euler_array, bone_eulers, orientation_matrix, sample_pose

# Rest position of the metarig's pelvis (head of ``spine``): people are placed and turned about it.
PELVIS_REST = rig.REST["spine"][:3, 3].copy()


def armature_matrix(orientation: np.ndarray, person) -> np.ndarray:
    """Armature -> world: turn by ``orientation`` (3x3) and scale about the pelvis, put it at the person's spot."""
    m = np.eye(4)
    m[:3, :3] = orientation * person.height_scale
    m[:3, 3] = np.asarray(person.location) - m[:3, :3] @ PELVIS_REST
    return m


def body_from_basis(basis: dict[str, np.ndarray], orientation: np.ndarray, person) -> body_mod.Body:
    bones, deform = rig.forward(basis, armature_matrix(orientation, person))
    return body_mod.build_body(bones, deform, person.height_scale, person.limb_thickness, person.torso_width)


def metarig_basis(pose: Pose, bvh_basis=None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(bone -> 3x3 local rotation, 3x3 global orientation) of a pose: what any body is posed from."""
    basis = bvh_basis(pose) if pose.family == "bvh" else rig.euler_basis(bone_eulers(pose.dofs))
    return basis, orientation_matrix(*pose.orientation)


def body_for(pose: Pose, person) -> body_mod.Body:
    """The body of a sampled (joint-angle) pose. What ``body_from_basis(rig.euler_basis(bone_eulers(
    pose.dofs)), ...)`` gives, with the bone rotations kept in arrays: it runs for every pose re-draw."""
    rotations = rig.euler_stack(bone_euler_array(pose.dofs))
    armature = armature_matrix(orientation_matrix(*pose.orientation), person)
    heads, tails, deform = rig.posed_ends(EULER_BONES, rotations, armature)
    return body_mod.build_body_from_ends(heads, tails, deform, person.height_scale, person.limb_thickness,
                                         person.torso_width)


def pose_person(person, config, bvh_basis=None) -> tuple[body_mod.Body, Pose, int, float]:
    """(body, pose, attempts, overlap): re-draw the pose (same family, seeded by the person's
    ``pose_seed``) while limbs interpenetrate more than ``config.max_interpenetration``; after
    ``config.pose_attempts`` draws keep the least bad. A mocap pose (family ``bvh``) is taken as
    the clip has it (``bvh_basis(pose)`` gives its bone rotations); its overlap is only recorded."""
    pose, best = person.pose, None
    if pose.family == "bvh":
        body = body_from_basis(bvh_basis(pose), orientation_matrix(*pose.orientation), person)
        return body, pose, 1, body_mod.interpenetration(body)
    for attempt in range(max(1, config.pose_attempts)):
        if attempt:
            rng = np.random.default_rng([person.pose_seed, attempt])
            pose = sample_pose(rng, person.pose.family, config.extremeness)
        body = body_for(pose, person)
        worst = body_mod.interpenetration(body)
        if best is None or worst < best[3]:
            best = (body, pose, attempt + 1, worst)
        if worst <= config.max_interpenetration:
            return body, pose, attempt + 1, worst
    body, pose, _, worst = best
    return body, pose, max(1, config.pose_attempts), worst

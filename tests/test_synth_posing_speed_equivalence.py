"""The pose re-draw loop's fast paths (synth/core: rig, collision, pose, body, posing) give what the
plain formulations give: the same random stream, and the same bodies to rounding."""

from __future__ import annotations

import math

import numpy as np
import pytest

from posepipe.synth.core import body, collision, pose as P, posing, rig, scene


def test_uniform_is_numpys_uniform():
    """pose._uniform spells out Generator.uniform; the pose stream depends on them agreeing bit for bit."""
    for lo, hi in ((0, 1), (-180, 180), (140, 160), (-45, -30), (-10.5, 0.25), (0.0, 27.0)):
        a, b = np.random.default_rng([7, lo != 0]), np.random.default_rng([7, lo != 0])
        for _ in range(2000):
            assert P._uniform(a, lo, hi) == float(b.uniform(lo, hi))
        assert a.random() == b.random()  # and they consumed the same draws


def _plain_eulers(dofs):
    r = math.radians
    out = {}
    for bone in ("spine.001", "spine.002", "spine.003"):
        out[bone] = (r(dofs["trunk_flex"]) / 3, r(dofs["trunk_rot"]) / 3, -r(dofs["trunk_side"]) / 3)
    for bone in ("spine.004", "spine.005"):
        out[bone] = (r(dofs["neck_flex"]) / 2, r(dofs["neck_rot"]) / 2, -r(dofs["neck_side"]) / 2)
    for side in P.SIDES:
        m = 1.0 if side == "L" else -1.0
        d = {k.split(".")[0]: v for k, v in dofs.items() if k.endswith("." + side)}
        out[f"upper_arm.{side}"] = (r(d["shoulder_flex"]), m * r(d["shoulder_rot"]),
                                    m * r(d["shoulder_abd"] - P.REST_SHOULDER_ABD))
        out[f"forearm.{side}"] = (r(d["elbow_flex"]), m * r(d["forearm_rot"]), 0.0)
        out[f"thigh.{side}"] = (-r(d["hip_flex"]), m * r(d["hip_rot"]), -m * r(d["hip_abd"]))
        out[f"shin.{side}"] = (r(d["knee_flex"]), 0.0, 0.0)
        out[f"foot.{side}"] = (-r(d["ankle_flex"]), 0.0, 0.0)
    return out


def test_bone_eulers_table_matches_the_written_out_mapping():
    for seed in range(50):
        dofs = P.sample_pose(np.random.default_rng(seed)).dofs
        assert P.bone_eulers(dofs) == _plain_eulers(dofs)  # exactly, and in the same bone order
        assert list(P.bone_eulers(dofs)) == list(_plain_eulers(dofs))


def _rot(axis, a):
    c, s = math.cos(a), math.sin(a)
    m = {"x": [[1, 0, 0], [0, c, -s], [0, s, c]], "y": [[c, 0, s], [0, 1, 0], [-s, 0, c]],
         "z": [[c, -s, 0], [s, c, 0], [0, 0, 1]]}[axis]
    return np.array(m, dtype=float)


def test_euler_and_orientation_matrices_are_the_rotation_products():
    angles = np.random.default_rng(0).uniform(-4, 4, (200, 3))
    for (x, y, z), m in zip(angles, rig.euler_stack(angles)):
        np.testing.assert_allclose(m, _rot("z", z) @ _rot("y", y) @ _rot("x", x), rtol=0, atol=1e-15)
        deg = np.degrees([x, y, z])
        np.testing.assert_allclose(P.orientation_matrix(*deg), _rot("z", z) @ _rot("y", y) @ _rot("x", x),
                                   rtol=0, atol=1e-15)
    assert rig.euler_stack(np.zeros((0, 3))).shape == (0, 3, 3)


def _plain_forward(basis, armature):
    pose = rig.pose_matrices(basis)
    rig_bones = {}
    for name in body.RIG_BONES:
        world = armature @ pose[name]
        rig_bones[name] = (world[:3, 3], world[:3, 3] + world[:3, 1] * rig.LENGTH[name])
    return rig_bones, armature @ pose[body.HEAD_BONE] @ np.linalg.inv(rig.REST[body.HEAD_BONE])


def _random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


@pytest.mark.parametrize("which", ["sampled", "every_bone", "some_bones", "none"])
def test_forward_matches_the_bone_by_bone_chain(which):
    rng = np.random.default_rng(1)
    for seed in range(10):
        if which == "sampled":
            basis = rig.euler_basis(P.bone_eulers(P.sample_pose(np.random.default_rng(seed)).dofs))
        elif which == "every_bone":
            basis = {name: _random_rotation(rng) for name in rig.ORDER}
        elif which == "some_bones":  # e.g. a mocap clip: root, a hand, the face; in any order
            names = ["hand.R", "spine", "face", "thigh.L", "palm.02.L", "not_a_metarig_bone"]
            basis = {name: _random_rotation(rng) for name in names}
        else:
            basis = {}
        armature = np.eye(4)
        armature[:3, :3] = _random_rotation(rng) * rng.uniform(0.8, 1.1)
        armature[:3, 3] = rng.uniform(-5, 5, 3)
        got, got_deform = rig.forward(basis, armature)
        want, want_deform = _plain_forward(basis, armature)
        assert list(got) == list(want)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-12)
        np.testing.assert_allclose(got_deform, want_deform, rtol=0, atol=1e-12)


def test_body_for_matches_the_dict_path():
    cfg = scene.SceneConfig()
    for seed in range(10):
        for person in scene.sample_scene(seed, cfg).people:
            fast = posing.body_for(person.pose, person)
            plain = posing.body_from_basis(rig.euler_basis(P.bone_eulers(person.pose.dofs)),
                                           P.orientation_matrix(*person.pose.orientation), person)
            for field in ("capsules", "radii", "head", "nose", "keypoints", "tolerances"):
                np.testing.assert_allclose(getattr(fast, field), getattr(plain, field), rtol=0, atol=1e-12)
            assert fast.names == plain.names and fast.scale == plain.scale


def _clamp(x):
    return min(max(x, 0.0), 1.0)


def _plain_segment_distances(p0, p1, q0, q1):
    """collision.segment_distances's clamped-parameter rule, one pair at a time in Python floats.
    (As there, a zero-length q0-q1 leaves s at 0 when p0-p1 is not degenerate, where Ericson would
    clamp -c/a: the body's capsules always have length, and this pins what the sampler does.)"""
    eps = 1e-12
    out = []
    for a0, a1, b0, b1 in zip(p0, p1, q0, q1):
        d1, d2, r = a1 - a0, b1 - b0, a0 - b0
        a, e, f, c, b = d1 @ d1, d2 @ d2, d2 @ r, d1 @ r, d1 @ d2
        denom = a * e - b * b
        s = _clamp((b * f - c * e) / denom) if denom > eps and a > eps else 0.0
        t = (b * s + f) / e if e > eps else 0.0
        if t < 0 or t > 1:
            t = _clamp(t)
            s = _clamp((t * b - c) / a) if a > eps else 0.0
        out.append(np.linalg.norm((a0 + d1 * s) - (b0 + d2 * t)))
    return np.array(out)


def test_segment_distances_match_a_pair_by_pair_reference():
    rng = np.random.default_rng(2)
    n = 400
    p0, q0 = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
    p1, q1 = p0 + rng.normal(size=(n, 3)), q0 + rng.normal(size=(n, 3))
    p1[:40] = p0[:40]  # degenerate segments, on either side or both
    q1[20:60] = q0[20:60]
    q0[60:100], q1[60:100] = p0[60:100] + 0.3, p1[60:100] + 0.3  # parallel
    got = collision.segment_distances(p0, p1, q0, q1)
    np.testing.assert_allclose(got, _plain_segment_distances(p0, p1, q0, q1), rtol=0, atol=1e-12)


def test_interpenetration_of_sampled_bodies_matches_the_pairwise_definition():
    cfg = scene.SceneConfig()
    pairs = body.check_pairs()
    for seed in range(5):
        for person in scene.sample_scene(seed, cfg).people:
            b = posing.body_for(person.pose, person)
            i, j = pairs[:, 0], pairs[:, 1]
            dist = _plain_segment_distances(b.capsules[i, 0], b.capsules[i, 1], b.capsules[j, 0], b.capsules[j, 1])
            depth = b.radii[i] + b.radii[j] - dist
            want = float(np.max(depth / np.minimum(b.radii[i], b.radii[j])))
            assert body.interpenetration(b) == pytest.approx(want, rel=0, abs=1e-12)

"""Model, heatmaps, transforms and dataset of posepipe.training (no processes launched)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.schema import FLIP_INDEX, JOINT_INDEX
from posepipe.training import heatmaps, transforms
from posepipe.datasets.instance_dataset import load_instances
from posepipe.training.data import PoseDataset, load_manifest
from posepipe.training.model import build_model, get_config, num_parameters


def test_tiny_and_base_shapes():
    tiny = build_model("tiny")
    assert 80_000 < num_parameters(tiny) < 130_000
    out = tiny(torch.zeros(2, 3, 64, 48))
    assert out.shape == (2, 17, 16, 12)
    base = get_config("base")
    assert base.input_size == (256, 192) and base.heatmap_size == (64, 48)
    with pytest.raises(PosepipeError, match="unknown model"):
        get_config("huge")


def test_heatmap_peak_at_joint_and_zero_weight_for_unlabelled():
    joints = np.zeros((17, 3), dtype=np.float32)
    joints[0] = (5, 7, 2)
    joints[1] = (3, 3, 1)
    joints[2] = (6, 6, 0)  # unlabelled
    joints[3] = (40, 40, 2)  # far outside the 16x12 heatmap
    target, weight = heatmaps.gaussian_targets(joints, (16, 12), sigma=2)
    assert np.unravel_index(target[0].argmax(), target[0].shape) == (7, 5)
    assert target[0, 7, 5] == pytest.approx(1.0)
    assert weight.tolist()[:4] == [1.0, 1.0, 0.0, 0.0]
    assert target[2].max() == 0 and target[3].max() == 0
    coords, maxvals = heatmaps.decode(target[None])
    assert coords[0, 0].tolist() == [5.0, 7.0]
    assert maxvals[0, 2] == 0


def test_decode_quarter_offset_towards_higher_neighbour():
    hm = np.zeros((1, 1, 8, 8), dtype=np.float32)
    hm[0, 0, 4, 4] = 1.0
    hm[0, 0, 4, 5] = 0.5  # right neighbour higher than left
    hm[0, 0, 3, 4] = 0.4  # upper neighbour higher than lower
    coords, _ = heatmaps.decode(hm)
    assert coords[0, 0].tolist() == [4.25, 3.75]


def test_affine_round_trip():
    m = transforms.crop_matrix(np.array([120.0, 80.0]), np.array([90.0, 120.0]), 30.0, (64, 48))
    pts = np.array([[120.0, 80.0], [100.0, 50.0], [150.0, 130.0]])
    crop = transforms.apply_affine(pts, m)
    assert crop[0] == pytest.approx([24.0, 32.0])  # the centre goes to the crop's centre
    back = transforms.apply_affine(crop, transforms.invert(m))
    np.testing.assert_allclose(back, pts, atol=1e-3)


def test_box_to_center_scale_pads_and_keeps_aspect():
    center, scale = transforms.box_to_center_scale((10, 20, 30, 100), 48 / 64)
    assert center.tolist() == [25.0, 70.0]
    assert scale.tolist() == pytest.approx([75 * 1.25, 100 * 1.25])


def test_flip_swaps_left_and_right_joints():
    rng = np.random.default_rng(0)
    image = np.zeros((100, 80, 3), dtype=np.uint8)
    image[:, :40] = 255  # bright left half
    kp = np.zeros((17, 3), dtype=np.float32)
    kp[JOINT_INDEX["left_wrist"]] = (20, 50, 2)  # on the image's left, the bright side
    kp[JOINT_INDEX["right_wrist"]] = (60, 50, 1)
    aug = transforms.AugmentConfig(scale_factor=0, rotation_prob=0, flip_prob=1.0, half_body_prob=0)
    plain = transforms.top_down_crop(image, kp, (0, 0, 80, 100), (64, 48))
    flipped = transforms.top_down_crop(image, kp, (0, 0, 80, 100), (64, 48), rng, aug)
    assert flipped.flipped
    lw, rw = JOINT_INDEX["left_wrist"], JOINT_INDEX["right_wrist"]
    # The joint labelled right_wrist now sits where left_wrist's mirror image is, with its visibility.
    assert flipped.joints[rw, 0] == pytest.approx(47 - plain.joints[lw, 0], abs=1e-4)
    assert flipped.joints[rw, 2] == 2 and flipped.joints[lw, 2] == 1
    np.testing.assert_array_equal(flipped.image, plain.image[:, ::-1])
    assert flipped.image[32, 40].max() == 255 and flipped.image[32, 5].max() == 0
    again = transforms.flip_joints(transforms.flip_joints(plain.joints, 48), 48)
    np.testing.assert_allclose(again, plain.joints, atol=1e-5)
    assert sorted(FLIP_INDEX) == list(range(17))


def test_same_seed_same_bytes_and_pixel_augment_keeps_shape():
    image = np.random.default_rng(1).integers(0, 255, (120, 90, 3), dtype=np.uint8)
    kp = np.random.default_rng(2).uniform(10, 80, (17, 3)).astype(np.float32)
    kp[:, 2] = 2
    aug = transforms.AugmentConfig()
    a = transforms.top_down_crop(image, kp, (5, 5, 80, 110), (64, 48), np.random.default_rng(7), aug)
    b = transforms.top_down_crop(image, kp, (5, 5, 80, 110), (64, 48), np.random.default_rng(7), aug)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.joints, b.joints)
    pix = transforms.PixelAugment(prob=1.0)
    p1, p2 = pix(a.image, 3), pix(a.image, 3)
    assert p1.shape == a.image.shape and p1.dtype == np.uint8
    np.testing.assert_array_equal(p1, p2)
    assert not np.array_equal(pix(a.image, 4), p1)


def test_dataset_reads_store_and_targets_follow_visibility(coco_store, tmp_path):
    inst = coco_store.instances(["coco-train"]).to_pandas()
    inst = inst[(inst["num_keypoints"] > 0) & ~inst["iscrowd"]].head(6)
    ins = load_instances(coco_store, inst["instance_id"])
    ds = PoseDataset(coco_store, ins, (64, 48), train=False)
    s = ds[0]
    assert s["image"].shape == (3, 64, 48) and s["target"].shape == (17, 16, 12)
    v = ins.keypoints[0, :, 2]
    assert (s["target_weight"].numpy()[v == 0] == 0).all()
    # Without augmentation each labelled joint inside the crop peaks where the crop puts it.
    crop = transforms.top_down_crop(ds.image(0), ins.keypoints[0], ins.bbox[0], (64, 48))
    j = int(np.flatnonzero(s["target_weight"].numpy() > 0)[0])
    peak = np.unravel_index(s["target"][j].numpy().argmax(), (16, 12))
    assert abs(peak[1] - crop.joints[j, 0] / 4) <= 0.5 and abs(peak[0] - crop.joints[j, 1] / 4) <= 0.5
    train = PoseDataset(coco_store, ins, (64, 48), train=True, seed=3)
    train.set_epoch(1)
    x1 = train[2]["image"]
    assert torch.equal(x1, train[2]["image"])
    train.set_epoch(2)
    assert not torch.equal(x1, train[2]["image"])


def test_manifest_errors_name_the_file(coco_store, tmp_path):
    with pytest.raises(PosepipeError, match="no manifest here"):
        load_manifest(tmp_path)
    pd.DataFrame({"instance_id": ["x"]}).to_parquet(tmp_path / "manifest.parquet")
    with pytest.raises(PosepipeError, match="missing column"):
        load_manifest(tmp_path)
    with pytest.raises(PosepipeError, match="instance_id nope"):
        load_instances(coco_store, ["nope"])

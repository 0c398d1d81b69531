"""The canonical store's schema: the one definition every reader and writer goes through.

Tables (each a Parquet file per source, see ``store.py``):

* ``images``    one row per image of a source; bytes live once in content-addressed shards.
* ``instances`` one row per person; keypoints are COCO-17, float32, shape (17, 3).
* ``rejects``   one row per record that was read but not accepted, with the raw record.
* ``batches``   one row per ingested file: what was read, accepted and rejected.

Visibility follows COCO: 0 not labelled (or out of frame), 1 labelled but occluded, 2 visible.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 1

COCO17_JOINTS: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
NUM_JOINTS = len(COCO17_JOINTS)
JOINT_INDEX = {name: i for i, name in enumerate(COCO17_JOINTS)}

# 1-based limb pairs, exactly as COCO's person category declares them.
COCO17_SKELETON: tuple[tuple[int, int], ...] = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8),
    (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)
# Index of each joint's mirror image, used by horizontal flips.
FLIP_INDEX: tuple[int, ...] = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)
# Per-joint OKS sigmas from the COCO keypoint evaluation.
OKS_SIGMAS = np.array(
    [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89],
    dtype=np.float64,
) / 10.0

VISIBILITY_NOT_LABELLED = 0
VISIBILITY_OCCLUDED = 1
VISIBILITY_VISIBLE = 2

PERSON_CATEGORY = {
    "id": 1,
    "name": "person",
    "supercategory": "person",
    "keypoints": list(COCO17_JOINTS),
    "skeleton": [list(p) for p in COCO17_SKELETON],
}

KEYPOINTS_TYPE = pa.list_(pa.list_(pa.float32(), 3), NUM_JOINTS)
BBOX_TYPE = pa.list_(pa.float64(), 4)
EXTRA_JOINT_TYPE = pa.struct(
    [("name", pa.string()), ("x", pa.float32()), ("y", pa.float32()), ("visibility", pa.float32())]
)

IMAGES_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),  # first 16 hex digits of the content sha256
        ("source", pa.string()),
        ("source_image_id", pa.int64()),  # the id the source gave it (COCO image id), if any
        ("file_name", pa.string()),  # name in the source, and in COCO exports
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("sha256", pa.string()),
        ("format", pa.string()),  # jpeg, png, ...
        ("num_bytes", pa.int64()),
        ("shard", pa.string()),  # shard file under <store>/shards holding the bytes
        ("offset", pa.int64()),
        ("license", pa.string()),
        ("provenance", pa.string()),  # json: url, date captured, author, other source fields
        ("split", pa.string()),  # split declared by the source, if any
        ("source_file", pa.string()),
        ("record_index", pa.int64()),
        ("batch_id", pa.string()),
    ]
)

INSTANCES_SCHEMA = pa.schema(
    [
        ("instance_id", pa.string()),
        ("image_id", pa.string()),
        ("source", pa.string()),
        ("bbox", BBOX_TYPE),  # x, y, width, height in pixels
        ("area", pa.float64()),
        ("iscrowd", pa.bool_()),
        ("keypoints", KEYPOINTS_TYPE),
        ("num_keypoints", pa.int32()),
        ("skeleton", pa.string()),  # the source's skeleton, mapped to COCO-17
        ("extra_keypoints", pa.list_(EXTRA_JOINT_TYPE)),  # joints COCO-17 lacks
        ("source_annotation_id", pa.int64()),
        ("segmentation", pa.string()),  # json as the source gave it (polygons or RLE), if any
        ("notes", pa.list_(pa.string())),  # what was derived or defaulted, e.g. area_derived
        ("attributes", pa.string()),  # json: unknown source fields and per-source metadata
        ("source_file", pa.string()),
        ("record_index", pa.int64()),
        ("annotator", pa.string()),
        ("batch_id", pa.string()),
        # Model predictions (``pred/`` sources, posepipe predict): per-joint and per-person
        # confidence in 0..1; null for human labels.
        ("keypoint_scores", pa.list_(pa.float32())),  # 17 values (variable-size: Parquet loses null fixed-size lists)
        ("score", pa.float64()),
    ]
)

REJECTS_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("kind", pa.string()),  # file, image or annotation
        ("record_id", pa.string()),
        ("file", pa.string()),
        ("record_index", pa.int64()),
        ("field", pa.string()),
        ("reason", pa.string()),  # stable code, see REASONS
        ("message", pa.string()),
        ("raw", pa.string()),  # the record as read, json
        ("batch_id", pa.string()),
    ]
)

BATCHES_SCHEMA = pa.schema(
    [
        ("batch_id", pa.string()),
        ("source", pa.string()),
        ("source_file", pa.string()),
        ("file_sha256", pa.string()),
        ("format", pa.string()),  # coco, mpii, labelme, synth
        ("images_read", pa.int64()),
        ("images_accepted", pa.int64()),
        ("images_rejected", pa.int64()),
        ("annotations_read", pa.int64()),
        ("annotations_accepted", pa.int64()),
        ("annotations_rejected", pa.int64()),
        ("files_rejected", pa.int64()),
        ("params", pa.string()),  # json: skeleton, split, options used
    ]
)

TABLES: dict[str, pa.Schema] = {
    "images": IMAGES_SCHEMA,
    "instances": INSTANCES_SCHEMA,
    "rejects": REJECTS_SCHEMA,
    "batches": BATCHES_SCHEMA,
}

# Stable reason codes for rejects. The message says the specifics; the code is for machines.
REASONS: dict[str, str] = {
    "file_unreadable": "the file could not be read",
    "invalid_json": "the file is not valid json (or is truncated)",
    "missing_key": "a required top-level key is missing",
    "bad_structure": "a top-level value has the wrong type",
    "no_person_category": "no category with keypoints",
    "unknown_skeleton": "the keypoint names match no known skeleton",
    "not_person_category": "the annotation belongs to a category without keypoints",
    "missing_field": "a required field is missing",
    "bad_type": "a field has the wrong type",
    "duplicate_image_id": "an image id appears twice",
    "duplicate_annotation_id": "an annotation id appears twice",
    "duplicate_image": "the same image content appears under another record",
    "path_escapes": "the image path leaves the images folder",
    "image_missing": "the image file does not exist",
    "image_unreadable": "the image file could not be read",
    "not_an_image": "the file is not a decodable image",
    "image_truncated": "the image file is truncated",
    "image_too_large": "the image has too many pixels to be sane (decompression bomb)",
    "size_mismatch": "the image size differs from the size in the annotation file",
    "image_not_found": "the annotation refers to an image id that is not in the file",
    "image_rejected": "the annotation's image was rejected",
    "keypoints_length": "the keypoint array length is not 3 x the skeleton's joints",
    "bad_visibility": "a visibility flag is not 0, 1 or 2",
    "nonfinite_coordinate": "a coordinate is NaN or infinite",
    "negative_coordinate": "a labelled keypoint has a negative coordinate",
    "keypoint_outside_image": "a labelled keypoint lies far outside the image",
    "num_keypoints_mismatch": "num_keypoints disagrees with the visibility flags",
    "bbox_missing": "the annotation has no bbox",
    "bbox_invalid": "the bbox is malformed, negative or empty",
    "bbox_outside_image": "the bbox lies outside the image",
    "bad_value": "a field has a value outside its allowed range",
    # LabelMe files (annotation/intake.py)
    "no_keypoints": "the file holds no person following the convention (no joint points, no grouped person box)",
    "unknown_label": "a shape label is neither 'person' nor a COCO joint name",
    "duplicate_joint": "the same joint appears twice in one person",
    "ambiguous_person": "a shape without group_id in an image with several people",
    "implausible_person": "a person's joints give no usable box or lie far outside its rectangle",
    "wrong_shape_type": "a joint is not a point shape, or a person is not a rectangle",
    "bad_point_count": "a shape has the wrong number of points for its type",
    "bad_image_data": "imageData is not valid base64",
    # Synthetic renders (synth/run.py)
    "render_failed": "a synthetic render crashed or timed out after its retries",
}


def short_hash(*parts: str | bytes, length: int = 16) -> str:
    """Deterministic id from parts: first ``length`` hex digits of their sha256."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:length]


def image_id_from_sha256(sha256_hex: str) -> str:
    """Images are identified by content, so the same picture has one id in every source."""
    return sha256_hex[:16]


def instance_id(source: str, record_key: str) -> str:
    """Stable per-source id of a person record (``record_key`` is e.g. the COCO annotation id)."""
    return short_hash(source, record_key)


def instance_ids(source: str, record_keys: list, prefix: str = "") -> list[str]:
    """``instance_id(source, prefix + str(key))`` for many keys at once (same values, without
    per-call overhead or a list of intermediate key strings)."""
    head = source.encode("utf-8") + b"\x00" + prefix.encode("utf-8")
    sha = hashlib.sha256
    return [sha(b"%s%s\x00" % (head, str(key).encode("utf-8"))).hexdigest()[:16] for key in record_keys]


def empty_table(name: str) -> pa.Table:
    return TABLES[name].empty_table()


def keypoints_to_arrow(keypoints: np.ndarray) -> pa.Array:
    """(N, 17, 3) float32 -> the nested fixed-size list column, without per-row Python work."""
    kp = np.ascontiguousarray(keypoints, dtype=np.float32).reshape(-1)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(kp, type=pa.float32()), 3)
    return pa.FixedSizeListArray.from_arrays(inner, NUM_JOINTS)


def keypoints_from_arrow(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The keypoints column -> (N, 17, 3) float32 array (zero-copy where Arrow allows)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if len(column) == 0:
        return np.zeros((0, NUM_JOINTS, 3), dtype=np.float32)
    values = column.flatten().flatten().to_numpy(zero_copy_only=False)
    return values.reshape(-1, NUM_JOINTS, 3)


def bbox_to_arrow(bboxes: np.ndarray) -> pa.Array:
    flat = np.ascontiguousarray(bboxes, dtype=np.float64).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float64()), 4)


def bbox_from_arrow(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if len(column) == 0:
        return np.zeros((0, 4), dtype=np.float64)
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, 4)


def conform(table: pa.Table, name: str) -> pa.Table:
    """Cast a table to the named schema, in schema column order; missing columns become null."""
    schema = TABLES[name]
    columns = []
    for field in schema:
        if field.name in table.column_names:
            columns.append(table.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def visibility_histogram(keypoints: np.ndarray) -> dict[str, int]:
    """Counts of joints with v=0, 1 and 2 over an (N, 17, 3) array."""
    v = keypoints[..., 2].astype(np.int64).reshape(-1)
    counts = np.bincount(np.clip(v, 0, 2), minlength=3)
    return {"v0": int(counts[0]), "v1": int(counts[1]), "v2": int(counts[2])}

"""Reading one large COCO file on two cores, with exactly the one-process reader's output.

The ``annotations`` array is cut in two at a record boundary. A forked child parses the second
half while this process parses the first half and reads the images; the child then gets the
accepted images, checks its half and builds its rows, while this process does the same with
the first half. Both halves go through the one-process reader's own functions
(``coco._check_annotations``) with record positions offset, and the results are merged in the
order a single pass produces: structural rejects by record, then check rejects by check and
record. ``tests/test_ingest_split.py`` compares the two readers table by table and byte by byte.

Anything unusual returns ``DECLINED`` before or after reading, and the caller runs the
one-process reader, which owns every file-level message: a file that is not one JSON object
holding the three lists, a cut that does not parse, a skeleton not settled by the first half,
a keypoint-field switch (Human-Art) that one pass would carry across the cut, a value JSON
cannot carry to the child, or a child that fails. An id that the second half repeats from the
first is rejected there as one pass would: the child is sent the ids the first half took.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import msgspec
import numpy as np
import orjson
import pyarrow as pa

from . import coco, skeletons
from .forked import ChildFailed, ForkedChild
from .progress import NoProgress

# Below this size one process is as fast: forking and merging cost about 20 ms.
MIN_BYTES = 16 << 20
DECLINED = object()
# A record boundary candidate; the parse of both halves proves it is one (see _halves).
_BOUNDARY = re.compile(rb"\}\s*,\s*\{")
_TOP_KEYS = ("images", "annotations", "categories")


def usable(data: bytes) -> bool:
    """Worth trying: a large file and a second core to run the child on."""
    if len(data) < MIN_BYTES or not hasattr(os, "fork"):
        return False
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return len(cores) > 1


def read(ctx: coco._Ctx, data: bytes, skeleton_name: str | None) -> Any:
    """The instances table, as ``coco._read_coco`` would build it, or ``DECLINED``."""
    try:
        top = msgspec.json.decode(data, type=dict[str, msgspec.Raw])
    except msgspec.MsgspecError:
        return DECLINED  # not one JSON object (or a list: MPII), or a literal orjson would not read
    if not all(key in top for key in _TOP_KEYS):
        return DECLINED
    raw = memoryview(top["annotations"])
    cut = _BOUNDARY.search(raw, raw.nbytes // 2)
    if raw[:1] != b"[" or cut is None:
        return DECLINED
    # A cut between records makes two valid arrays; a cut inside a record or a string does not.
    second = raw[cut.end() - 1:]
    try:  # its rows take about as many bytes as its half of the JSON
        child = ForkedChild(lambda: orjson.loads(b"[" + second), _child_work(ctx), expected_bytes=second.nbytes)
    except OSError:
        return DECLINED  # no fork or no scratch file (memory or process limits): one process reads it
    with child:
        table = _read_first_half(ctx, child, top, raw[:cut.start() + 1], skeleton_name)
    if table is DECLINED:
        ctx.reset()
    return table


def _read_first_half(ctx: coco._Ctx, child: ForkedChild, top: dict, first_records: memoryview,
                     skeleton_name: str | None) -> Any:
    try:
        first = orjson.loads(bytearray(first_records) + b"]")
        doc = {key: orjson.loads(memoryview(value)) for key, value in top.items() if key != "annotations"}
    except orjson.JSONDecodeError:
        return DECLINED
    if not isinstance(doc["images"], list) or not isinstance(doc["categories"], list):
        return DECLINED
    has_first = any(isinstance(a, dict) and isinstance(a.get("keypoints"), list) for a in first)
    if skeleton_name is None and not has_first:
        return DECLINED  # the skeleton would be detected from a record in the second half
    ctx.doc_meta = {"info": doc.get("info"), "licenses": doc.get("licenses")}
    category_id, skel = coco._person_category(ctx, doc["categories"], first, skeleton_name)
    if skel is None:
        return DECLINED
    coco._read_images(ctx, doc["images"])
    try:
        child.send({
            "offset": len(first), "category_id": category_id, "skeleton": dataclasses.asdict(skel),
            "earlier_ids": list(coco.taken_ids(first)),  # so the child rejects a later copy as one pass does
            "accepted": [[k, *v] for k, v in ctx.accepted_images.items()],
            "rejected": list(ctx.rejected_images.items()),
        })
    except (TypeError, orjson.JSONEncodeError):
        return DECLINED
    mine = coco._check_annotations(ctx, first, category_id, skel)
    try:
        header, table = child.result()
    except ChildFailed:
        return DECLINED
    theirs = coco._Part(header["read"], None, [tuple(v) for v in header["vector"]], table,
                        np.array(header["note_counts"], dtype=np.int64))
    kp_field = mine.sound.kp_field
    if header["kp_field"] != kp_field or (kp_field != "keypoints" and not (mine.sound.fast and header["fast"])):
        return DECLINED
    ctx.add_rejects(header["structural"])
    coco.finish_annotations(ctx, [mine, theirs])
    return pa.concat_tables([mine.table, table])


def _child_work(ctx: coco._Ctx):
    """The child's half: its own copy of ``ctx`` (forked) gets the parent's images and settings."""

    def work(second: list, message: dict) -> tuple[dict, pa.Table]:
        ctx.accepted_images = {k: (image_id, w, h) for k, image_id, w, h in message["accepted"]}
        ctx.rejected_images = dict(message["rejected"])
        ctx.rejects.rows = []
        ctx.progress = NoProgress()
        spec = message["skeleton"]
        skel = skeletons.Skeleton(
            name=spec["name"], joints=tuple(spec["joints"]), file_names=tuple(spec["file_names"]),
            extra_fields=tuple((fld, tuple(names)) for fld, names in spec["extra_fields"]),
            counted_joints=spec["counted_joints"],
        )
        part = coco._check_annotations(ctx, second, message["category_id"], skel, offset=message["offset"],
                                       earlier_ids=frozenset(message["earlier_ids"]))
        header = {
            "read": part.read, "structural": ctx.rejects.rows, "vector": part.vector_rejects,
            "kp_field": part.sound.kp_field, "fast": part.sound.fast,
            "note_counts": part.note_counts.tolist(),
        }
        return header, part.table

    return work

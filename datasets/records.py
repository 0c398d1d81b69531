"""Builders for the rows every reader produces (COCO, MPII, LabelMe, synthetic).

Readers collect plain Python values here and get schema-conformant Arrow tables back, so no
reader builds a table by hand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from . import schema


_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def to_json(value: Any) -> str:
    try:
        return orjson.dumps(value, option=_JSON_OPTIONS).decode()
    except orjson.JSONEncodeError:
        # orjson stops at 64-bit integers; user files may hold bigger ones (a huge group_id).
        return json.dumps(value, default=_plain)


def json_column(values: list) -> pa.Array:
    """``to_json`` of each value as a string column, None staying null; one comprehension
    instead of a call per value (this runs once per annotation)."""
    dumps = orjson.dumps
    try:
        out = [None if v is None else dumps(v, option=_JSON_OPTIONS).decode() for v in values]
    except orjson.JSONEncodeError:
        out = [None if v is None else to_json(v) for v in values]
    return pa.array(out, type=pa.string())


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)


def raw_json(value: Any) -> str:
    """The raw record for a reject: never fails, whatever the record holds."""
    try:
        return to_json(value)
    except (TypeError, orjson.JSONEncodeError):
        return orjson.dumps(repr(value)).decode()


@dataclass
class Rejects:
    source: str
    file: str
    batch_id: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, kind: str, record_id: Any, record_index: int | None, field_name: str | None,
            reason: str, message: str, raw: Any) -> None:
        self.rows.append(self.row(kind, record_id, record_index, field_name, reason, message, raw))

    def row(self, kind: str, record_id: Any, record_index: int | None, field_name: str | None,
            reason: str, message: str, raw: Any) -> dict[str, Any]:
        """One rejects row, not yet added (readers that merge rows from several workers order them first)."""
        assert reason in schema.REASONS, reason
        return {
            "source": self.source,
            "kind": kind,
            "record_id": None if record_id is None else str(record_id),
            "file": self.file,
            "record_index": record_index,
            "field": field_name,
            "reason": reason,
            "message": message,
            "raw": raw_json(raw),
            "batch_id": self.batch_id,
        }

    def count(self, kind: str) -> int:
        return sum(1 for r in self.rows if r["kind"] == kind)

    def table(self) -> pa.Table:
        if not self.rows:
            return schema.empty_table("rejects")
        return pa.Table.from_pylist(self.rows, schema=schema.REJECTS_SCHEMA)


def images_table(rows: list[dict[str, Any]]) -> pa.Table:
    if not rows:
        return schema.empty_table("images")
    return pa.Table.from_pylist(rows, schema=schema.IMAGES_SCHEMA)


def instances_table(
    columns: dict[str, Any], keypoints: np.ndarray, bboxes: np.ndarray
) -> pa.Table:
    """``columns`` holds equal-length lists for every instances column but keypoints and bbox."""
    n = len(keypoints)
    arrays = []
    for f in schema.INSTANCES_SCHEMA:
        if f.name == "keypoints":
            arrays.append(schema.keypoints_to_arrow(keypoints))
        elif f.name == "bbox":
            arrays.append(schema.bbox_to_arrow(bboxes))
        else:
            values = columns.get(f.name)
            if values is None:
                arrays.append(pa.nulls(n, f.type))
            elif isinstance(values, pa.Array):
                arrays.append(values if values.type == f.type else values.cast(f.type))
            elif isinstance(values, np.ndarray):
                arrays.append(pa.array(values).cast(f.type))
            else:
                arrays.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema.INSTANCES_SCHEMA)


def bbox_from_keypoints(keypoints: np.ndarray, width: int, height: int, padding: float = 0.1) -> list[float]:
    """Box around the labelled joints, padded by ``padding`` of its size each side, clipped to the image."""
    labelled = keypoints[keypoints[:, 2] > 0]
    if len(labelled) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    x0, y0 = labelled[:, 0].min(), labelled[:, 1].min()
    x1, y1 = labelled[:, 0].max(), labelled[:, 1].max()
    pad_x, pad_y = (x1 - x0) * padding, (y1 - y0) * padding
    x0, y0 = max(0.0, x0 - pad_x), max(0.0, y0 - pad_y)
    x1, y1 = min(float(width), x1 + pad_x), min(float(height), y1 + pad_y)
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]

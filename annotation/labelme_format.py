"""LabelMe json as written by every version in use, as pydantic models.

One model covers them all, because the versions differ by optional keys only:

* 3.x: ``lineColor``/``fillColor`` at the top, ``line_color``/``fill_color`` per shape, and
  early files have no ``shape_type`` (a polygon) and no ``imageHeight``/``imageWidth``;
* 4.x: ``group_id``, ``shape_type`` and per-shape ``flags``, no ``description``;
* 5.x: ``description`` and ``mask``, ``imageData`` usually embedded as base64;
* 6.x/7.x: ``imageData: null`` by default;
* X-AnyLabeling: extra keys (``score``, ``difficult``, ``visible``, ``kie_linking``, ...) and
  rectangles stored as 4 corner points.

Unknown keys are kept (``extra="allow"``), never an error. Parsing and validation happen in one
pass over the bytes (``model_validate_json``), so a bad file costs no more than a good one.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

# The version posepipe writes: the oldest labelme the ``annotate`` extra accepts.
WRITE_VERSION = "5.5.0"
# Keys labelme's own LabelFile reads; anything else in a file is an extra.
FILE_KEYS = ("version", "flags", "shapes", "imagePath", "imageData", "imageHeight", "imageWidth")
SHAPE_KEYS = ("label", "points", "group_id", "shape_type", "flags", "description", "mask")


class Shape(BaseModel):
    model_config = ConfigDict(extra="allow")

    label: str
    points: list[list[float]]
    group_id: int | None = None
    shape_type: str | None = None  # absent in early 3.x files, where every shape is a polygon
    flags: dict[str, Any] | None = None
    description: str | None = None
    difficult: bool | None = None  # X-AnyLabeling's occlusion flag

    @property
    def kind(self) -> str:
        return self.shape_type or "polygon"


class LabelMeFile(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: str | None = None
    flags: dict[str, Any] | None = None
    shapes: list[Shape]
    imagePath: str | None = None
    imageData: str | None = None
    imageHeight: int | None = None
    imageWidth: int | None = None


def parse(data: bytes) -> LabelMeFile:
    """Parse and validate a LabelMe file; raises pydantic's ValidationError."""
    return LabelMeFile.model_validate_json(data)


def describe_error(exc: ValidationError, data: bytes) -> tuple[str, str | None, int | None, str]:
    """(reason code, field, shape index, one-line detail) for the first problem pydantic found."""
    err = exc.errors(include_url=False)[0]
    loc = err["loc"]
    if err["type"] == "json_invalid":
        return "invalid_json", None, None, f"not valid json ({err['msg'].removeprefix('Invalid JSON: ')})"
    if not loc:
        return "bad_structure", None, None, f"top level is not a LabelMe object ({err['msg']})"
    if loc[0] == "shapes" and len(loc) >= 2 and isinstance(loc[1], int):
        index = loc[1]
        field = ".".join(str(p) for p in loc[2:]) or None
        where = f"shape #{index}"
        label = _label_of(data, index)
        if label is not None:
            where += f" (label '{label}')"
        value = f" (got {_short(err.get('input'))})" if err["type"] != "missing" else ""
        reason = "missing_field" if err["type"] == "missing" else "bad_type"
        return reason, f"shapes[{index}].{loc[2] if len(loc) > 2 else ''}".rstrip("."), index, \
            f"{where}, field '{field}': {err['msg']}{value}"
    field = ".".join(str(p) for p in loc)
    if err["type"] == "missing":
        return "missing_key", field, None, f"missing top-level key '{field}'"
    return "bad_type", field, None, f"top-level '{field}': {err['msg']} (got {_short(err.get('input'))})"


def _label_of(data: bytes, index: int) -> str | None:
    """The label of shape ``index`` of a file that failed validation, for the message."""
    import orjson

    try:
        shape = orjson.loads(data)["shapes"][index]
        return str(shape["label"])
    except Exception:  # noqa: BLE001 - best effort: the message is still clear without it
        return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def shape_dict(label: str, points: list[list[float]], shape_type: str, group_id: int | None,
               flags: dict[str, bool]) -> dict[str, Any]:
    """A shape exactly as labelme 5.5+ writes it (key order included)."""
    return {
        "label": label, "points": points, "group_id": group_id, "description": "",
        "shape_type": shape_type, "flags": flags, "mask": None,
    }


def file_dict(shapes: list[dict], image_path: str, height: int, width: int,
              flags: dict[str, bool], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A file exactly as labelme writes it with ``--nodata`` (imageData null)."""
    doc = {"version": WRITE_VERSION, "flags": flags, "shapes": shapes, "imagePath": image_path,
           "imageData": None, "imageHeight": int(height), "imageWidth": int(width)}
    if extra:
        doc.update(extra)  # labelme keeps unknown top-level keys as otherData and writes them back
    return doc

"""LabelMe json as written by every version in use, as pydantic models.

One model covers them all, because the versions differ by optional keys only:

* 3.x: ``lineColor``/``fillColor`` at the top, ``line_color``/``fill_color`` per shape, and
  early files have no ``shape_type`` (a polygon) and no ``imageHeight``/``imageWidth``;
* 4.x: ``group_id``, ``shape_type`` and per-shape ``flags``, no ``description``;
* 5.x: ``description`` and ``mask``, ``imageData`` usually embedded as base64;
* 6.x/7.x: ``imageData: null`` by default;
* X-AnyLabeling: extra keys (``score``, ``difficult``, ``visible``, ``kie_linking``, ...) and
  rectangles stored as 4 corner points.

Unknown keys are kept (``extra="allow"``), never an error. Intake reads files with :func:`load`:
plain dicts, with the values the model gives. Most files hold exactly the JSON types the model
declares, and for them orjson plus type checks is several times cheaper than pydantic; every
other file (coercions such as ``"1"`` for an int, NaN literals, broken json) goes through
pydantic, which gives the same values or the error message.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

# The version posepipe writes: the oldest labelme the ``annotate`` extra accepts.
WRITE_VERSION = "5.5.0"
# Keys labelme's own LabelFile reads; anything else in a file is an extra.
FILE_KEYS = ("version", "flags", "shapes", "imagePath", "imageData", "imageHeight", "imageWidth")
SHAPE_KEYS = ("label", "points", "group_id", "shape_type", "flags", "description", "mask")
# The fields the models below declare; any other key of a file or shape is an extra.
FILE_FIELDS = frozenset(FILE_KEYS)
SHAPE_FIELDS = ("label", "points", "group_id", "shape_type", "flags", "description", "difficult")
SHAPE_FIELD_SET = frozenset(SHAPE_FIELDS)
# pydantic's json parser stops at about 200 levels of nesting, orjson at 1024: free-form values
# nested deeper than this go to pydantic, which decides.
_PLAIN_DEPTH = 64
_OPT_STR = frozenset((str, type(None)))
_OPT_INT = frozenset((int, type(None)))  # bool is not int here: pydantic decides
_OPT_BOOL = frozenset((bool, type(None)))
_OPT_DICT = frozenset((dict, type(None)))
_CONTAINERS = frozenset((dict, list))
_TYPED_FILE_FIELDS = FILE_FIELDS - {"flags"}
# Shape keys whose values _plain checks one by one (the rest are extras).
_USUAL_SHAPE_KEYS = SHAPE_FIELD_SET | {"mask"}


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


def load(data: bytes) -> dict[str, Any]:
    """The file as plain dicts, with exactly the values ``parse`` gives; raises ValidationError.

    Shapes are dicts too; a missing optional field reads as None (``shape.get``), and the keys
    outside FILE_FIELDS / SHAPE_FIELDS are the extras.
    """
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        doc = None
    if type(doc) is dict and _plain(doc):
        return doc
    return to_plain(parse(data))


def to_plain(model: LabelMeFile) -> dict[str, Any]:
    """A validated model as the dicts ``load`` returns."""
    doc: dict[str, Any] = {f: getattr(model, f) for f in FILE_KEYS}
    doc["shapes"] = [{**{f: getattr(s, f) for f in SHAPE_FIELDS}, **(s.model_extra or {})} for s in model.shapes]
    doc.update(model.model_extra or {})
    return doc


def shape_raw(shape: dict[str, Any]) -> dict[str, Any]:
    """A shape as the reject row shows it: the model's dump without None values."""
    return Shape.model_validate(shape).model_dump(exclude_none=True)


def _plain(doc: dict) -> bool:
    """Whether every value already has the type the model declares, so pydantic would change
    nothing (int coordinates become floats here, as pydantic makes them)."""
    get = doc.get
    shapes = get("shapes")
    if not (type(shapes) is list and type(get("version")) in _OPT_STR and type(get("imagePath")) in _OPT_STR
            and type(get("imageData")) in _OPT_STR and type(get("imageHeight")) in _OPT_INT
            and type(get("imageWidth")) in _OPT_INT and type(get("flags")) in _OPT_DICT):
        return False
    for k in doc.keys() - _TYPED_FILE_FIELDS:  # flags and the extras: any json, not too deep
        if type(doc[k]) in _CONTAINERS and not _shallow(doc[k], 0):
            return False
    for shape in shapes:
        if type(shape) is not dict:
            return False
        get = shape.get
        points = get("points")
        flags = get("flags")
        if not (type(get("label")) is str and type(points) is list and type(get("group_id")) in _OPT_INT
                and type(get("shape_type")) in _OPT_STR and type(get("description")) in _OPT_STR
                and type(get("difficult")) in _OPT_BOOL and (flags is None or type(flags) is dict)):
            return False
        ints = False
        for point in points:
            if type(point) is not list:
                return False
            if len(point) == 2 and type(point[0]) is float and type(point[1]) is float:
                continue  # the usual point, checked without a loop
            for c in point:
                if type(c) is not float:
                    if type(c) is not int:  # bool is not int here: pydantic decides
                        return False
                    ints = True
        if ints:
            shape["points"] = [[float(c) for c in point] for point in points]
        # The free-form values (flags, mask, extras) must not nest too deep. Checked without
        # building a set of extra keys per shape: flags and mask directly, the rest only when
        # the shape has keys beyond the usual ones.
        if flags:
            for v in flags.values():
                if (type(v) is dict or type(v) is list) and not _shallow(v, 1):
                    return False
        mask = get("mask")
        if (type(mask) is dict or type(mask) is list) and not _shallow(mask, 0):
            return False
        if not shape.keys() <= _USUAL_SHAPE_KEYS:
            for k in shape.keys() - _USUAL_SHAPE_KEYS:  # the extras
                if type(shape[k]) in _CONTAINERS and not _shallow(shape[k], 0):
                    return False
    return True


def _shallow(value: Any, depth: int) -> bool:
    """Whether a free-form value nests less than _PLAIN_DEPTH deep (scalars cost no call)."""
    if depth >= _PLAIN_DEPTH:
        return False
    for v in value.values() if type(value) is dict else value:
        if (type(v) is dict or type(v) is list) and not _shallow(v, depth + 1):
            return False
    return True


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

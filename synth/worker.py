"""Child-process entry point: render a fixed list of seeds and leave one result per seed.

Run as ``python -m posepipe.synth.worker JOB.json``. For each unit it writes ``<index>.img`` and
then ``<index>.json`` into the job's output folder, each atomically, so the parent sees either a
whole result or none. The parent process is the only writer of the store.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from posepipe.datasets import atomic

from .core import scene as scene_mod


def background(spec: scene_mod.BackgroundSpec, width: int, height: int, seed: int,
               photo: str | None = None) -> np.ndarray:
    """(H, W, 3) float 0..1: a real photo (scaled to cover the frame, centre-cropped) when given,
    else a vertical gradient with seeded noise."""
    if photo:
        from PIL import Image

        with Image.open(photo) as im:
            im = im.convert("RGB")
            scale = max(width / im.width, height / im.height)
            w, h = max(width, round(im.width * scale)), max(height, round(im.height * scale))
            im = im.resize((w, h), Image.BILINEAR)
            left, top = (w - width) // 2, (h - height) // 2
            return np.asarray(im.crop((left, top, left + width, top + height)), dtype=np.float32) / 255.0
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    top, bottom = np.array(spec.top_rgb, np.float32), np.array(spec.bottom_rgb, np.float32)
    img = top * (1 - t) + bottom * t
    noise = np.random.default_rng(seed).normal(0, spec.noise, (height, width, 1)).astype(np.float32)
    out = np.add(img, noise)  # broadcasts to (H, W, 3)
    return np.clip(out, 0, 1, out=out)


def composite(rgba: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Blender's RGBA render (straight, unpremultiplied alpha) over the background, as (H, W, 4)
    uint8 RGBX (the 4th byte is padding: 4-byte pixels let opaque ones be copied as one word).

    Only partly covered pixels need the blend; clear ones take the background and opaque ones the
    render. Those two shortcuts give exactly what the blend would, and most pixels are one or the
    other, so this costs a fraction of blending the whole frame.
    """
    rgba = np.ascontiguousarray(rgba)
    alpha = rgba[..., 3]
    out = np.empty(rgba.shape, np.uint8)
    np.rint(bg * 255, out=out[..., :3], casting="unsafe")  # bg is within 0..1
    opaque = alpha == 255
    np.copyto(out.view(np.uint32), rgba.view(np.uint32), where=opaque[..., None])
    edge = (alpha > 0) & ~opaque
    px = rgba[edge].astype(np.float32) / 255.0
    a = px[:, 3:4]
    out[..., :3][edge] = np.clip(np.rint((px[:, :3] * a + bg[edge] * (1 - a)) * 255), 0, 255).astype(np.uint8)
    return out


def encode(rgbx: np.ndarray, fmt: str) -> bytes:
    """PNG or JPEG (RGB, no metadata) of an (H, W, 4) uint8 RGBX image."""
    from PIL import Image

    out = Image.frombytes("RGB", (rgbx.shape[1], rgbx.shape[0]), rgbx.tobytes(), "raw", "RGBX")
    buf = io.BytesIO()
    if fmt == "jpeg":
        out.save(buf, format="JPEG", quality=92, optimize=False)
    else:
        out.save(buf, format="PNG", compress_level=1)  # level 1: ~4x faster than 6, files ~10% larger
    return buf.getvalue()


def mask_annotation(mask: np.ndarray) -> dict | None:
    """bbox, area and COCO RLE of a boolean mask; None when the mask is empty."""
    from pycocotools import mask as mask_utils

    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    rle = mask_utils.encode(np.asfortranarray(mask.view(np.uint8)))
    return {
        "bbox": [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)],
        "area": float(np.count_nonzero(mask)),
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
    }


def _config(job: dict) -> scene_mod.SceneConfig:
    return scene_mod.SceneConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["config"].items()})


def run_unit(renderer, unit: dict, job: dict, tmp: Path) -> tuple[bytes, dict]:
    t0 = time.perf_counter()
    cfg = _config(job)
    spec = scene_mod.sample_scene(unit["seed"], cfg)
    photo = unit.get("background")
    bg = background(spec.background, spec.width, spec.height, unit["seed"], photo and photo["path"])
    world_rgb = None
    if photo:
        spec.background.kind = "store"
        # Ambient light takes the photo's mean colour (sRGB -> roughly linear), so the person sits in it.
        world_rgb = tuple(float(c) ** 2.2 for c in bg.reshape(-1, 3).mean(axis=0))
    result = renderer.render(spec, cfg, tmp, world_rgb=world_rgb)
    t_rendered = time.perf_counter()
    data = encode(composite(result.rgba, bg), job["format"])
    people, hidden = [], []
    for p, person in enumerate(result.people):
        ann = mask_annotation(result.index == p + 1)
        if ann is None:
            hidden.append(p)  # nothing of this person reaches the image
            continue
        kp = np.round(person.keypoints, 3)
        people.append({
            "person": p, "keypoints": kp.tolist(), "occlusion": person.occlusion,
            "num_keypoints": int((kp[:, 2] > 0).sum()), **ann,
            "pose": person.pose.to_dict(), "pose_attempts": person.pose_attempts,
            "interpenetration": round(person.interpenetration, 4),
        })
    spec_dict = spec.to_dict()
    for sp, person in zip(spec_dict["people"], result.people):
        sp["pose"] = person.pose.to_dict()  # the pose actually rendered (after re-draws)
    annotation = {
        "index": unit["index"], "seed": unit["seed"], "width": spec.width, "height": spec.height,
        "format": job["format"], "sha256": hashlib.sha256(data).hexdigest(), "engine": result.engine,
        "samples": result.samples, "device": result.device, "people": people, "hidden_people": hidden,
        "camera": result.camera, "scene": spec_dict,
        "background": {k: v for k, v in photo.items() if k != "path"} if photo else None,
        # Timings vary run to run; they live apart so the rest is byte-identical per seed.
        "timing": {"render_seconds": round(result.render_seconds, 4),
                   "unit_seconds": round(time.perf_counter() - t0, 4),
                   "encode_seconds": round(time.perf_counter() - t_rendered, 4),
                   **{k: round(v, 4) for k, v in result.timings.items()}},
    }
    return data, annotation


def main(argv: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    args = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(args[0]).read_text())
    out = Path(job["out"])
    # Test hooks: indices whose worker dies, or hangs, instead of rendering them.
    crash_on, hang_on = set(job.get("crash_on", [])), set(job.get("hang_on", []))
    from .renderer.blender import BlenderRenderer

    renderer = BlenderRenderer(job["engine"], job["samples"], job.get("device", "auto"), job.get("threads", 0),
                               clips=job.get("bvh"), rig=job.get("rig"))
    t_stage = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="posepipe-synth-") as tmp:
        # One-off work that used to fall into the first image's timing: done and timed up front and
        # reported apart from the images (and within the whole setup, which adds Blender's import).
        import PIL.Image
        import pycocotools.mask  # noqa: F401

        PIL.Image.preinit()  # the PNG/JPEG plugins, otherwise loaded by the first save
        renderer.stage(_config(job), Path(tmp))
        t_ready = time.perf_counter()
        setup = {"worker_setup_seconds": round(t_ready - t0, 4), "stage_seconds": round(t_ready - t_stage, 4)}
        for unit in job["units"]:
            if (out / f"{unit['index']}.json").exists():
                continue
            if unit["index"] in crash_on:
                os._exit(3)
            if unit["index"] in hang_on:
                time.sleep(3600)
            data, annotation = run_unit(renderer, unit, job, Path(tmp))
            annotation["timing"].update(setup)  # on this worker's first image only
            setup = {}
            # Scratch files the parent reads moments later: atomic (never seen half-written), not
            # fsynced (the store's commit is what must survive a crash; 2 fsyncs cost ~2 ms an image).
            atomic.write_bytes(out / f"{unit['index']}.img", data, durable=False)
            atomic.write_bytes(out / f"{unit['index']}.json", orjson.dumps(annotation), durable=False)
    sys.stdout.flush()
    sys.stderr.flush()
    # Leaving through Blender's own exit can hang after an add-on error; everything is written.
    os._exit(0)


if __name__ == "__main__":
    main()

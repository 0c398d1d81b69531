"""Procedural clothing of an Anny person: which body region wears what (no texture assets).

The mesh's regions (``anny_body.REGIONS``, by each vertex's most weighted bone) are painted with
one of the material slots :data:`SLOTS`: a top over the torso and, by sleeve length, the upper
arms (short sleeves) or whole arms (long); bottoms over the hips and thighs and, for long
trousers, the shins; shoes on the feet; skin elsewhere (head, neck, hands, bare limbs).
Hair is painted on the scalp (10% bald), in one of :data:`HAIR`; the iris dark.
Hair is painted on the scalp (10% bald), in one of :data:`HAIR`; the iris is dark.
Colours and the cloth's noise pattern are the person's ``clothing_rgb``, ``trousers_rgb`` and
``texture_scale`` (drawn in ``scene.sample_scene``); the cut is drawn here.
"""

from __future__ import annotations

import numpy as np

from .anny_body import REGIONS

SLOTS = ("skin", "top", "bottom", "shoes", "eyes", "hair", "iris")
# Hair colours (linear RGB): black, dark brown, brown, auburn, blond, grey
HAIR = ((0.015, 0.012, 0.01), (0.04, 0.022, 0.012), (0.09, 0.05, 0.025), (0.16, 0.06, 0.03),
        (0.45, 0.32, 0.16), (0.42, 0.42, 0.42))
_HAIR_P = (0.3, 0.25, 0.17, 0.06, 0.12, 0.10)
SLEEVES = ("none", "short", "long")
LEGS = ("shorts", "long")
_SLEEVE_P = (0.15, 0.45, 0.40)
_LEGS_P = (0.35, 0.65)


def sample_outfit(rng: np.random.Generator) -> dict:
    """The cut and the shoes' colour, from the person's own stream (a fixed number of draws)."""
    sleeves = SLEEVES[int(rng.choice(len(SLEEVES), p=_SLEEVE_P))]
    legs = LEGS[int(rng.choice(len(LEGS), p=_LEGS_P))]
    shoes = tuple(float(c) for c in rng.uniform(0.02, 0.6, 3))
    bald = bool(rng.random() < 0.1)
    hair = HAIR[int(rng.choice(len(HAIR), p=_HAIR_P))]
    return {"sleeves": sleeves, "legs": legs, "shoes_rgb": shoes, "hair": "none" if bald else "short",
            "hair_rgb": hair}


def region_slots(outfit: dict) -> np.ndarray:
    """(len(REGIONS),) material slot of each body region for ``outfit``."""
    sleeves, legs = outfit.get("sleeves", "long"), outfit.get("legs", "long")
    wear = {
        "skin": "skin", "eye": "eyes", "torso": "top", "hips": "bottom", "thigh": "bottom", "foot": "shoes",
        "upper_arm": "top" if sleeves in ("short", "long") else "skin",
        "lower_arm": "top" if sleeves == "long" else "skin",
        "shin": "bottom" if legs == "long" else "skin",
        "scalp": "skin" if outfit.get("hair", "short") == "none" else "hair", "iris": "iris",
    }
    return np.array([SLOTS.index(wear[r]) for r in REGIONS], dtype=np.int32)

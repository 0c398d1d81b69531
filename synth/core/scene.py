"""Plain description of one synthetic scene, randomised from ONE seeded numpy Generator.

Nothing here knows Blender: the renderer reads these dataclasses and builds what they say, so the
randomisation can be tested (and reproduced) without rendering. Placement that needs the posed
bodies (camera distance, occluders between camera and a person) is computed by the functions at
the end from the world-space keypoints the renderer reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from . import camera as cam
from .outfit import sample_outfit
from .phenotype import sample_phenotype
from .pose import Pose, sample_pose


@dataclass
class SceneConfig:
    width: int = 256
    height: int = 256
    min_people: int = 1
    max_people: int = 3
    max_occluders: int = 2
    occluder_probability: float = 0.5
    families: tuple[str, ...] | None = None  # None: all
    extremeness: float = 0.6
    max_interpenetration: float = 0.5  # share of the thinner part's radius
    pose_attempts: int = 20
    bvh_clips: tuple = ()  # ((clip name, frame count), ...): mocap poses as a second pose source
    bvh_share: float = 0.5  # chance that a person takes a mocap frame instead of a sampled pose
    elevation: tuple = (-30.0, 80.0)  # camera degrees above the horizon (uniform)
    free_roll: float = 0.2  # share of images whose camera roll is uniform over the circle (else ~N(0, 10))
    body: str = "anny"  # "anny": realistic Anny bodies (anny_body.py); "mannequin": capsule mannequins
    age_range: tuple = (0.0, 90.0)  # years, Anny people's ages (phenotype.py)


@dataclass
class PersonSpec:
    pose: Pose
    height_scale: float  # uniform scale of the 1.98 m metarig
    limb_thickness: float
    torso_width: float
    location: tuple[float, float, float]  # where the pelvis goes
    skin_rgb: tuple[float, float, float]
    clothing_rgb: tuple[float, float, float]
    trousers_rgb: tuple[float, float, float]
    texture_scale: float  # noise texture on clothing; 0 = plain
    pose_seed: int  # seeds re-draws of the pose when limbs interpenetrate
    phenotype: dict = field(default_factory=dict)  # Anny bodies: phenotype.sample_phenotype's draw
    outfit: dict = field(default_factory=dict)  # Anny bodies: outfit.sample_outfit's draw


@dataclass
class CameraSpec:
    fill: float  # share of the narrower image side the people span (>1 crops them)
    elevation: float  # degrees above the horizon (negative: from below)
    azimuth: float
    roll: float
    focal_mm: float


@dataclass
class LightSpec:
    kind: str  # SUN, POINT or AREA
    energy: float  # W (point/area) or W/m^2 (sun)
    kelvin: float
    rgb: tuple[float, float, float]
    azimuth: float
    elevation: float


@dataclass
class OccluderSpec:
    kind: str  # box, cylinder or plane
    target: int  # index of the person it hides
    along: float  # fraction of the way from the camera to the target
    offset: tuple[float, float]  # sideways/up offset in the camera plane, in target radii
    size: tuple[float, float, float]  # metres
    rotation: float  # degrees about the view axis
    rgb: tuple[float, float, float]


@dataclass
class BackgroundSpec:
    kind: str  # gradient or store
    top_rgb: tuple[float, float, float]
    bottom_rgb: tuple[float, float, float]
    noise: float
    pick: float  # which store image, as a fraction of the list (kind == store)


@dataclass
class SceneSpec:
    seed: int
    width: int
    height: int
    people: list[PersonSpec]
    camera: CameraSpec
    lights: list[LightSpec]
    occluders: list[OccluderSpec]
    background: BackgroundSpec
    world_strength: float
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        for p, person in zip(d["people"], self.people):
            p["pose"] = person.pose.to_dict()
        return d


BODIES = ("anny", "mannequin")
# Named random streams of a person, apart from the scene's own (whose draws stay as they were):
# np.random.default_rng([unit seed, stream, person index]).
PHENOTYPE_STREAM = 0xA27
OUTFIT_STREAM = 0x0F17


# Skin tones (linear RGB) spanning the Fitzpatrick scale, plus a spread of clothing colours.
_SKIN = np.array([[0.85, 0.64, 0.52], [0.76, 0.53, 0.40], [0.62, 0.42, 0.30], [0.45, 0.29, 0.20],
                  [0.30, 0.19, 0.13], [0.18, 0.11, 0.08]])


def kelvin_to_rgb(kelvin: float) -> tuple[float, float, float]:
    """Approximate colour of a black body (Tanner Helland's fit), 0..1 per channel."""
    t = kelvin / 100.0
    r = 1.0 if t <= 66 else 1.292936 * (t - 60) ** -0.1332047592
    g = (0.390081579 * np.log(t) - 0.631841444) if t <= 66 else 1.129890861 * (t - 60) ** -0.0755148492
    b = 1.0 if t >= 66 else (0.0 if t <= 19 else 0.543206789 * np.log(t - 10) - 1.196254089)
    return tuple(float(np.clip(c, 0, 1)) for c in (r, g, b))


def _rgb(rng: np.random.Generator) -> tuple[float, float, float]:
    return tuple(float(c) for c in rng.uniform(0.03, 0.9, 3))


def sample_scene(seed: int, config: SceneConfig | None = None) -> SceneSpec:
    """Everything random about one image, drawn from ``np.random.default_rng(seed)`` in a fixed order."""
    cfg = config or SceneConfig()
    rng = np.random.default_rng(seed)
    n_people = int(rng.integers(cfg.min_people, cfg.max_people + 1))
    people = []
    for k in range(n_people):
        family = None
        if cfg.families:
            family = cfg.families[int(rng.integers(len(cfg.families)))]
        pose = sample_pose(rng, family, cfg.extremeness)
        if cfg.bvh_clips and rng.random() < cfg.bvh_share:
            # A mocap frame keeps the clip's own body orientation; only the heading is drawn.
            name, frames = cfg.bvh_clips[int(rng.integers(len(cfg.bvh_clips)))]
            pose = Pose("bvh", {}, (0.0, 0.0, float(rng.uniform(-180, 180))),
                        {"clip": str(name), "frame": int(rng.integers(int(frames)))})
        # People stand 0.5-1.2 m apart side by side with some depth jitter, so they overlap in some views.
        x = (k - (n_people - 1) / 2) * float(rng.uniform(0.5, 1.2))
        people.append(PersonSpec(
            pose=pose,
            height_scale=float(rng.uniform(0.78, 0.98)),
            limb_thickness=float(rng.uniform(0.85, 1.3)),
            torso_width=float(rng.uniform(0.85, 1.3)),
            location=(x, float(rng.uniform(-0.4, 0.4)), float(rng.uniform(-0.1, 0.1))),
            skin_rgb=tuple(float(c) for c in _SKIN[int(rng.integers(len(_SKIN)))] * rng.uniform(0.9, 1.1)),
            clothing_rgb=_rgb(rng),
            trousers_rgb=_rgb(rng),
            texture_scale=float(rng.choice([0.0, rng.uniform(5, 40)])),
            pose_seed=int(rng.integers(2**31)),
        ))
        if cfg.body == "anny":
            people[-1].phenotype = sample_phenotype(np.random.default_rng([seed, PHENOTYPE_STREAM, k]), cfg.age_range)
            people[-1].outfit = sample_outfit(np.random.default_rng([seed, OUTFIT_STREAM, k]))
    camera = CameraSpec(
        fill=float(rng.uniform(0.7, 1.15)),
        elevation=float(rng.uniform(*cfg.elevation)),
        azimuth=float(rng.uniform(0, 360)),
        roll=float(rng.normal(0, 10)) if rng.random() >= cfg.free_roll else float(rng.uniform(-180, 180)),
        focal_mm=float(rng.uniform(24, 85)),
    )
    lights = []
    for _ in range(int(rng.integers(1, 4))):
        kind = str(rng.choice(["SUN", "POINT", "AREA"]))
        kelvin = float(rng.uniform(2700, 9000))
        energy = float(rng.uniform(2, 6)) if kind == "SUN" else float(rng.uniform(300, 1500))
        lights.append(LightSpec(kind, energy, kelvin, kelvin_to_rgb(kelvin),
                                float(rng.uniform(0, 360)), float(rng.uniform(10, 80))))
    occluders = []
    if rng.random() < cfg.occluder_probability:
        for _ in range(int(rng.integers(1, cfg.max_occluders + 1))):
            occluders.append(OccluderSpec(
                kind=str(rng.choice(["box", "cylinder", "plane"])),
                target=int(rng.integers(n_people)),
                along=float(rng.uniform(0.45, 0.8)),
                offset=(float(rng.uniform(-0.6, 0.6)), float(rng.uniform(-0.6, 0.6))),
                size=tuple(float(s) for s in rng.uniform(0.15, 0.6, 3)),
                rotation=float(rng.uniform(0, 180)),
                rgb=_rgb(rng),
            ))
    background = BackgroundSpec(
        kind="gradient", top_rgb=_rgb(rng), bottom_rgb=_rgb(rng), noise=float(rng.uniform(0, 0.15)),
        pick=float(rng.random()),
    )
    return SceneSpec(seed, cfg.width, cfg.height, people, camera, lights, occluders, background,
                     world_strength=float(rng.uniform(0.2, 1.0)))


def place_camera(spec: CameraSpec, points: np.ndarray, width: int, height: int) -> tuple[np.ndarray, cam.Intrinsics]:
    """Aim at the people's bounding-sphere centre from the spec's direction, at the framing distance."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    target = (lo + hi) / 2
    radius = max(float(np.linalg.norm(pts - target, axis=1).max()), 0.3)
    k = cam.Intrinsics.from_focal(spec.focal_mm, width, height)
    dist = cam.frame_distance(radius, k, spec.fill) + radius  # the sphere's near side at the framed distance
    el, az = np.radians(spec.elevation), np.radians(spec.azimuth)
    direction = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    return cam.look_at(target + dist * direction, target, spec.roll), k


def place_occluder(spec: OccluderSpec, cam_matrix: np.ndarray, target: np.ndarray, target_radius: float) -> np.ndarray:
    """4x4 world matrix (unit primitive -> occluder) between the camera and the target person."""
    eye = cam_matrix[:3, 3]
    right, up = cam_matrix[:3, 0], cam_matrix[:3, 1]
    centre = eye + spec.along * (target - eye)
    centre = centre + spec.offset[0] * target_radius * right + spec.offset[1] * target_radius * up
    rot = np.radians(spec.rotation)
    axis_x = np.cos(rot) * right + np.sin(rot) * up
    axis_y = -np.sin(rot) * right + np.cos(rot) * up
    axis_z = np.cross(axis_x, axis_y)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2] = axis_x * spec.size[0], axis_y * spec.size[1], axis_z * spec.size[2]
    if spec.kind == "plane":
        m[:3, 2] = axis_z * 0.01
    m[:3, 3] = centre
    return m


def unit_seed(run_seed: int, index: int) -> int:
    """Seed of image ``index`` of a run: independent of how the run is split over workers."""
    return int(np.random.SeedSequence([int(run_seed), int(index)]).generate_state(1)[0])

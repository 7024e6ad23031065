"""Synthetic data in the real on-disk layouts, for the quickstart, the tests and the notebooks.

Each case is a phantom defined in physical (world) coordinates, then sampled on every
modality's own grid, so a lesion lands where it should only if the reader resamples with the
images' geometry. PI-CAI cases vary the T2W spacing and orientation like the real scanners, put
ADC and HBV on a coarser, shifted grid, label lesions with ISUP grades 2..5, leave some cases
unlabelled (or with only an AI-derived label) and give some patients two studies. BraTS cases
drop flair or t1ce now and then.

PI-CAI comes in three difficulties. ``easy`` (the quickstart's and the tests') draws an ellipsoid
gland with ellipsoid lesions that stand out in every modality. ``realistic`` draws what makes
real csPCa detection hard: lesions of 5-20 mm that are nearly invisible in T2W and show mainly
in ADC (darker) and HBV (brighter), a gland of varied shape with a peripheral and a transition
zone, unlabelled benign look-alikes (BPH nodules, prostatitis), smooth coil bias fields, Rician
noise, partial volume, and a few millimetres of patient motion between T2W and the DWI series.
``context`` is ``realistic`` with benign mimics that a local intensity cue cannot tell from csPCa: foci
with exactly the lesions' ADC/HBV contrast (drawn from the same distribution), told apart only by where
they are: in the transition zone, as a mirror-symmetric pair across the midline, or just outside the
capsule; every csPCa lesion is a single focus in the peripheral zone. Telling them apart takes anatomy
(zones, symmetry, the gland's boundary), which is what pretraining on an archive can teach an encoder.
"""

from __future__ import annotations

import csv
import io
import itertools
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk

from medssl.errors import ConfigError
from medssl.io import write_image, write_text

T2W_SPACINGS = ((0.5, 0.5, 3.0), (0.3, 0.3, 3.6), (0.4, 0.4, 3.0), (0.342, 0.342, 3.0))  # x, y, z mm
MARKSHEET_COLUMNS = (
    "patient_id", "study_id", "mri_date", "patient_age", "psa", "psad", "prostate_volume",
    "histopath_type", "lesion_GS", "lesion_ISUP", "case_ISUP", "case_csPCa", "center",
)
DIFFICULTIES = ("easy", "realistic", "context")
POSITIVE_FRACTION = 0.45
SCALE = {"t2w": 400.0, "adc": 1800.0, "hbv": 30.0}  # relative signal -> stored value, both difficulties
SERIES = {"t2w": ("t2w",), "dwi": ("adc", "hbv")}  # ADC and HBV come from one DWI acquisition

# Realistic mode. Relative signal of each tissue (x SCALE): the peripheral zone is bright in T2W and
# ADC, the transition zone darker; periprostatic fat is bright in T2W and dark in fat-suppressed DWI.
TISSUE = {
    "t2w": {"air": 0.02, "body": 0.45, "fat": 0.95, "pz": 0.85, "tz": 0.6},
    "adc": {"air": 0.02, "body": 0.55, "fat": 0.35, "pz": 0.9, "tz": 0.72},
    "hbv": {"air": 0.02, "body": 0.2, "fat": 0.08, "pz": 0.3, "tz": 0.33},
}
TEXTURE = {"t2w": 0.06, "adc": 0.03, "hbv": 0.04}  # relative amplitude of tissue texture, doubled in the TZ
NOISE = {"t2w": 0.06, "adc": 0.06, "hbv": 0.04}  # Rician sigma relative to SCALE, x U(0.8, 1.25) per case
BIAS = {"t2w": (0.2, 0.15), "adc": (0.0, 0.0), "hbv": (0.1, 0.1)}  # sigma of the log-bias gradient, curvature
# ADC is a ratio of two DWI images taken with the same coil, so the coil's bias cancels in it.


def lesion_factors(conspicuity: float) -> dict[str, float]:
    """Signal multipliers of a csPCa lesion, from 0 (subtle) to 1 (conspicuous).

    T2W darkens by 2-10 % (about the noise level), ADC by 25-50 %, HBV brightens by 50-150 %.
    """
    k = float(conspicuity)
    return {"t2w": 1 - (0.02 + 0.08 * k), "adc": 1 - (0.25 + 0.25 * k), "hbv": 1 + (0.5 + 1.0 * k)}


def _rotation_z(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def _rotation_x(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def _world(size, spacing, origin, direction) -> np.ndarray:
    """World coordinates (x, y, z) of every voxel, as an array [D, H, W, 3]."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    index = np.stack([x, y, z], axis=-1) * np.asarray(spacing)  # [D, H, W, 3]
    return index @ np.asarray(direction).reshape(3, 3).T + np.asarray(origin)


def _write(array: np.ndarray, path: Path, spacing, origin, direction) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(tuple(float(d) for d in np.asarray(direction).ravel()))
    write_image(image, path)  # compressed, atomically, read back before the rename


def _ellipsoid(world: np.ndarray, centre, radii) -> np.ndarray:
    return (((world - np.asarray(centre)) / np.asarray(radii)) ** 2).sum(-1) <= 1.0


def _grid_around(centre, size, spacing, direction) -> np.ndarray:
    """Origin that centres a grid of ``size`` (x, y, z) on ``centre``."""
    return np.asarray(centre) - direction @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2)


def _refuse_non_empty(out: Path) -> None:
    """Synthetic data goes into a new or empty folder only: a set is never mixed with other files or overwritten."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: the destination is not a folder; give a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"{out}: the destination folder is not empty; give a new or empty folder")


@dataclass
class Focus:
    """An ellipsoid, or a Gaussian blob (``soft``), that multiplies each modality's signal by ``factor``.

    A lesion when ``isup`` >= 1 (it is labelled); a benign look-alike when 0 (never labelled).
    """

    centre: np.ndarray  # world mm (x, y, z)
    radii: np.ndarray  # semi-axes mm; soft: the Gaussian's sigmas
    factor: dict[str, float] = field(default_factory=dict)  # signal multiplier per modality, at the centre
    rotation: np.ndarray | None = None  # columns: the focus's axes in world; None: axis-aligned
    isup: int = 0
    soft: bool = False

    def _q2(self, world: np.ndarray) -> np.ndarray:
        offset = world - self.centre  # [..., 3]
        if self.rotation is not None:
            offset = offset @ self.rotation
        return ((offset / self.radii) ** 2).sum(-1)

    def mask(self, world: np.ndarray) -> np.ndarray:
        return self._q2(world) <= 1.0

    def weight(self, world: np.ndarray) -> np.ndarray:
        """1 inside (soft: a Gaussian falling from 1 at the centre), 0 outside."""
        q2 = self._q2(world)
        return np.exp(-q2 / 2) if self.soft else (q2 <= 1.0).astype(np.float64)


def _label(lesions: list[Focus], world: np.ndarray) -> np.ndarray:
    """ISUP grade at each point of ``world`` [..., 3], 0 outside every lesion."""
    label = np.zeros(world.shape[:-1], np.uint8)
    for lesion in lesions:
        label[lesion.mask(world)] = lesion.isup
    return label


@dataclass
class EasyProstate:
    """The easy phantom: an ellipsoid gland in an ellipsoid body, 0-2 lesions of 8-13 mm that stand out in
    every modality, 12 % multiplicative Gaussian noise, T2W and DWI perfectly registered."""

    centre: np.ndarray
    radii: np.ndarray
    lesions: list[Focus]

    VALUES = {"t2w": (0.45, 0.8, 0.6), "adc": (0.5, 0.75, 0.5), "hbv": (0.15, 0.3, 0.55)}  # body, gland, lesion

    @classmethod
    def draw(cls, rng: np.random.Generator, fov_centre: np.ndarray) -> EasyProstate:
        centre = fov_centre + rng.uniform(-3, 3, 3)
        radii = rng.uniform([15, 12, 13], [19, 15, 16])
        positive = rng.random() < POSITIVE_FRACTION
        lesions = []
        for _ in range(rng.integers(1, 3) if positive else 0):
            offset = rng.uniform(-0.45, 0.45, 3) * radii
            lesions.append(Focus(centre + offset, radii=rng.uniform(4.0, 6.5, 3), isup=int(rng.integers(2, 6))))
        return cls(centre, radii, lesions)

    def images(self, rng: np.random.Generator, grid, series: str) -> dict[str, np.ndarray]:
        """The series' images (``[D, H, W]`` float32) on ``grid`` = (size, spacing, origin, direction)."""
        world = _world(*grid)
        return {m: self._image(world, self.VALUES[m], 0.12, rng) * SCALE[m] for m in SERIES[series]}

    def _image(self, world, values, noise, rng) -> np.ndarray:
        img = np.where(_ellipsoid(world, self.centre, self.radii * 1.6), values[0], 0.05)
        img = np.where(_ellipsoid(world, self.centre, self.radii), values[1], img)
        for lesion in self.lesions:
            img = np.where(lesion.mask(world), values[2], img)
        return (img * (1 + noise * rng.standard_normal(img.shape))).clip(0).astype(np.float32)

    def label(self, grid) -> np.ndarray:
        """ISUP grades (uint8 ``[D, H, W]``) at the voxel centres of ``grid``, 0 outside every lesion."""
        return _label(self.lesions, _world(*grid))


@dataclass
class RealisticProstate:
    """Everything drawn for one realistic case: anatomy, lesions, look-alikes and how it was acquired.

    Anatomy lives in the gland frame ``v = rotation.T @ (p - centre) / radii`` (1 = the base ellipsoid's
    surface; world is LPS, so -y is anterior and +z cranial). A grid is (size, spacing, origin, direction),
    ITK's (x, y, z) order. Example:
        >>> rng = np.random.default_rng(0)
        >>> case = RealisticProstate.draw(rng, np.zeros(3), np.eye(3), np.array([23.75, 23.75, 22.5]))
        >>> grid = ((96, 96, 16), (0.5, 0.5, 3.0), (-23.75, -23.75, -22.5), np.eye(3))
        >>> case.images(rng, grid, "dwi")["adc"].shape, case.label(grid).shape
        ((16, 96, 96), (16, 96, 96))
    """

    centre: np.ndarray  # gland centre, world mm
    radii: np.ndarray  # gland semi-axes, mm
    rotation: np.ndarray  # gland axes in world (columns)
    tilt: np.ndarray  # [3] linear term of the surface radius: egg and pear shapes
    bulge: np.ndarray  # [3, 3] symmetric quadratic term of the surface radius: lobes
    flat: float  # posterior surface flattened against the rectum
    tz_offset: np.ndarray  # transition-zone centre in the gland frame
    tz_radii: np.ndarray  # transition-zone semi-axes in the gland frame
    fat: float  # periprostatic fat shell, fraction of the gland radius
    body_radii: np.ndarray
    waves: np.ndarray  # [K, 3] wave vectors (rad/mm) of the tissue texture
    phases: np.ndarray  # [K]
    motion_rotation: np.ndarray  # patient motion between the T2W and the DWI acquisitions
    motion_shift: np.ndarray  # mm
    fov_centre: np.ndarray  # the bias fields' origin
    bias: dict[str, tuple[np.ndarray, np.ndarray]]  # per modality: log-bias gradient [3] and curvature [3, 3]
    noise: dict[str, float]  # per modality: Rician sigma relative to SCALE
    lesions: list[Focus] = field(default_factory=list)
    look_alikes: list[Focus] = field(default_factory=list)  # BPH nodules and prostatitis, never labelled

    @classmethod
    def draw(cls, rng: np.random.Generator, fov_centre: np.ndarray, fov_direction: np.ndarray,
             fov_half: np.ndarray) -> RealisticProstate:
        """Draw a case whose gland and lesions lie in the T2W field of view (centre, direction, half extent mm)."""
        positive = rng.random() < POSITIVE_FRACTION
        inplane = min(1.0, float(min(fov_half[:2])) / 24.0)  # a smaller field of view holds a smaller gland
        radii = rng.uniform([12, 10, 11], [20, 16, 17]) * [inplane, inplane, 1.0]  # left-right, AP, cranio-caudal
        bulge = rng.normal(0, 0.12, (3, 3))
        waves = rng.normal(size=(8, 3))
        waves *= (2 * np.pi / rng.uniform(4, 15, 8) / np.linalg.norm(waves, axis=1))[:, None]  # 4-15 mm wavelengths
        case = cls(
            centre=fov_centre + rng.uniform(-3, 3, 3), radii=radii,
            rotation=_rotation_z(rng.uniform(-10, 10)) @ _rotation_x(rng.uniform(-8, 8)),
            tilt=rng.normal(0, 0.08, 3), bulge=(bulge + bulge.T) / 2, flat=rng.uniform(0.1, 0.3),
            tz_offset=np.array([0.0, -rng.uniform(0.15, 0.3), rng.uniform(0.0, 0.15)]),
            tz_radii=rng.uniform(0.4, 0.65) * np.array([1.0, 0.8, 0.9]),  # large in BPH, small in young glands
            fat=rng.uniform(0.06, 0.15), body_radii=radii * rng.uniform(1.7, 2.2),
            waves=waves, phases=rng.uniform(0, 2 * np.pi, 8),
            motion_rotation=_rotation_z(rng.uniform(-2, 2)) @ _rotation_x(rng.uniform(-1.5, 1.5)),
            motion_shift=rng.uniform([-2, -2, -1], [2, 2, 1]),
            fov_centre=np.asarray(fov_centre, dtype=np.float64),
            bias={m: (rng.normal(0, g, 3), _symmetric(rng.normal(0, c, (3, 3)))) for m, (g, c) in BIAS.items()},
            noise={m: sigma * rng.uniform(0.8, 1.25) for m, sigma in NOISE.items()},
        )
        fov = (np.asarray(fov_centre), np.asarray(fov_direction), np.asarray(fov_half))
        for _ in range(rng.integers(1, 3) if positive else 0):
            isup = int(rng.integers(2, 6))
            zone = "pz" if rng.random() < 0.7 else "tz"
            size = np.exp(rng.uniform(np.log(2.5), np.log(10.0)))  # semi-axis: 5-20 mm lesions, small ones common
            # >= 2 mm in every direction: a ball that holds a voxel centre of every T2W grid (3.6 mm slices)
            radii = np.maximum(size * rng.uniform(0.8, 1.25, 3), 2.0)
            rotation = _rotation_z(rng.uniform(0, 180))
            conspicuity = 0.6 * rng.random() + 0.4 * (isup - 2) / 3  # higher grades tend to show more
            centre = None
            while centre is None:  # a lesion too large for its zone shrinks until it fits in the gland
                axes = (rotation * radii).T  # [3, 3] the lesion's semi-axes as world vectors
                centre = case._point_in(rng, zone, fov, margin=2.5, reach=np.concatenate([axes, -axes]))
                if centre is None and radii.max() <= 2.0:
                    centre = case.centre.copy()  # a zone too small to hit: the gland centre, inside the view
                radii = np.maximum(radii * 0.8, 2.0) if centre is None else radii
            case.lesions.append(Focus(centre, radii, lesion_factors(conspicuity), rotation, isup))
        for _ in range(rng.integers(0, 5)):  # BPH nodules: T2W bright (glandular) or dark (stromal)
            if rng.random() < 0.5:
                factor = {"t2w": 1 - rng.uniform(0.2, 0.35), "adc": 1 - rng.uniform(0.15, 0.3),
                          "hbv": 1 + rng.uniform(0.1, 0.35)}  # stromal nodules restrict diffusion too
            else:
                factor = {"t2w": 1 + rng.uniform(0.2, 0.4), "adc": 1 - rng.uniform(0.0, 0.1),
                          "hbv": 1 + rng.uniform(0.0, 0.1)}
            centre = case._point_in(rng, "tz", fov, margin=0.0)
            case.look_alikes.append(Focus(case.centre.copy() if centre is None else centre,
                                          rng.uniform(2.5, 7.0, 3), factor, _rotation_z(rng.uniform(0, 180))))
        if rng.random() < 0.4:  # prostatitis: a diffuse ADC drop in the peripheral zone
            factor = {"t2w": 1 - rng.uniform(0.04, 0.12), "adc": 1 - rng.uniform(0.15, 0.3),
                      "hbv": 1 + rng.uniform(0.1, 0.3)}
            centre = case._point_in(rng, "pz", fov, margin=0.0)
            case.look_alikes.append(Focus(case.centre.copy() if centre is None else centre,
                                          rng.uniform(5.0, 10.0, 3), factor, soft=True))
        return case

    def _zones(self, world: np.ndarray) -> tuple[np.ndarray, ...]:
        """Masks (gland, transition zone, periprostatic fat, body) of ``world`` [..., 3]."""
        v = ((world - self.centre) @ self.rotation) / self.radii  # [..., 3] gland frame
        q = np.linalg.norm(v, axis=-1)
        u = v / np.maximum(q, 1e-6)[..., None]  # direction from the centre
        surface = (1 + u @ self.tilt + np.einsum("...i,ij,...j->...", u, self.bulge, u)
                   - self.flat * np.clip(u[..., 1], 0, None) ** 2)
        gland = q <= surface
        tz = gland & ((((v - self.tz_offset) / self.tz_radii) ** 2).sum(-1) <= 1)
        fat = ~gland & (q <= surface * (1 + self.fat))
        body = (((world - self.centre) @ self.rotation / self.body_radii) ** 2).sum(-1) <= 1
        return gland, tz, fat, body

    def _point_in(self, rng, zone: str, fov, margin: float, reach: np.ndarray | None = None) -> np.ndarray | None:
        """A random world point in ``zone`` ("pz" or "tz"), ``margin`` mm inside the T2W field of view, from
        which every offset of ``reach`` ([K, 3] mm: a lesion's extent) stays in the gland; None if 300
        tries found none."""
        fov_centre, fov_direction, fov_half = fov
        reach = np.zeros((0, 3)) if reach is None else reach
        for _ in range(300):
            p = self.centre + self.rotation @ (rng.uniform(-1, 1, 3) * self.radii)
            gland, tz, _, _ = self._zones(np.concatenate([p[None], p + reach]))
            in_zone = tz[0] if zone == "tz" else gland[0] and not tz[0]
            if in_zone and gland.all() and np.all(np.abs(fov_direction.T @ (p - fov_centre)) <= fov_half - margin):
                return p
        return None

    def signal(self, world: np.ndarray, modalities) -> dict[str, np.ndarray]:
        """Noise-free, bias-free relative signal of each modality at ``world`` [..., 3]."""
        gland, tz, fat, body = self._zones(world)
        texture = np.cos(world @ self.waves.T + self.phases).sum(-1) * np.sqrt(2 / len(self.phases))  # unit variance
        foci = [(f, f.weight(world) * gland if f.soft else f.weight(world)) for f in (*self.look_alikes, *self.lesions)]
        out = {}
        for m in modalities:
            t = TISSUE[m]
            img = np.select([tz, gland, fat, body], [t["tz"], t["pz"], t["fat"], t["body"]], t["air"])
            img = img * (1 + TEXTURE[m] * np.where(tz, 2.0, 1.0) * texture)
            for f, w in foci:
                img = img * (1 + (f.factor[m] - 1) * w)
            out[m] = img
        return out

    def images(self, rng: np.random.Generator, grid, series: str) -> dict[str, np.ndarray]:
        """The series' images (``[D, H, W]`` float32) on ``grid`` = (size, spacing, origin, direction).

        Each voxel averages sub-samples (partial volume: 3 through the slice, 2 x 2 in-plane for DWI);
        the DWI series sees the patient moved; then the coil's bias field and Rician noise.
        """
        size, spacing, origin, direction = grid
        direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
        sub = (1, 1, 3) if series == "t2w" else (2, 2, 3)  # samples per voxel, x y z
        offsets = list(itertools.product(*((np.arange(n) + 0.5) / n - 0.5 for n in sub)))
        signal = dict.fromkeys(SERIES[series], 0.0)
        for offset in offsets:
            world = _world(size, spacing, origin + direction @ (np.asarray(offset) * spacing), direction)
            if series == "dwi":
                world = self.centre + (world - self.centre) @ self.motion_rotation.T + self.motion_shift
            for m, s in self.signal(world, SERIES[series]).items():
                signal[m] = signal[m] + s / len(offsets)
        u = (_world(*grid) - self.fov_centre) / 24.0  # the bias field is the scanner's, not the patient's
        out = {}
        for m, s in signal.items():
            gradient, curvature = self.bias[m]
            log_bias = u @ gradient + 0.5 * np.einsum("...i,ij,...j->...", u, curvature, u)
            s = s * np.exp(np.clip(log_bias, -0.7, 0.7))
            noise = self.noise[m] * (rng.standard_normal(s.shape) + 1j * rng.standard_normal(s.shape))
            out[m] = (np.abs(s + noise) * SCALE[m]).astype(np.float32)  # magnitude image: Rician
        return out

    def label(self, grid) -> np.ndarray:
        """ISUP grades (uint8 ``[D, H, W]``) at the voxel centres of ``grid``, 0 outside every lesion."""
        return _label(self.lesions, _world(*grid))


@dataclass
class ContextProstate(RealisticProstate):
    """A realistic case plus lesion-like benign mimics that only context tells apart (the ``context`` difficulty).

    Every csPCa lesion lies in the peripheral zone, on one side; 1-3 mimics per case (positive or not) carry a
    lesion's own contrast (``lesion_factors`` of a lesion-like conspicuity) and size, placed where csPCa is not:
    in the transition zone, as a pair mirrored across the gland's mid-sagittal plane, or straddling the capsule.
    """

    MIMICS = ("transition_zone", "symmetric_pair", "capsule")

    @classmethod
    def draw(cls, rng: np.random.Generator, fov_centre: np.ndarray, fov_direction: np.ndarray,
             fov_half: np.ndarray) -> ContextProstate:
        base = RealisticProstate.draw(rng, fov_centre, fov_direction, fov_half)
        case = cls(**{f.name: getattr(base, f.name) for f in fields(RealisticProstate)})
        fov = (np.asarray(fov_centre), np.asarray(fov_direction), np.asarray(fov_half))
        for lesion in case.lesions:  # csPCa in the peripheral zone only: a TZ focus is a mimic here
            if case._zone_of(lesion.centre) != "pz":
                centre = case._point_in(rng, "pz", fov, margin=2.5)
                if centre is not None:
                    lesion.centre = centre
        for _ in range(rng.integers(1, 4)):
            kind = case.MIMICS[int(rng.integers(len(case.MIMICS)))]
            conspicuity = 0.6 * rng.random() + 0.4 * rng.random()  # as a lesion's, of any grade
            size = np.exp(rng.uniform(np.log(2.5), np.log(8.0)))
            radii, rotation = np.maximum(size * rng.uniform(0.8, 1.25, 3), 2.0), _rotation_z(rng.uniform(0, 180))
            for centre in case._mimic_centres(rng, kind, fov):
                case.look_alikes.append(Focus(centre, radii, lesion_factors(conspicuity), rotation))
        return case

    def _zone_of(self, point: np.ndarray) -> str:
        gland, tz, _, _ = self._zones(np.asarray(point)[None])
        return "tz" if tz[0] else "pz" if gland[0] else "outside"

    def _mimic_centres(self, rng: np.random.Generator, kind: str, fov) -> list[np.ndarray]:
        if kind == "transition_zone":
            centre = self._point_in(rng, "tz", fov, margin=2.5)
            return [] if centre is None else [centre]
        if kind == "symmetric_pair":  # one focus and its mirror image across the gland's mid-sagittal plane
            for _ in range(50):
                centre = self._point_in(rng, "pz", fov, margin=2.5)
                if centre is None:
                    return []
                v = self.rotation.T @ (centre - self.centre)
                v[0] = -v[0]
                mirror = self.centre + self.rotation @ v
                if self._zone_of(mirror) == "pz" and np.linalg.norm(mirror - centre) > 8.0:
                    return [centre, mirror]
            return []
        # straddling the capsule: on the gland's surface, lateral or posterior, centred just outside it
        for _ in range(50):
            u = rng.normal(size=3)
            u[1] = abs(u[1])  # posterior half (+y is posterior in LPS)
            u /= np.linalg.norm(u)
            for scale in np.linspace(0.9, 1.4, 11):
                point = self.centre + self.rotation @ (u * self.radii * scale)
                if self._zone_of(point) == "outside":
                    fov_centre, fov_direction, fov_half = fov
                    if np.all(np.abs(fov_direction.T @ (point - fov_centre)) <= fov_half - 2.5):
                        return [point]
                    break
        return []


def _symmetric(a: np.ndarray) -> np.ndarray:
    return (a + a.T) / 2


def synth_picai(
    out: str | Path, cases: int = 30, seed: int = 0, fov_mm: float = 48.0, first_patient: int = 10000,
    difficulty: Literal["easy", "realistic", "context"] = "easy",
) -> list[str]:
    """Write a PI-CAI-layout folder: ``out/images`` and ``out/picai_labels``. Returns the case ids.

    Args:
        out: destination folder, new or empty (a folder with files in it is refused).
        cases: number of studies.
        seed: random seed; the same seed writes the same data.
        fov_mm: in-plane field of view of the T2W images (small keeps it fast).
        first_patient: first patient id; study ids follow it (another set needs other ids).
        difficulty: ``easy`` (conspicuous ellipsoid lesions, the quickstart's tests'), ``realistic``
            (subtle lesions seen mainly in ADC and HBV, zones, unlabelled look-alikes, bias fields,
            Rician noise, T2W-DWI misregistration: see ``RealisticProstate``) or ``context`` (realistic, plus
            benign mimics with the lesions' own contrast that only anatomy tells apart: ``ContextProstate``).

    Example:
        >>> ids = synth_picai("runs/synth_hard", cases=40, difficulty="realistic")  # doctest: +SKIP
    """
    if difficulty not in DIFFICULTIES:
        raise ConfigError(f"difficulty {difficulty!r}: give one of {', '.join(DIFFICULTIES)}")
    out = Path(out)
    _refuse_non_empty(out)
    rng = np.random.default_rng(seed)
    labels_dir = out / "picai_labels" / "csPCa_lesion_delineations"
    rows, case_ids = [], []
    patient, study_of_patient = first_patient, 0
    for i in range(cases):
        # every fifth patient comes back for a second study
        if i > 0 and not (study_of_patient == 0 and patient % 5 == 0):
            patient, study_of_patient = patient + 1, 0
        else:
            study_of_patient += 1 if i > 0 else 0
        pid, sid = str(patient), str(100 * first_patient + i)
        case_id = f"{pid}_{sid}"
        case_ids.append(case_id)

        spacing = np.array(T2W_SPACINGS[i % len(T2W_SPACINGS)])
        size = np.array([round(fov_mm / spacing[0]), round(fov_mm / spacing[1]), 16 if spacing[2] <= 3.0 else 13])
        direction = _rotation_z(rng.uniform(-12, 12) if i % 3 == 0 else 0.0)  # some oblique
        centre = rng.uniform(-20, 20, 3)
        origin = _grid_around(centre, size, spacing, direction)
        if difficulty == "easy":
            case = EasyProstate.draw(rng, centre)
        else:
            kind = ContextProstate if difficulty == "context" else RealisticProstate
            case = kind.draw(rng, centre, direction, (size - 1) * spacing / 2)

        t2w = case.images(rng, (size, spacing, origin, direction), "t2w")["t2w"]
        _write(t2w, out / "images" / pid / f"{case_id}_t2w.mha", spacing, origin, direction)

        # DWI: its own coarser grid, shifted and slightly rotated
        d_spacing = np.array([2.0, 2.0, spacing[2]])
        d_size = np.array([round((fov_mm + 8) / 2.0), round((fov_mm + 8) / 2.0), size[2]])
        d_direction = direction @ _rotation_z(rng.uniform(-4, 4))
        d_origin = _grid_around(centre + rng.uniform(-2.5, 2.5, 3), d_size, d_spacing, d_direction)
        for m, image in case.images(rng, (d_size, d_spacing, d_origin, d_direction), "dwi").items():
            _write(image, out / "images" / pid / f"{case_id}_{m}.mha", d_spacing, d_origin, d_direction)

        label = case.label((size, spacing, origin, direction))
        positive = bool(case.lesions)
        kind = rng.random()
        if kind < 0.12:
            pass  # unlabelled case
        elif positive and kind < 0.22:
            _write((label > 0).astype(np.uint8), labels_dir / "AI" / "Bosma22a" / f"{case_id}.nii.gz",
                   spacing, origin, direction)  # AI-derived only
        else:
            _write(label, labels_dir / "human_expert" / "resampled" / f"{case_id}.nii.gz", spacing, origin, direction)
        isups = [lesion.isup for lesion in case.lesions]
        rows.append({
            "patient_id": pid, "study_id": sid, "mri_date": f"2020-01-{1 + i % 28:02d}",
            "patient_age": int(rng.integers(50, 80)), "psa": round(float(rng.uniform(2, 20)), 1),
            "psad": round(float(rng.uniform(0.05, 0.5)), 2), "prostate_volume": int(rng.integers(25, 90)),
            "histopath_type": "MRBx" if positive else "", "lesion_GS": ",".join(f"{(v + 6) // 2}+{(v + 7) // 2}"
                                                                               for v in isups) or "N/A",
            "lesion_ISUP": ",".join(map(str, isups)) or "N/A", "case_ISUP": max(isups, default=0),
            "case_csPCa": "YES" if positive else "NO", "center": "SYN",
        })
    # written last and atomically: a marksheet says the set is complete (the quickstart relies on it)
    marksheet = out / "picai_labels" / "clinical_information" / "marksheet.csv"
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=MARKSHEET_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text(marksheet, text.getvalue())
    return case_ids


def synth_brats(out: str | Path, cases: int = 12, seed: int = 0, size=(64, 64, 48), naming: str = "2021") -> list[str]:
    """Write a BraTS-layout folder in one release's naming and label values.

    ``2021``: ``out/BraTS2021_<id>/BraTS2021_<id>_{t1,t1ce,t2,flair,seg}.nii.gz``, enhancing tumour 4;
    ``2023``: ``out/BraTS-GLI-<id>-000/BraTS-GLI-<id>-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``, enhancing tumour 3;
    ``2024-gli``: the 2023 naming, and a resection cavity (label 4, in no region) beside the tumour in every
    other case. The tumours (and the images outside a cavity) are the same for a seed whatever the naming.

    Args:
        out: destination folder, new or empty (a folder with files in it is refused).
        cases: number of cases.
        seed: random seed.
        size: volume size (x, y, z) at 1 mm; real BraTS is 240 x 240 x 155.
        naming: ``2021``, ``2023`` or ``2024-gli`` (a ``data.brats_labels`` option).
    """
    from medssl.data.layouts.brats import get_convention

    convention = get_convention(naming)
    out = Path(out)
    _refuse_non_empty(out)
    rng = np.random.default_rng(seed)
    size = np.asarray(size)
    spacing, direction = np.ones(3), np.eye(3)
    origin = np.array([0.0, -float(size[1] - 1), 0.0])
    world = _world(size, spacing, origin, direction)
    centre = origin + (size - 1) / 2
    values = {  # background brain, oedema, enhancing, necrosis
        "t1": (0.6, 0.45, 0.5, 0.2), "t1ce": (0.6, 0.45, 1.0, 0.15),
        "t2": (0.5, 0.9, 0.7, 1.0), "flair": (0.5, 1.0, 0.7, 0.4),
    }
    ids = []
    for i in range(cases):
        case_id = f"BraTS2021_{i:05d}" if convention.separator == "_" else f"BraTS-GLI-{i:05d}-000"
        ids.append(case_id)
        brain_r = size * rng.uniform(0.36, 0.44, 3)
        t_centre = centre + rng.uniform(-0.15, 0.15, 3) * size
        t_r = rng.uniform(5, 9)
        brain = _ellipsoid(world, centre, brain_r)
        oedema = _ellipsoid(world, t_centre, [t_r * 1.6] * 3) & brain
        enhancing = _ellipsoid(world, t_centre, [t_r] * 3) & brain
        necrosis = _ellipsoid(world, t_centre, [t_r * 0.5] * 3) & brain
        seg = np.zeros(brain.shape, np.uint8)
        seg[oedema], seg[enhancing], seg[necrosis] = 2, convention.et, 1
        missing = set()
        if rng.random() < 0.25:
            missing.add("flair")
        if rng.random() < 0.2:
            missing.add("t1ce")
        cavity = np.zeros(brain.shape, bool)
        if convention.rc is not None and i % 2 == 0:  # a resection cavity beside the tumour, outside the oedema
            side = np.sign(centre[0] - t_centre[0]) or 1.0  # towards the brain's middle, so it stays inside
            cavity = _ellipsoid(world, t_centre + [side * t_r * 2.4, 0, 0], [t_r * 0.8] * 3) & brain & (seg == 0)
            seg[cavity] = convention.rc
        for m, (v_brain, v_oed, v_enh, v_nec) in values.items():
            if m in missing:
                continue
            img = np.where(brain, v_brain, 0.0)
            img = np.where(seg == 2, v_oed, img)
            img = np.where(seg == convention.et, v_enh, img)
            img = np.where(seg == 1, v_nec, img)
            img = np.where(cavity, 0.1 if m != "t2" else 1.0, img)  # fluid: dark, bright on T2
            img = img * (1 + 0.05 * rng.standard_normal(img.shape)) * brain
            _write((img * 1000).clip(0).astype(np.float32), out / case_id / convention.file_name(case_id, m),
                   spacing, origin, direction)
        _write(seg, out / case_id / convention.file_name(case_id, "seg"), spacing, origin, direction)
    return ids

"""Who an Anny person is: phenotype drawn over the whole population, infants to elders.

Distribution (one person, from its own random stream, a fixed number of draws):

* ``age_years``: piecewise uniform over bands, weighted -- 0-2 years 3%, 2-12 14%, 12-18 10%,
  18-65 55%, 65-90 18% -- restricted to ``SceneConfig.age_range`` (bands outside it dropped, the
  rest renormalised).
* ``gender``: uniform 0 (male) .. 1 (female).
* ``height``: Anny's WHO-calibrated Beta distribution for the age and sex (``anny/data/
  shape_calibration/{boys,girls}.pth``, copied below; Apache-2.0, NAVER Corp.), so a population's
  statures follow the WHO growth curves and adult statistics.
* ``muscle``, ``weight``, ``proportions``: Beta(2, 2) on 0..1 (0.5 is Anny's average).

``age`` is Anny's own age parameter for ``age_years``, from Anny's morphological age mapping
(the same file). All values lie in Anny's ranges (0..1; ages within :data:`AGE_YEARS`), which
:func:`check_age_range` enforces for the configured range.
"""

from __future__ import annotations

import numpy as np

from posepipe.datasets.errors import PosepipeError

AGE_YEARS = (0.0, 90.0)  # the ages this module draws from (Anny's calibration spans 0..110)
AGE_BANDS = ((0.0, 2.0, 0.03), (2.0, 12.0, 0.14), (12.0, 18.0, 0.10), (18.0, 65.0, 0.55), (65.0, 90.0, 0.18))

# Anny 0.6.2, shape_calibration/*.pth: morphological age (years) -> Anny's age parameter ...
_AGE_YEARS_ANCHORS = np.array([0.0, 1.0, 4.0, 11.0, 16.0, 18.0, 64.0, 110.0])
_AGE_ANNY_ANCHORS = np.array([0.0, 0.05, 0.215, 0.415, 0.67, 0.77, 0.83, 1.0])
# ... and the height Beta(alpha, beta) at Anny ages 0, 0.05, 0.215, 0.415, 0.67 (clamped beyond).
_HEIGHT_AGES = np.array([0.0, 0.05, 0.215, 0.415, 0.67])
_HEIGHT_BETA = {
    "boys": (np.array([21.5957, 51.9783, 22.1473, 13.4045, 16.4956]),
             np.array([58.6005, 57.3600, 45.8586, 22.1050, 25.6562])),
    "girls": (np.array([29.5207, 66.2820, 31.8161, 21.2642, 13.6839]),
              np.array([96.7224, 74.5405, 59.4907, 23.9753, 25.7476])),
}


def anny_age(years: float) -> float:
    """Anny's age parameter (its anchors: -1/3 newborn .. 1 old) of a morphological age in years."""
    return float(np.interp(years, _AGE_YEARS_ANCHORS, _AGE_ANNY_ANCHORS))


def check_age_range(age_range) -> None:
    lo, hi = (float(a) for a in age_range)
    if not (AGE_YEARS[0] <= lo < hi <= AGE_YEARS[1]):
        raise PosepipeError(f"--age-range {lo:g}:{hi:g} is outside Anny's ages: use MIN:MAX with "
                            f"{AGE_YEARS[0]:g} <= MIN < MAX <= {AGE_YEARS[1]:g} (years)")


def sample_phenotype(rng: np.random.Generator, age_range=AGE_YEARS) -> dict:
    lo, hi = (float(a) for a in age_range)
    bands = [(max(a, lo), min(b, hi), w * (min(b, hi) - max(a, lo)) / (b - a))
             for a, b, w in AGE_BANDS if min(b, hi) > max(a, lo)]
    weights = np.array([w for *_, w in bands])
    band = int(rng.choice(len(bands), p=weights / weights.sum()))
    years = float(rng.uniform(bands[band][0], bands[band][1]))
    gender = float(rng.uniform(0.0, 1.0))
    age = anny_age(years)
    alphas, betas = _HEIGHT_BETA["boys" if gender <= 0.5 else "girls"]
    height = float(rng.beta(np.interp(age, _HEIGHT_AGES, alphas), np.interp(age, _HEIGHT_AGES, betas)))
    muscle, weight, proportions = (float(v) for v in rng.beta(2.0, 2.0, 3))
    return {"age_years": round(years, 4), "age": round(age, 6), "gender": round(gender, 4),
            "height": round(height, 4), "muscle": round(muscle, 4), "weight": round(weight, 4),
            "proportions": round(proportions, 4)}

"""The cbm stage's spec: critical band masking of a trained model (SCIENCE.md section 4). Torch-free; the
measurement itself is sfhpc.stages.cbm.run.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator

from sfhpc.config import Closed, Float, Int, Seed, describe
from sfhpc.stages.spec import StageSpec

# The fitted channel's scalars (NaN when there is no channel; the `channel_fit` attribute says why), the
# noise-free category accuracy and chance (1 / categories), and the curves a figure redraws.
BANDWIDTH = "bandwidth_octaves"
CENTRE = "centre_cpi"
PEAK_SENSITIVITY = "peak_sensitivity"
CLEAN_GRAYSCALE_ACCURACY = "clean_grayscale_accuracy"
CHANCE = "chance"
BAND_CENTRES_CURVE = "band_centres_cpi"
THRESHOLDS_CURVE = "thresholds"
NOISE_SDS_CURVE = "noise_sds"
# The low-pass measurement (sfhpc.evaluation.cbm.lowpass_accuracy; not the study's measure): the cut-off at which a
# model keeps half its accuracy above chance on its low-passed test images (NaN when its accuracy is not above
# chance), and the curves: the cut-offs and the accuracy at each, then unfiltered (one value more).
LOWPASS_HALF = "lowpass_half_cpi"
LOWPASS_CUTOFFS_CURVE = "lowpass_cutoffs_cpi"
LOWPASS_ACCURACY_CURVE = "lowpass_accuracy"
# Attributes of every result: "fitted" or "not fitted: <why>"; the criterion's value, and the measure in words
# (the criterion and the decision rule), which reports print beside every channel.
CHANNEL_FIT_ATTR = "channel_fit"
FITTED = "fitted"
NOT_FITTED = "not fitted: "
CRITERION_ATTR = "criterion"
CRITERION_RULE_ATTR = "criterion_rule"
DECISION_RULE_ATTR = "decision_rule"
MIDPOINT = "midpoint"
# "Not well above the criterion" (SCIENCE.md section 4), made precise: a channel is fitted only when a one-sided
# binomial test rejects, at this level, that the model's noise-free category accuracy on the stimulus is at most
# the criterion. A model that does not clear the criterion without noise is "masked" by every noise level in every
# band (flat thresholds), and one that clears it by a few images has thresholds that are mostly sampling noise.
ABOVE_CRITERION_P = 0.01


def criterion_rule(setting: float | str) -> str:
    """The criterion in words: `50%`, or the midpoint rule (a different measure: SCIENCE.md section 4)."""
    if setting == MIDPOINT:
        return "midpoint between chance and the model's noise-free accuracy"
    return f"{100 * float(setting):g}%"


def measure(criterion: str, decision: str) -> str:
    """What a channel was measured with, as results and reports name it: `criterion 50%, mean probability over 16
    categories (50 classes)`."""
    return f"criterion {criterion}, {decision}"


def _number_or_midpoint(value: Any) -> Any:
    # Before the union: a failed union would name its branches ("float", "literal[...]") in the error's location.
    if value != MIDPOINT and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ValueError(f"got {describe(value)}; expected a number between 0 and 1 or 'midpoint'")
    return value


class CbmParams(Closed):
    """Critical band masking of a trained model (SCIENCE.md section 4). Parameter names are prefixed `cbm_` so that
    they can be sweep axes beside the train stage's."""

    cbm_noise_sds: tuple[Float, ...] = Field((0.0, 0.02, 0.04, 0.08, 0.16), min_length=2, max_length=64,
                                             description="noise SDs; the first must be 0 (the noise-free level)")
    cbm_criterion: Annotated[Float | Literal["midpoint"], BeforeValidator(_number_or_midpoint)] = Field(
        0.5, description="category accuracy at or below which a noise level counts as masking a band: a number "
                         "(SCIENCE.md: 0.5, the study's measure), or 'midpoint' between chance (1 / categories) and "
                         "the model's noise-free accuracy, a different measure (for weaker models) that results and "
                         "reports name beside every channel")
    cbm_images: Int | None = Field(None, ge=1, description="test images used (default: all)")
    cbm_seed: Seed = Field(0, description="seed of the masking noise")
    cbm_lowpass: bool = Field(False, description="also measure the low-pass half-accuracy cut-off (not the study's "
                              "measure: accuracy on the model's own test images with every frequency above a cut-off "
                              "removed, one pass per half-octave cut-off; about as much work as the CBM grid)")
    cbm_lowpass_images: Int | None = Field(None, ge=1, description="test images of the low-pass measurement "
                                           "(default: all)")
    cbm_batch_size: Int = Field(128, ge=1)

    @field_validator("cbm_criterion")
    @classmethod
    def _criterion_is_an_accuracy(cls, criterion: float | str) -> float | str:
        if not isinstance(criterion, str) and not 0 < criterion < 1:
            raise ValueError(f"cbm_criterion must be between 0 and 1 (or 'midpoint'), got {criterion}")
        return criterion

    @field_validator("cbm_noise_sds")
    @classmethod
    def _levels_start_noise_free_and_grow(cls, sds: tuple[float, ...]) -> tuple[float, ...]:
        if sds[0] != 0 or any(b <= a for a, b in itertools.pairwise(sds)):
            raise ValueError(f"noise SDs must start at 0 and increase, got {list(sds)}")
        return sds


SPEC = StageSpec(name="cbm", entry=__name__, params=CbmParams, runner="sfhpc.stages.cbm.run:run", upstream=("train",),
                 report="sfhpc.stages.cbm.report:REPORT")

"""The cbm stage's spec: critical band masking of a trained model (SCIENCE.md section 4). Torch-free; the
measurement itself is sfhpc.stages.cbm.run.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator

from sfhpc.config import Closed, Float, Int, Seed, describe
from sfhpc.stages.spec import StageSpec

# The fitted channel's scalars (NaN when no channel is fitted; the `channel_fit` attribute says why) and the
# curves a figure redraws.
BANDWIDTH = "bandwidth_octaves"
CENTRE = "centre_cpi"
PEAK_SENSITIVITY = "peak_sensitivity"
CLEAN_GRAYSCALE_ACCURACY = "clean_grayscale_accuracy"
BAND_CENTRES_CURVE = "band_centres_cpi"
THRESHOLDS_CURVE = "thresholds"
CHANNEL_FIT_ATTR = "channel_fit"


def _number_or_midpoint(value: Any) -> Any:
    # Before the union: a failed union would name its branches ("float", "literal[...]") in the error's location.
    if value != "midpoint" and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ValueError(f"got {describe(value)}; expected a number between 0 and 1 or 'midpoint'")
    return value


class CbmParams(Closed):
    """Critical band masking of a trained model (SCIENCE.md section 4). Parameter names are prefixed `cbm_` so that
    they can be sweep axes beside the train stage's."""

    cbm_noise_sds: tuple[Float, ...] = Field((0.0, 0.02, 0.04, 0.08, 0.16), min_length=2, max_length=64,
                                             description="noise SDs; the first must be 0 (the noise-free level)")
    cbm_criterion: Annotated[Float | Literal["midpoint"], BeforeValidator(_number_or_midpoint)] = Field(
        0.5, description="accuracy at or below which a level counts as masked: a number (SCIENCE.md: 0.5), or "
                         "'midpoint' between chance and the model's noise-free accuracy (for weaker models)")
    cbm_images: Int | None = Field(None, ge=1, description="test images used (default: all)")
    cbm_seed: Seed = Field(0, description="seed of the masking noise")
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

"""The train stage's spec: a classifier (ResNet behind an optional spectral front-end), optionally co-trained with a
neural predictor's outputs (SCIENCE.md sections 2 and 3). Its points are the report's models. Torch-free; the
training itself is sfhpc.stages.train.run.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from sfhpc.config import Bool, Closed, DataConfig, Float, Int, JobSpec, Seed
from sfhpc.stages.spec import OptionalUpstream, StageSpec

Band = Literal["none", "lsf", "human", "lsf+human"]

TEST_ACCURACY = "test_accuracy"  # the metric the report compares models by first


class TrainParams(Closed):
    """Parameters of the train stage (SCIENCE.md sections 2 and 3). Any of them can be a sweep axis."""

    arch: Literal["small_resnet", "resnet18"] = "small_resnet"
    width: Int = Field(16, ge=2, description="base width of small_resnet (stages use 1x, 2x, 4x, 8x)")
    blocks: tuple[Int, ...] = Field((1, 1, 1, 1), min_length=4, max_length=4,
                                    description="BasicBlocks in each of the 4 small_resnet stages")
    band: Band = "none"
    lsf_sigma_px224: Float = Field(1.5, gt=0, description="LSF blur sigma in px at 224 px")
    human_mu: Float = Field(4.5, description="human channel centre = 1.75 * 2**mu c/img")
    human_s: Float = Field(0.4246, gt=0, description="human channel log2 SD")
    human_floor: Bool = Field(False, description="human channel with a gain floor instead of pure band-pass")
    alpha: Float = Field(0.0, ge=0.0, le=1.0, description="neural co-training weight: L = (1-a) CE + a MSE")
    seed: Seed = 0
    epochs: Int = Field(3, ge=1)
    batch_size: Int = Field(64, ge=1)
    lr: Float = Field(0.05, gt=0)
    momentum: Float = Field(0.9, ge=0, lt=1)
    weight_decay: Float = Field(1e-4, ge=0)
    lr_step: Int = Field(20, ge=1, description="StepLR step size in epochs")
    lr_gamma: Float = Field(0.1, gt=0, le=1)
    augment: Bool = Field(True, description="random crop (padding 1/16 of the size) and horizontal flip")
    augment_contrast_min: Float = Field(1.0, gt=0, le=1, description="each training image's contrast is scaled "
                                        "by a factor drawn from [this, 1] (1: off); CBM shows contrast-0.2 images")


def check_band_fits_data(params: TrainParams, data: DataConfig, job: JobSpec) -> None:
    """The front-end's band fits the images (a band above Nyquist, or a blur wider than the image, is refused)."""
    from sfhpc.models.bands import BandParams, check_band_fits  # numpy only

    band_params = BandParams(params.lsf_sigma_px224, params.human_mu, params.human_s, params.human_floor)
    check_band_fits(params.band, data.image_size, band_params)


def is_baseline(params: dict[str, Any]) -> bool:
    """Unguided and unsteered: band none and alpha 0 (a sweep without an alpha axis has alpha 0)."""
    return params.get("band", "none") == "none" and float(params.get("alpha", 0.0)) == 0.0


SPEC = StageSpec(
    name="train", entry=__name__, params=TrainParams, runner="sfhpc.stages.train.run:run",
    # A guided train point (alpha > 0) reads its predictor; an unguided one needs none, and expands once.
    optional_upstream=OptionalUpstream("predictor", "alpha", "the neural predictor supplies the targets"),
    check=check_band_fits_data, check_key="band", report="sfhpc.stages.train.report:REPORT",
)

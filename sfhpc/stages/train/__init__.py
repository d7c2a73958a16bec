"""The train stage's spec: a classifier (ResNet behind an optional spectral front-end), optionally co-trained with a
neural predictor's outputs (SCIENCE.md sections 2 and 3). Its points are the report's models. Torch-free; the
training itself is sfhpc.stages.train.run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sfhpc.config import (
    MEMORY_FORMAT_HELP,
    PRECISION_HELP,
    PREFETCH_HELP,
    Bool,
    Closed,
    DataConfig,
    Float,
    Int,
    JobSpec,
    MemoryFormat,
    Precision,
    Prefetch,
    Seed,
    describe,
)
from sfhpc.stages.spec import DataAbsent, OptionalUpstream, ParamError, StageSpec

Band = Literal["none", "lsf", "human", "lsf+human"]
ResolvedCrop = Literal["pad", "random_resized", "none"]  # the crop a point trains with (sfhpc.data.augment)
# torchvision's RandomResizedCrop defaults: the crop's share of the image's area, and its width / height.
RESIZED_CROP_SCALE = (0.08, 1.0)
RESIZED_CROP_RATIO = (3 / 4, 4 / 3)
PRETRAINED_ARCH = "resnet18"  # `pretrained` reads torchvision ResNet-18 weights

TEST_ACCURACY = "test_accuracy"  # the metric the report compares models by first
# A guided model's weighted neural term's share of its training loss, alpha * MSE / L, mean over epochs.
NEURAL_SHARE = "neural_loss_share"
NEGLIGIBLE_GUIDANCE = 0.10  # below this share, the report warns that guidance hardly entered training


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
    precision: Precision = Field("float32", description=PRECISION_HELP)
    memory_format: MemoryFormat = Field("auto", description=MEMORY_FORMAT_HELP)
    prefetch_batches: Prefetch = Field("auto", description=PREFETCH_HELP)
    loss_normalized: Bool = Field(False, description="guided: train on L / (1 - alpha) = CE + alpha / (1 - alpha) "
                                  "MSE, the study's loss divided by the cross-entropy's weight: the same balance "
                                  "of the two terms, with cross-entropy at the unguided model's step size (at alpha "
                                  "0.9 the study's loss trains cross-entropy at a tenth of it, which a short run "
                                  "cannot make up for)")
    neural_target: Literal["raw", "standardized", "scaled"] = Field(
        "raw", description="guided: the neural head's targets are the predictor's outputs as they are (raw: the "
        "study's PC scores, whose scale, and so the neural term's weight in the loss, follows the predictor), "
        "standardized per output (mean 0, SD 1 over the training images: every predicted PC weighs the same, the "
        "weak trailing ones too), or scaled (centred per output and divided by one number, so that their variance "
        "is 1 on average: the leading PCs keep the larger share they have in the ROI's responses)")
    seed: Seed = 0
    epochs: Int = Field(3, ge=1)
    batch_size: Int = Field(64, ge=1)
    lr: Float = Field(0.05, gt=0)
    momentum: Float = Field(0.9, ge=0, lt=1)
    weight_decay: Float = Field(1e-4, ge=0)
    lr_step: Int = Field(20, ge=1, description="StepLR step size in epochs")
    lr_gamma: Float = Field(0.1, gt=0, le=1)
    augment: Bool = Field(True, description="a random crop (augment_crop) and a horizontal flip of each training "
                          "image")
    augment_crop: Literal["auto", "pad", "random_resized"] = Field(
        "auto", description="pad: a crop of the image's size from the image reflect-padded by 1/16 of its size; "
        "random_resized: torchvision's RandomResizedCrop (a box of augment_scale of the stored image's area and "
        "width/height in augment_ratio, resized to the image size; cropped from the stored image, not from the "
        "original photo: see sfhpc.data.augment); auto: random_resized for imagefolder data (the "
        "study's recipe, SCIENCE.md section 2), pad for synthetic data")
    augment_scale: tuple[Float, Float] = Field(RESIZED_CROP_SCALE, description="random_resized: the range of the "
                                               "crop's share of the image's area")
    augment_ratio: tuple[Float, Float] = Field(RESIZED_CROP_RATIO, description="random_resized: the range of the "
                                               "crop's width / height (drawn log-uniformly)")
    augment_contrast_min: Float = Field(1.0, gt=0, le=1, description="each training image's contrast is scaled "
                                        "by a factor drawn from [this, 1] (1: off); CBM shows contrast-0.2 images")
    augment_grey: Float = Field(0.0, ge=0, le=1, description="the share of training images (drawn per image) "
                                "turned grey around the CBM stimulus's mean luminance 0.449, before the contrast "
                                "scaling: the critical band masking stimulus is grey (0: off)")
    pretrained: str | None = Field(None, description="a torchvision ResNet-18 state dict (.pth; arch resnet18) the "
                                   "trunk starts from; its fc is replaced by the model's own head. A path relative "
                                   "to the folder sfhpc runs in; read on the node, never downloaded")

    @model_validator(mode="after")
    def _normalizable(self) -> TrainParams:
        if self.loss_normalized and self.alpha >= 1:
            raise ValueError("loss_normalized divides the loss by 1 - alpha: it needs alpha below 1 (at alpha 1 there "
                             "is no cross-entropy to normalise by)")
        return self

    @field_validator("augment_scale")
    @classmethod
    def _scale_is_an_area_share(cls, scale: tuple[float, float]) -> tuple[float, float]:
        low, high = scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"got {describe(list(scale))}; give [low, high] with 0 < low <= high <= 1 (shares of "
                             "the image's area)")
        return scale

    @field_validator("augment_ratio")
    @classmethod
    def _ratio_is_positive_and_ordered(cls, ratio: tuple[float, float]) -> tuple[float, float]:
        low, high = ratio
        if not 0 < low <= high:
            raise ValueError(f"got {describe(list(ratio))}; give [low, high] with 0 < low <= high (width / height)")
        return ratio

    @field_validator("pretrained")
    @classmethod
    def _absolute(cls, path: str | None) -> str | None:
        # As data.root: absolute where the sweep is loaded, so that jobs find the file wherever they start.
        return None if path is None else os.path.abspath(os.path.expanduser(path))


def resolve_crop(params: TrainParams, data_kind: str) -> ResolvedCrop:
    """The crop a point trains with: augment_crop, with auto resolved by the kind of data; "none" without
    augmentation. Synthetic data keeps the padded crop it always had, so its results stay what they were."""
    if not params.augment:
        return "none"
    if params.augment_crop == "auto":
        return "random_resized" if data_kind == "imagefolder" else "pad"
    return params.augment_crop


def check_train_point(params: TrainParams, data: DataConfig, job: JobSpec) -> None:
    """Expand-time checks of a train point: its band, its crop settings and its pretrained weights."""
    check_band_fits_data(params, data)
    check_crop_settings(params, data)
    check_pretrained(params)


def check_band_fits_data(params: TrainParams, data: DataConfig) -> None:
    """The front-end's band fits the images (a band above Nyquist, or a blur wider than the image, is refused)."""
    from sfhpc.models.bands import BandParams, check_band_fits  # numpy only

    band_params = BandParams(params.lsf_sigma_px224, params.human_mu, params.human_s, params.human_floor)
    check_band_fits(params.band, data.image_size, band_params)


def check_crop_settings(params: TrainParams, data: DataConfig) -> None:
    """augment_scale and augment_ratio only shape the random_resized crop: given for a point that crops otherwise,
    they are a mistake (a forgotten augment_crop), not settings to ignore quietly."""
    crop = resolve_crop(params, data.kind)
    if crop == "random_resized":
        return
    why = ("augment is off" if crop == "none"
           else f"this point's crop is pad (augment_crop {params.augment_crop}, data kind {data.kind})")
    for key, default in (("augment_scale", RESIZED_CROP_SCALE), ("augment_ratio", RESIZED_CROP_RATIO)):
        if getattr(params, key) != default:
            raise ParamError(key, f"is only read by augment_crop random_resized, but {why}")


def check_pretrained(params: TrainParams) -> None:
    """Pretrained weights are a torchvision ResNet-18's, and their file exists (its contents are checked on the
    node, where torch reads it)."""
    if params.pretrained is None:
        return
    if params.arch != PRETRAINED_ARCH:
        raise ParamError("pretrained", f"torchvision ResNet-18 weights need arch {PRETRAINED_ARCH}, not "
                                       f"{params.arch}")
    path = Path(params.pretrained)
    if not path.exists():
        raise DataAbsent("pretrained", f"no such file: {params.pretrained}")
    if not path.is_file():
        raise ParamError("pretrained", f"not a file: {params.pretrained}")


PREDICTOR = "predictor"  # the predictor stage's parameter (and sweep axis): trained, or a control of it
TRAINED, SHUFFLED, RANDOM = "trained", "shuffled", "random"
ALPHA, BAND, ROI = "alpha", "band", "roi"


def is_guided_by(kind: str, settings: dict[str, Any]) -> bool:
    """Co-trained (alpha > 0) with the outputs of a predictor of this kind (a guided model's settings hold its
    predictor's parameters)."""
    return float(settings.get(ALPHA, 0.0)) > 0 and settings.get(PREDICTOR) == kind


def is_guided(settings: dict[str, Any]) -> bool:
    """Guided by a trained predictor: the models compared with the controls and tested by the study's claims."""
    return is_guided_by(TRAINED, settings)


def is_baseline(params: dict[str, Any]) -> bool:
    """Unguided and unsteered: band none and alpha 0 (a sweep without an alpha axis has alpha 0)."""
    return params.get("band", "none") == "none" and float(params.get("alpha", 0.0)) == 0.0


SPEC = StageSpec(
    name="train", entry=__name__, params=TrainParams, runner="sfhpc.stages.train.run:run",
    # A guided train point (alpha > 0) reads its predictor; an unguided one needs none, and expands once.
    optional_upstream=OptionalUpstream("predictor", "alpha", "the neural predictor supplies the targets"),
    check=check_train_point, check_key="band", report="sfhpc.stages.train.report:REPORT",
)

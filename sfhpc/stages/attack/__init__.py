"""The attack stage's spec: AutoAttack on one shard of a trained model's test images (SCIENCE.md section 5); the
shards of a model merge exactly (robust accuracy = robust count / N). Torch-free; the attack itself is
sfhpc.stages.attack.run.

Each norm's epsilons form a grid (`attack_eps_grid`): monotone (the default) attacks them in ascending order, each
only on the images still robust at the previous one, so a model's flags never say robust where a smaller epsilon
broke it, and the images already broken cost no attack; independent attacks every epsilon on its own, as before.

Epsilons are given in `attack_eps_unit`: pixel units of [0, 1] images, or the model's normalisation units, as the
study's were; AutoAttack runs in pixels, with normalized epsilons times the smallest of the model's per-channel SDs
(sfhpc.evaluation.attack.conversion_sd says why, and how large the approximation is). Every result records both
units; metric and curve names carry the pixel epsilon, the one AutoAttack ran with.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator

from sfhpc.config import MAX_SHARDS, Closed, DataConfig, Float, Int, JobSpec, Seed, describe
from sfhpc.models.normalization import IMAGENET_STD
from sfhpc.stages.spec import ID_DEFAULT, Shards, StageSpec

SHARDS = Shards(index="attack_shard", count="attack_shards")
CLEAN_CORRECT_CURVE = "clean_correct"  # per image: correctly classified without attack
SETTINGS_ATTR = "settings"  # JSON list of the (norm, eps, ...) settings a shard was attacked with
# In each entry of SETTINGS_ATTR: "eps" is AutoAttack's epsilon (pixel units), this key the same in normalized units.
EPS_NORMALIZED_KEY = "eps_normalized"
EPS_UNIT_ATTR = "eps_unit"  # the unit the sweep gave the epsilons in: pixel or normalized
EPS_GRID_ATTR = "eps_grid"  # monotone or independent (results written before grids existed: independent)
NONMONOTONE_ATTR = "nonmonotone_images"  # images robust at some eps after being broken at a smaller one (per norm)
NORMALIZATION_STD_ATTR = "normalization_std"  # the per-channel SDs the attacked model divides its inputs by
EPS_SD_ATTR = "eps_sd"  # the one SD that converted between the units (pixel = normalized x SD)
SHARD_ATTR = "shard"  # the shard's index, which the merge checks against the shard count
SHARD_COUNT_ATTR = "shards"  # how many shards the model's images were split into
# The SDs every sfhpc classifier divides its [0, 1] inputs by, for the login node's check of a sweep's epsilons; the
# node converts with the attacked model's own buffer (a test keeps the two equal).
MODEL_INPUT_STD = IMAGENET_STD


def robust_accuracy_metric(norm: str, eps: float) -> str:
    """The result scalar of one shard's robust accuracy at (norm, eps), eps in pixel units whatever the unit the
    sweep gave it in (the epsilon AutoAttack ran with)."""
    return f"robust_accuracy_{norm}_eps{eps:.6g}"


def robust_curve_name(norm: str, eps: float) -> str:
    """The result curve of one shard's per-image robust flags at (norm, eps), eps in pixel units."""
    return f"robust_{norm}_eps{eps:.6g}"


def _number_or_fraction(value: Any) -> Any:
    # Before the union, as for cbm_criterion: a boolean is neither a number nor a fraction.
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"got {describe(value)}; expected a number or a fraction like '8/255'")
    return value


Epsilon = Annotated[Float | str, BeforeValidator(_number_or_fraction)]


class AttackParams(Closed):
    """AutoAttack on a trained model's test images (SCIENCE.md section 5), split into shards (array tasks)."""

    attack_version: Literal["standard", "plus", "rand", "custom"] = "standard"
    attack_names: tuple[str, ...] | None = Field(None, max_length=16,
                                                 description="attacks of version custom, e.g. [apgd-ce]")
    attack_eps: dict[str, Annotated[tuple[Epsilon, ...], Field(max_length=64)]] = Field(
        {"Linf": ("1/255", "2/255", "4/255", "8/255")},
        description="epsilons per norm (Linf, L2, L1) in attack_eps_unit; '8/255' is allowed",
        validate_default=True)
    attack_eps_unit: Literal["pixel", "normalized"] = Field(
        "pixel", description="pixel: attack_eps in pixel units of [0, 1] images; normalized: in the model's input "
                             "normalisation units, as the study's (SCIENCE.md section 5), run as eps x the smallest "
                             "channel SD")
    attack_eps_grid: Literal["monotone", "independent"] = Field(
        "monotone", description="monotone: each norm's epsilons in ascending order, each attacking only the images "
                                "still robust at the previous one (broken ones carry their checked adversarial "
                                "example forward); independent: every epsilon attacks every clean-correct image",
        json_schema_extra={ID_DEFAULT: "independent"})
    attack_random_start: Literal["image", "batch"] = Field(
        "image", description="image: APGD's random start drawn per image (seed, restart, the image's bytes), so "
                             "flags do not depend on batch composition (Linf, L2); batch: AutoAttack's own, one "
                             "draw per batch",
        json_schema_extra={ID_DEFAULT: "batch"})
    attack_shards: Int | None = Field(None, ge=1, le=MAX_SHARDS, description="shards per model (default: the job "
                                                                          "file's)")
    attack_images: Int | None = Field(None, ge=1, description="test images attacked (default: all)")
    attack_seed: Seed = 0
    attack_batch_size: Int = Field(128, ge=1)
    attack_apgd_iterations: Int | None = Field(None, ge=1, description="quick runs: APGD iterations (default 100)")
    attack_apgd_restarts: Int | None = Field(None, ge=1, description="quick runs: APGD-CE restarts")
    attack_shard: Int = Field(0, ge=0, description="set by sfhpc for each shard; not a sweep parameter")

    @field_validator("attack_eps")
    @classmethod
    def _fractions_to_numbers(cls, eps: dict[str, tuple[Epsilon, ...]]) -> dict[str, tuple[float, ...]]:
        return {norm: tuple(parse_epsilon(value) for value in values) for norm, values in eps.items()}

    def epsilons(self) -> dict[str, tuple[float, ...]]:
        """The epsilons per norm as the sweep gave them, in attack_eps_unit."""
        return {norm: tuple(float(value) for value in values) for norm, values in self.attack_eps.items()}


def parse_epsilon(value: float | str) -> float:
    """8/255 written as a number or as the text '8/255'; a finite one ('inf' or '1/0' is no epsilon)."""
    if isinstance(value, str):
        numerator, slash, denominator = value.partition("/")
        try:
            number = float(numerator) / float(denominator) if slash else float(numerator)
        except (ValueError, ZeroDivisionError):
            number = math.inf
        if not math.isfinite(number):
            raise ValueError(f"epsilon {value!r} is not a number or a fraction like '8/255'")
        return number
    return float(value)


def check_attack_settings(params: AttackParams, data: DataConfig, job: JobSpec) -> None:
    """What AutoAttack would reject, found at expand time rather than on a node hours later."""
    from sfhpc.evaluation.attack import validate_attack_settings  # torch-free

    images = min(params.attack_images or data.n_test, data.n_test)
    validate_attack_settings(params.attack_version, params.attack_names, list(params.attack_eps),
                             params.epsilons(), SPEC.n_shards(params.model_dump(), job), images,
                             params.attack_eps_unit, MODEL_INPUT_STD)


SPEC = StageSpec(name="attack", entry=__name__, params=AttackParams, runner="sfhpc.stages.attack.run:run",
                 upstream=("train",), shards=SHARDS, check=check_attack_settings, check_key="attack_eps",
                 report="sfhpc.stages.attack.report:REPORT")

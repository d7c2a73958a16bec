"""Typed, closed configuration: sweeps, stage parameters, job specs; YAML loading with located errors.

Everything here is login-node code: pydantic, yaml and numpy-free band checks only, never torch.
Every user mistake becomes a :class:`SweepError` that names the file, the line and the key.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from sfhpc.errors import SweepError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
JOBS_DIR = PROJECT_ROOT / "jobs"
PROFILES_DIR = PROJECT_ROOT / "slurm_templates" / "profiles"

Executor = Literal["auto", "local", "slurm", "debug"]
Band = Literal["none", "lsf", "human", "lsf+human"]
KeyPath = tuple[Any, ...]


class Closed(BaseModel):
    """Base of every config model: unknown keys are errors and values never change after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ------------------------------------------------------------------------------------ value types
# Strict numbers: pydantic's lax mode would turn YAML's `true` or `yes` into 1 and a quoted '1' into 1, silently
# changing the experiment (`seed: [true]` became seed 1; `seed: [1, '1']` merged two points). An integer is still a
# valid float. Infinity and NaN are refused: no setting means them, and they would pass `gt=0` checks.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Bool = Annotated[bool, Strict()]
# torch.manual_seed refuses seeds of 2**64 and above, and stages multiply seeds (seed * 100_003 + epoch).
MAX_SEED = 2**32 - 1


def _seed_fits(seed: int) -> int:
    if seed > MAX_SEED:
        raise ValueError(f"a seed is at most 2**32 - 1 = {MAX_SEED} (torch and numpy are seeded with it), got "
                         f"{describe(seed)}")
    return seed


Seed = Annotated[int, Strict(), Field(ge=0), AfterValidator(_seed_fits)]


def _one_line(text: str) -> str:
    """Text that is one line of printable characters: a newline in an #SBATCH option would end the directive and
    make the rest of the value a shell command of the job script."""
    bad = next((c for c in text if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if bad is not None:
        raise ValueError(f"contains the control character {bad!r} (at position {text.index(bad)}) in "
                         f"{describe(text)}; only printable text on one line is allowed")
    return text


OneLine = Annotated[str, AfterValidator(_one_line)]


def describe(value: Any) -> str:
    """A value as a message shows it: its repr, shortened when long, and what YAML made of it (`yes` is a boolean,
    '1' in quotes a string), so that a user sees why it is refused."""
    text = repr(value)
    kinds = {bool: "a boolean", str: "a string", int: "an integer", float: "a number", list: "a list",
             dict: "a mapping", type(None): "null"}
    kind = kinds.get(type(value))
    if len(text) > 60:
        size = (f" of {len(value)} characters" if isinstance(value, str)
                else f" of {len(text.lstrip('-'))} digits" if type(value) is int else "")
        text, kind = f"{text[:40]}...", f"{kind or type(value).__name__}{size}"
    return f"{text} ({kind})" if kind else text


# --------------------------------------------------------------------------------------------- data
ROIS: tuple[str, ...] = ("V1", "V2", "V4", "VO", "PHC", "LO", "TO")  # hierarchy order (SCIENCE.md section 1)
SUBJECTS: tuple[str, ...] = tuple(f"subj{n:02d}" for n in range(1, 9))
# Reference subj01 mean noise ceilings (%), SCIENCE.md section 1: the simulated brain's defaults.
REFERENCE_NOISE_CEILING: dict[str, float] = {"V1": 31.1, "V2": 29.9, "V4": 31.8, "VO": 31.6, "PHC": 30.0,
                                             "LO": 29.3, "TO": 43.0}


class NeuralConfig(Closed):
    """The fMRI data that guides training (SCIENCE.md sections 1, 2, 6): one canonical HDF5 file per subject.

    `simulated` (the embedded default) generates each subject's file in the run folder from a seeded encoding
    model over synthetic scenes; `nsd` reads files made by `sfhpc data nsd-prepare` from `dir`."""

    kind: Literal["simulated", "nsd"] = "simulated"
    dir: str | None = Field(None, description="nsd: folder holding <subject>.h5 canonical files")
    n_images: Int = Field(600, ge=20, description="simulated: images each subject saw")
    n_shared: Int = Field(100, ge=10, description="simulated: shared (validation) images, each shown 3 times")
    noise_ceiling: dict[str, Float] = Field(REFERENCE_NOISE_CEILING,
                                            description="simulated: mean noise ceiling (%) per ROI")
    seed: Seed = Field(0, description="simulated: seed of the scenes and of every subject's encoding model")


class DataConfig(Closed):
    """The dataset every stage of a sweep uses: `synthetic`, the embedded default (sfhpc.data.synthetic), or
    `imagefolder`, an ImageNet-style class subset (sfhpc.data.imagefolder).

    For imagefolder, `n_classes` is filled in from the class-list file when the config is loaded (and must match
    it when given), so that every stage reading `data.n_classes` gets the class list's length; `root` and
    `classes_file` become absolute paths, so that jobs find them wherever they start and the resolved config
    beside each result says which files were read. Both must be readable where sweeps are expanded."""

    kind: Literal["synthetic", "imagefolder"] = "synthetic"
    image_size: Int = Field(128, ge=32, le=1024, description="stored images' size in px; imagefolder: the centre "
                            "crop after resizing the shorter side to size * 256/224 (224 for ImageNet)")
    n_classes: Int = Field(8, ge=2, description="synthetic: classes generated; imagefolder: filled in from "
                                                "classes_file (give it only to check it)")
    n_train: Int = Field(2000, ge=1, description="synthetic only (imagefolder: all of train/, see max_per_class)")
    n_val: Int = Field(400, ge=1, description="synthetic only (imagefolder: half of each class's val/ images)")
    n_test: Int = Field(400, ge=1, description="synthetic only (imagefolder: the other half of val/)")
    seed: Seed = Field(0, description="synthetic: seed of the images; imagefolder: seed of the val/test halves "
                                      "and of each split's order")
    root: str | None = Field(None, description="imagefolder: folder holding train/ and val/, each with one folder "
                                               "of images per class (ImageNet layout)")
    classes_file: str | None = Field(None, description="imagefolder: the classes used, one class folder per line "
                                                       "(label = line order), optionally followed by a readable "
                                                       "name; '#' starts a comment")
    max_per_class: Int | None = Field(None, ge=2, description="imagefolder: at most this many images per class "
                                                              "from train/ and from val/ (quick runs; default all)")
    neural: NeuralConfig = NeuralConfig()

    @field_validator("root", "classes_file")
    @classmethod
    def _absolute(cls, path: str | None) -> str | None:
        return None if path is None else _absolute_path(path)

    @model_validator(mode="before")
    @classmethod
    def _n_classes_from_class_list(cls, values: Any) -> Any:
        # Before the fields are validated: a frozen model cannot fill in n_classes afterwards.
        if not (isinstance(values, dict) and values.get("kind") == "imagefolder"
                and isinstance(values.get("classes_file"), str)):
            return values  # nothing to read; the field and `after` checks report what is wrong
        from sfhpc.data.imagefolder import ImageFolderError, read_class_list  # numpy and PIL, no torch

        path = _absolute_path(values["classes_file"])
        try:
            count = len(read_class_list(Path(path)))
        except ImageFolderError as err:
            raise _key_error("classes_file", str(err), values["classes_file"]) from None
        if count < 2:
            raise _key_error("classes_file", f"{path} lists 1 class; a classifier needs at least 2", path)
        if values.get("n_classes", count) != count:
            raise _key_error("n_classes", f"is {values['n_classes']}, but classes_file {path} lists {count} "
                             "classes; leave n_classes out for imagefolder (it is taken from the file)",
                             values["n_classes"])
        return {**values, "n_classes": count}

    @model_validator(mode="after")
    def _keys_match_kind(self) -> DataConfig:
        if self.kind == "imagefolder":
            for key, what in (("root", "the folder holding train/ and val/"), ("classes_file", "the class list")):
                if getattr(self, key) is None:
                    raise _key_error(key, f"kind imagefolder needs {key} ({what})", None)
            from sfhpc.data.imagefolder import ImageFolderError, check_root

            try:
                check_root(Path(self.root))
            except ImageFolderError as err:
                raise _key_error("root", str(err), self.root) from None
        else:  # a forgotten `kind: imagefolder` would otherwise train on synthetic images without a word
            for key in ("root", "classes_file", "max_per_class"):
                if getattr(self, key) is not None:
                    raise _key_error(key, f"is only read by kind imagefolder (kind is {self.kind})", getattr(self, key))
        return self


def _absolute_path(path: str) -> str:
    """``path`` with ~ expanded, relative to the current folder (symbolic links kept as written)."""
    return os.path.abspath(os.path.expanduser(path))


def _key_error(key: str, message: str, value: Any) -> ValidationError:
    """A validation error located at `key` (a validator's own errors would point at the whole model or field)."""
    error = PydanticCustomError("value_error", "{error}", {"error": message})
    return ValidationError.from_exception_data("Closed", [InitErrorDetails(type=error, loc=(key,), input=value)])


# --------------------------------------------------------------------------------------- stages
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



class PredictorParams(Closed):
    """The neural predictor of one subject's ROI (SCIENCE.md section 2): a ResNet regressing the ROI's PC scores.
    `subject`, `roi` and `predictor` are sweep axes; a guided train point (alpha > 0) uses the predictor of its
    subject, ROI and control."""

    subject: str = Field("subj01", description=f"one of {', '.join(SUBJECTS)}")
    roi: str = Field(description=f"one of {', '.join(ROIS)} (prepared NSD files may hold other atlases' ROIs; "
                                 "`sweep expand` checks the subject's file)")
    predictor: Literal["trained", "shuffled", "random"] = Field(
        "trained", description="trained; shuffled (image-response pairs permuted, a control); random (untrained)")
    predictor_arch: Literal["small_resnet", "resnet18"] = "small_resnet"
    predictor_width: Int = Field(16, ge=2, description="base width of small_resnet")
    predictor_epochs: Int = Field(40, ge=1)
    predictor_batch_size: Int = Field(200, ge=1)
    predictor_lr: Float = Field(1e-3, gt=0, description="Adam learning rate")
    predictor_weight_decay: Float = Field(5e-4, ge=0)
    predictor_seed: Seed = 0

    @field_validator("subject")
    @classmethod
    def _known_subject(cls, subject: str) -> str:
        return known_subject(subject)


class RsaParams(Closed):
    """Similarity of a trained model's representational geometry to the subject's ROIs (SCIENCE.md section 6)."""

    rsa_subjects: tuple[str, ...] | None = Field(
        None, max_length=len(SUBJECTS),
        description="subjects whose ROIs each model is compared with; default: a guided model's own subject, an "
                    "unguided one every subject of the sweep's predictor stage (subj01 without one)")
    rsa_permutations: Int = Field(1000, ge=0, description="image permutations of the significance test")
    rsa_seed: Seed = 0

    @field_validator("rsa_subjects")
    @classmethod
    def _known_subjects(cls, subjects: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for subject in subjects or ():
            known_subject(subject)
        return subjects


def known_subject(subject: str) -> str:
    """`subject`, if NSD has it; else a ValueError listing the subjects."""
    if subject not in SUBJECTS:
        raise ValueError(f"unknown subject {subject!r}; NSD subjects are {', '.join(SUBJECTS)}")
    return subject


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


def _number_or_fraction(value: Any) -> Any:
    # Before the union, as for cbm_criterion: a boolean is neither a number nor a fraction.
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"got {describe(value)}; expected a number or a fraction like '8/255'")
    return value


Epsilon = Annotated[Float | str, BeforeValidator(_number_or_fraction)]
MAX_SHARDS = 1000  # each shard is an array task of every trained point: the sweep's point cap does not bound them


class AttackParams(Closed):
    """AutoAttack on a trained model's test images (SCIENCE.md section 5), split into shards (array tasks)."""

    attack_version: Literal["standard", "plus", "rand", "custom"] = "standard"
    attack_names: tuple[str, ...] | None = Field(None, max_length=16,
                                                 description="attacks of version custom, e.g. [apgd-ce]")
    attack_eps: dict[str, Annotated[tuple[Epsilon, ...], Field(max_length=64)]] = Field(
        {"Linf": ("1/255", "2/255", "4/255", "8/255")},
        description="epsilons per norm (Linf, L2, L1) in pixel units of [0, 1] images; '8/255' is allowed",
        validate_default=True)
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


@dataclass(frozen=True)
class StageKind:
    """What the framework knows about a stage before importing it: its parameters, its upstream stages, an
    upstream stage that only the points with a positive `optional_when` parameter need, and, for a sharded stage,
    the parameter that numbers its shards."""

    params: type[Closed]
    upstream: tuple[str, ...] = ()
    shard_param: str | None = None
    optional_upstream: str | None = None
    optional_when: str | None = None

    def needs_optional(self, params: dict[str, Any]) -> bool:
        return self.optional_when is not None and params.get(self.optional_when, 0) > 0


STAGE_KINDS: dict[str, StageKind] = {
    "predictor": StageKind(PredictorParams),
    # A guided train point (alpha > 0) reads its predictor; an unguided one needs none, and expands once.
    "train": StageKind(TrainParams, optional_upstream="predictor", optional_when="alpha"),
    "cbm": StageKind(CbmParams, upstream=("train",)),
    "attack": StageKind(AttackParams, upstream=("train",), shard_param="attack_shard"),
    "rsa": StageKind(RsaParams, upstream=("train",)),
}


# ----------------------------------------------------------------------------------- resources
class Resources(Closed):
    """What one point (one array task) of a stage asks the scheduler for."""

    nodes: Int = Field(1, ge=1)
    tasks_per_node: Int = Field(1, ge=1)
    cpus_per_task: Int = Field(2, ge=1)
    gpus_per_node: Int = Field(0, ge=0)
    mem_gb: Float = Field(8, gt=0)
    timeout_min: Int = Field(60, ge=1)
    array_parallelism: Int | None = Field(None, ge=1, description="%N throttle of the stage's arrays")
    max_requeues: Int = Field(5, ge=0, description="times a job may requeue itself at its time limit")
    signal_delay_s: Int = Field(90, ge=0, description="SLURM sends USR2 this long before the time limit: "
                                                      "the job checkpoints and requeues itself")


def _sbatch_value(value: Any) -> Any:
    # Before the union, whose own errors would name its branches ("bool", "int", "str") in the error's location.
    if not isinstance(value, bool | int | str):
        raise ValueError(f"got {describe(value)}; expected true (a flag), an integer or one line of text")
    return _one_line(value) if isinstance(value, str) else value


# sbatch's long options without the leading --; submitit writes `_` as `-`.
SBATCH_OPTION = re.compile(r"[a-z][a-z0-9_-]*")


class ClusterProfile(Closed):
    """Site settings for SLURM (slurm_templates/profiles/<name>.yaml), overridable in a sweep's `cluster`.

    Every value becomes a line of an sbatch script, so each is one line of printable text: a newline would end the
    #SBATCH directive and run the rest as shell (and stop every later directive from being one). `setup` lines are
    shell by design, one command per list item."""

    partition: OneLine | None = None
    account: OneLine | None = None
    qos: OneLine | None = None
    constraint: OneLine | None = None
    gres: OneLine | None = None
    setup: list[OneLine] = Field([], description="shell lines run before the job, e.g. module loads; one line each")
    additional: dict[str, Annotated[bool | int | str, BeforeValidator(_sbatch_value)]] = Field(
        {}, description="other sbatch options by long name, e.g. {exclude: node7}; true for a flag such as "
                        "{hold: true}")

    @field_validator("additional")
    @classmethod
    def _keys_are_sbatch_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        for key in options:
            if not SBATCH_OPTION.fullmatch(key):
                raise _key_error(key, f"{describe(key)} is not an sbatch option name; allowed: an sbatch long "
                                      "option without the leading -- (lowercase letters, digits, '-' and '_', "
                                      "starting with a letter; regex [a-z][a-z0-9_-]*), e.g. exclude, mail-type",
                                 key)
        return options


class JobSpec(Closed):
    """A stage's job file (jobs/<stage>.yaml): the module that runs it, its default resources and, for a sharded
    stage, how many shards each upstream point is split into."""

    entry: str
    resources: Resources = Resources()
    shards: Int = Field(1, ge=1, le=MAX_SHARDS)
    expected_minutes: Float | None = Field(None, gt=0, description="typical run time of one point, for the "
                                                                   "GPU- and CPU-hour estimate of `sweep expand`")

    @field_validator("entry")
    @classmethod
    def _entry_is_a_stage_module(cls, entry: str) -> str:
        if not re.fullmatch(r"sfhpc\.stages\.[a-z_]+", entry):
            raise ValueError(f"entry must be a module sfhpc.stages.<name>, got {entry!r}")
        return entry


class StageConfig(Closed):
    """One stage of a sweep: fixed parameters (validated per point), its job file and resource overrides."""

    job: OneLine | None = Field(None, description="name of a jobs/*.yaml file, or a path to one written as a path "
                                                  "(./my_jobs/train.yaml, relative to the sweep file); default: "
                                                  "the stage name")
    params: dict[str, Any] = {}
    resources: dict[str, Any] = {}

    @field_validator("job")
    @classmethod
    def _job_is_a_name_or_a_path(cls, job: str | None) -> str | None:
        return None if job is None else check_file_reference(job, "jobs/", "./my_jobs/train.yaml")


# A file named in a sweep (`job:`, `cluster.profile:`) by a plain name stays in its folder: no '/', no leading '.'.
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_file_reference(value: str, folder: str, example: str) -> str:
    """`value` if it is a plain name (of a .yaml file in `folder`) or written as a path (containing '/' and ending in
    .yaml, like `example`); else a ValueError saying both allowed shapes. A name like ../../etc/x could otherwise
    leave `folder`."""
    if FILE_NAME.fullmatch(value) or ("/" in value and value.endswith(".yaml")):
        return value
    raise ValueError(f"got {describe(value)}; give the name of a {folder}*.yaml file without '.yaml' (letters, "
                     "digits, '_', '.', '-', starting with a letter or digit; no '/'), or a path to a .yaml file "
                     f"written as a path, e.g. {example} (relative to the sweep file)")


def referenced_file(value: str, folder: Path, sweep_folder: Path) -> Path:
    """The file a checked `job:` or `cluster.profile:` value means: `folder`/<name>.yaml for a plain name; a path
    (~ expanded) relative to the sweep file's folder otherwise."""
    if FILE_NAME.fullmatch(value):
        return folder / f"{value}.yaml"
    return sweep_folder / Path(value).expanduser()


MAX_NAME_LENGTH = 100  # a sweep's name names its run folder and its SLURM jobs (sfhpc.<name>.<stage>)
DEFAULT_MAX_POINTS = 100_000
MAX_EXCLUDES = 256  # x up to DEFAULT_MAX_POINTS points, each pattern tried on each (use `include` for sparse designs)


class SweepConfig(Closed):
    """A sweep file. Axes come from `grid` (cartesian product), `zip` (lists that vary together) and
    `include` (extra points); `exclude` removes points matching a pattern."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    output: OneLine | None = Field(None, description="the run folder (default runs/<name>); ~ is expanded and the "
                                                     "path made absolute against the current folder when the sweep "
                                                     "is loaded")
    executor: Executor = "auto"
    cluster: dict[str, Any] = Field({}, description="`profile` (slurm_templates/profiles) and overrides of it")
    data: DataConfig = DataConfig()
    grid: dict[str, list[Any]] = {}
    zip: dict[str, list[Any]] = {}
    include: list[dict[str, Any]] = []
    exclude: list[dict[str, Any]] = Field([], max_length=MAX_EXCLUDES, description="patterns removed from grid x "
                                          "zip; each must match at least one point (every pattern is tried on "
                                          "every point: their number is bounded)")
    stages: dict[str, StageConfig]
    max_points: Int = Field(DEFAULT_MAX_POINTS, ge=1, description="expansion refuses a sweep of more points than "
                            "this (grid x zip + include), before building them: a typo such as seed: "
                            "[0, ..., 9999] would otherwise take minutes and gigabytes; raise it for a sweep that "
                            "really is that large")

    @field_validator("name")
    @classmethod
    def _name_fits(cls, name: str) -> str:
        if len(name) > MAX_NAME_LENGTH:
            raise ValueError(f"is {len(name)} characters long; at most {MAX_NAME_LENGTH} (it names the run folder and "
                             "the SLURM jobs)")
        return name

    @field_validator("output")
    @classmethod
    def _output_is_a_folder(cls, output: str | None) -> str | None:
        return None if output is None else str(resolve_run_folder(output))

    @field_validator("zip")
    @classmethod
    def _zip_lists_align(cls, zipped: dict[str, list[Any]]) -> dict[str, list[Any]]:
        lengths = {key: len(values) for key, values in zipped.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"zip lists must have equal lengths, got {lengths}")
        return zipped


def resolve_run_folder(path: str | Path) -> Path:
    """The run folder a user means by `path` (a sweep's `output:` or the CLI's `--output`): `~` and `~user` expanded
    and the path made absolute against the current folder (symbolic links kept as written).

    Reads only, creates nothing. ValueError with a message saying why when the path cannot be a run folder: it
    exists and is not a folder (or a parent is a file), `~user` names no user, a component is longer than the file
    system allows (PC_NAME_MAX, usually 255 bytes), or the path leaves no room for the run's own files under
    PC_PATH_MAX."""
    expanded = os.path.expanduser(str(path))
    if expanded.startswith("~"):
        raise ValueError(f"{describe(str(path))}: cannot expand {expanded.split('/')[0]!r}: no such user")
    folder = Path(os.path.abspath(expanded))
    ancestor = _nearest_existing(folder)
    if not ancestor.is_dir():
        where = "exists" if ancestor == folder else f"cannot be made: {ancestor} exists"
        raise ValueError(f"{folder} {where} and is not a folder")
    name_max, path_max = _path_limits(ancestor)
    for part in folder.relative_to(ancestor).parts:
        if len(os.fsencode(part)) > name_max:
            raise ValueError(f"a folder name of {len(os.fsencode(part))} bytes ({describe(part)}); the file system "
                             f"of {ancestor} allows names of at most {name_max} bytes")
    if len(os.fsencode(str(folder))) > path_max - RUN_FILES_ROOM:
        raise ValueError(f"a path of {len(os.fsencode(str(folder)))} bytes; the run's files below it need it under "
                         f"{path_max - RUN_FILES_ROOM} bytes (PATH_MAX {path_max})")
    return folder


# <stage>/<point id (at most ~210 bytes)>/<file name>, and a temporary file's suffix, below the run folder.
RUN_FILES_ROOM = 512


def _nearest_existing(path: Path) -> Path:
    """`path` or its nearest ancestor that exists (an existing but broken symbolic link counts)."""
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _path_limits(folder: Path) -> tuple[int, int]:
    """(longest name, longest path) in bytes on `folder`'s file system; POSIX's usual values when unknown."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 255, 4096


# --------------------------------------------------------------------------------------- errors
def format_key(path: KeyPath) -> str:
    """('stages', 'train', 'params', 'lr') -> 'stages.train.params.lr'; list indices as [i]; a key that is not
    printable text (a newline in it) as ['a\\nb'], so that a message stays one line."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not str(part).isprintable():
            text += f"[{str(part)!r}]"
        else:
            text += f".{part}" if text else str(part)
    return text


# Values a document may hold with its aliases expanded. Aliases are shared when parsed, but everything after (the
# line index, validation, JSON) copies them: ten lines of nested aliases ("billion laughs") expand to 10**9 values.
MAX_YAML_VALUES = 1_000_000
MAX_YAML_DEPTH = 100  # a sweep needs about 6 levels


class _Loader(yaml.SafeLoader):
    """YAML 1.1, as PyYAML reads it, but with YAML 1.2's numbers: `1e-3` is a number, not the string '1e-3' (strict
    number fields would refuse it, and lax ones hid the difference)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


class LocatedYaml:
    """A parsed YAML document plus the line of every key and list item, found from the composed node tree.

    The document is composed once, measured (aliases expanded, refused above MAX_YAML_VALUES), indexed, then
    constructed: no alias or nesting makes this slow or large."""

    def __init__(self, path: Path, base_dir: Path | None = None):
        self.path = path
        # What relative `job:` and `cluster.profile:` paths are relative to: the sweep file's folder, or, for the
        # copy a run folder keeps, the folder of the sweep it was launched from.
        self.base_dir = base_dir or path.parent
        self.lines: dict[KeyPath, int] = {}
        self._indexed: set[int] = set()
        loader = _Loader(_read_text(path))
        try:
            root = self._parse(loader.get_single_node)
            if root is not None:
                _check_expanded_size(root, path)
                self._index(root, ())
            self.data = self._parse(lambda: loader.construct_document(root) if root is not None else None, root)
        finally:
            loader.dispose()

    def _parse(self, step: Any, root: yaml.Node | None = None) -> Any:
        """Run one step of the loader, turning what the text can make it raise into located errors."""
        try:
            return step()
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            problem = getattr(err, "problem", None) or str(err)
            raise SweepError(self.path, mark.line + 1 if mark else None, "", f"not valid YAML: {problem}") from None
        except RecursionError:
            raise SweepError(self.path, None, "", f"values nested too deeply to read (a sweep needs about 6 "
                                                  f"levels; at most {MAX_YAML_DEPTH} are allowed)") from None
        except ValueError as err:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
            node = next(_too_long_integers(root), None) if root is not None else None
            if node is None:
                raise SweepError(self.path, None, "", f"not a usable value: {err}") from None
            raise SweepError(self.path, node.start_mark.line + 1, "", f"an integer of {len(node.value)} digits: "
                             f"more than Python reads ({sys.get_int_max_str_digits()})") from None

    def _index(self, node: yaml.Node, path: KeyPath) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if id(node) in self._indexed:  # an alias: its keys' lines are the anchor's, indexed once
            return
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            self._indexed.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = key_node.value
                if key in seen:
                    raise SweepError(self.path, key_node.start_mark.line + 1, format_key((*path, key)),
                                     "duplicate key (YAML would silently keep only the last one)")
                seen.add(key)
                self.lines[(*path, key)] = key_node.start_mark.line + 1
                self._index(value_node, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._index(item, (*path, index))

    def line_of(self, path: KeyPath) -> int | None:
        """The line of the deepest known prefix of `path` (pydantic locations may go below the YAML)."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None

    def error(self, path: KeyPath, message: str) -> SweepError:
        return SweepError(self.path, self.line_of(path), format_key(path), message)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _expanded_sizes(root: yaml.Node, path: Path) -> dict[int, int]:
    """Values under each node (by id) with aliases expanded, each shared node measured once. Refused: a node that
    contains an alias of itself (nothing could expand it), and nesting deeper than MAX_YAML_DEPTH (chained aliases
    nest without the parser's recursion, and would overflow Python's further on)."""
    sizes: dict[int, int] = {}
    heights: dict[int, int] = {}
    open_nodes: set[int] = set()

    def refuse(node: yaml.Node, message: str) -> SweepError:
        return SweepError(path, node.start_mark.line + 1, "", message)

    def measure(node: yaml.Node, depth: int) -> None:
        if depth > MAX_YAML_DEPTH:
            raise refuse(node, f"values nested more than {MAX_YAML_DEPTH} levels deep")
        if id(node) not in sizes:
            if id(node) in open_nodes:
                raise refuse(node, "an alias refers to a node that contains it (a recursive structure): a sweep's "
                                   "values must be finite")
            open_nodes.add(id(node))
            children = _children(node)
            for child in children:
                measure(child, depth + 1)
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            heights[id(node)] = 1 + max((heights[id(child)] for child in children), default=0)
            open_nodes.discard(id(node))
        if depth + heights[id(node)] > MAX_YAML_DEPTH:
            raise refuse(node, f"values nested more than {MAX_YAML_DEPTH} levels deep")

    measure(root, 0)
    return sizes


def _check_expanded_size(root: yaml.Node, path: Path) -> None:
    """Refuse a document whose aliases expand to more than MAX_YAML_VALUES values, at the deepest key that alone
    holds too many."""
    sizes = _expanded_sizes(root, path)
    if sizes[id(root)] <= MAX_YAML_VALUES:
        return
    node, where, line = root, (), root.start_mark.line + 1
    while True:
        pairs = node.value if isinstance(node, yaml.MappingNode) else list(enumerate(_children(node)))
        big = next(((key, value) for key, value in pairs if sizes[id(value)] > MAX_YAML_VALUES), None)
        if big is None:
            break
        key, node = big
        where += (key.value if isinstance(key, yaml.Node) else key,)
        line = (key if isinstance(key, yaml.Node) else node).start_mark.line + 1
    raise SweepError(path, line, format_key(where), f"YAML aliases expand this to {sizes[id(node)]:,} values, above "
                     f"the limit of {MAX_YAML_VALUES:,} (nested aliases, a 'billion laughs'?); write the values out")


def _too_long_integers(root: yaml.Node) -> Iterator[yaml.Node]:
    """Integer scalars with more digits than Python converts, each node once."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.tag == "tag:yaml.org,2002:int" and len(node.value) > sys.get_int_max_str_digits():
            yield node
        stack.extend(reversed(_children(node)))


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise SweepError(path, None, "", "file not found") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as err:
        raise SweepError(path, None, "", f"cannot read: {err}") from None


def validation_error(doc: LocatedYaml, err: ValidationError, prefix: KeyPath = ()) -> SweepError:
    """Turn pydantic's first error into a located SweepError that says what is allowed."""
    first = err.errors()[0]
    path = (*prefix, *first["loc"])
    return doc.error(path, explain_pydantic_error(first))


# Type errors of strict fields: what was expected, for "got True (a boolean); expected an integer".
_EXPECTED = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
             "string_type": "a string", "finite_number": "a finite number"}


def explain_pydantic_error(error: dict[str, Any]) -> str:
    """One pydantic error as a user reads it: what was given and what is allowed."""
    kind, context = error["type"], error.get("ctx", {})
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        return f"got {describe(error['input'])}; allowed: {context.get('expected')}"
    if kind == "value_error":
        return str(context.get("error", error["msg"]))
    if kind in _EXPECTED:
        return f"got {describe(error['input'])}; expected {_EXPECTED[kind]}{_type_hint(error['input'], kind)}"
    message = error["msg"][:1].lower() + error["msg"][1:]  # lower-case the sentence, not a pattern it quotes
    return f"{message} (got {describe(error['input'])})" if "input" in error else message


def _type_hint(value: Any, kind: str) -> str:
    """Why YAML made `value` what it is, when that is the likely mistake."""
    if isinstance(value, bool) and kind != "bool_type":
        return " (YAML reads true/false/yes/no/on/off as booleans)"
    if isinstance(value, str) and kind in ("int_type", "float_type") and re.fullmatch(r"[-+0-9.eE_]+", value):
        return " (write it without quotes)"
    return ""


def unknown_key_error(doc: LocatedYaml, path: KeyPath, allowed: list[str]) -> SweepError:
    return doc.error(path, f"unknown key; allowed: {', '.join(allowed)}")


# ------------------------------------------------------------------------------------- loading
def load_sweep(path: Path | str, base_dir: Path | None = None) -> tuple[SweepConfig, LocatedYaml]:
    """Read and validate a sweep file's shape (axes and points are checked by sfhpc.sweep.expand). `base_dir`: what
    relative file references are relative to (default: the file's folder)."""
    doc = LocatedYaml(Path(path), base_dir)
    if not isinstance(doc.data, dict):
        raise doc.error((), "a sweep file must be a mapping with at least `name` and `stages`")
    allowed = list(SweepConfig.model_fields)
    for key in doc.data:
        if key not in SweepConfig.model_fields:
            raise unknown_key_error(doc, (key,), allowed)
    try:
        sweep = SweepConfig.model_validate(doc.data)
    except ValidationError as err:
        raise validation_error(doc, err) from None
    for stage in sweep.stages:
        if stage not in STAGE_KINDS:
            raise doc.error(("stages", stage), f"unknown stage; known stages: {', '.join(STAGE_KINDS)}")
    return sweep, doc


def load_job_spec(name: str, jobs_dir: Path = JOBS_DIR, sweep_folder: Path = Path()) -> JobSpec:
    """Load a stage's job file, with located errors like a sweep file: jobs/<name>.yaml for a plain name, or the
    file `name` is a path to (relative to `sweep_folder`); `name` is checked by check_file_reference first."""
    path = referenced_file(name, jobs_dir, sweep_folder)
    if not path.is_file():
        known = sorted(p.stem for p in jobs_dir.glob("*.yaml"))
        raise SweepError(path, None, "", f"no such job file; known jobs: {', '.join(known)}")
    doc = LocatedYaml(path)
    try:
        return JobSpec.model_validate(doc.data or {})
    except ValidationError as err:
        raise validation_error(doc, err) from None


def load_cluster_profile(sweep: SweepConfig, doc: LocatedYaml, profiles_dir: Path = PROFILES_DIR) -> ClusterProfile:
    """The sweep's cluster profile with the sweep's overrides on top: slurm_templates/profiles/<profile>.yaml for a
    plain name, or the .yaml file `profile` is a path to, relative to the sweep file. Errors in the profile are
    located in the profile file; errors in the overrides at the sweep's `cluster` keys."""
    overrides = dict(sweep.cluster)
    name = overrides.pop("profile", "default")
    try:
        if not isinstance(name, str):
            raise ValueError(f"got {describe(name)}; expected the name of a profile")
        path = referenced_file(check_file_reference(_one_line(name), "slurm_templates/profiles/",
                                                    "./site/mycluster.yaml"), profiles_dir, doc.base_dir)
    except ValueError as err:
        raise doc.error(("cluster", "profile"), str(err)) from None
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in profiles_dir.glob("*.yaml")))
        raise doc.error(("cluster", "profile"), f"no cluster profile {name!r} ({path} does not exist); profiles in "
                                                f"{profiles_dir}: {known}")
    profile_doc = LocatedYaml(path)
    try:
        base = ClusterProfile.model_validate(profile_doc.data or {})
    except ValidationError as err:
        raise validation_error(profile_doc, err) from None
    try:
        return ClusterProfile.model_validate({**base.model_dump(), **overrides})
    except ValidationError as err:
        raise validation_error(doc, err, ("cluster",)) from None

"""Typed, closed configuration: sweeps, stage parameters, job specs; YAML loading with located errors.

Everything here is login-node code: pydantic, yaml and numpy-free band checks only, never torch.
Every user mistake becomes a :class:`SweepError` that names the file, the line and the key.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
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
    n_images: int = Field(600, ge=20, description="simulated: images each subject saw")
    n_shared: int = Field(100, ge=10, description="simulated: shared (validation) images, each shown 3 times")
    noise_ceiling: dict[str, float] = Field(REFERENCE_NOISE_CEILING,
                                            description="simulated: mean noise ceiling (%) per ROI")
    seed: int = Field(0, ge=0, description="simulated: seed of the scenes and of every subject's encoding model")


class DataConfig(Closed):
    """The dataset every stage of a sweep uses: `synthetic`, the embedded default (sfhpc.data.synthetic), or
    `imagefolder`, an ImageNet-style class subset (sfhpc.data.imagefolder).

    For imagefolder, `n_classes` is filled in from the class-list file when the config is loaded (and must match
    it when given), so that every stage reading `data.n_classes` gets the class list's length; `root` and
    `classes_file` become absolute paths, so that jobs find them wherever they start and the resolved config
    beside each result says which files were read. Both must be readable where sweeps are expanded."""

    kind: Literal["synthetic", "imagefolder"] = "synthetic"
    image_size: int = Field(128, ge=32, le=1024, description="stored images' size in px; imagefolder: the centre "
                            "crop after resizing the shorter side to size * 256/224 (224 for ImageNet)")
    n_classes: int = Field(8, ge=2, description="synthetic: classes generated; imagefolder: filled in from "
                                                "classes_file (give it only to check it)")
    n_train: int = Field(2000, ge=1, description="synthetic only (imagefolder: all of train/, see max_per_class)")
    n_val: int = Field(400, ge=1, description="synthetic only (imagefolder: half of each class's val/ images)")
    n_test: int = Field(400, ge=1, description="synthetic only (imagefolder: the other half of val/)")
    seed: int = Field(0, ge=0, description="synthetic: seed of the images; imagefolder: seed of the val/test "
                                           "halves and of each split's order")
    root: str | None = Field(None, description="imagefolder: folder holding train/ and val/, each with one folder "
                                               "of images per class (ImageNet layout)")
    classes_file: str | None = Field(None, description="imagefolder: the classes used, one class folder per line "
                                                       "(label = line order), optionally followed by a readable "
                                                       "name; '#' starts a comment")
    max_per_class: int | None = Field(None, ge=2, description="imagefolder: at most this many images per class "
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
    """A validation error located at `key` (a model validator's own errors would point at the whole model)."""
    error = PydanticCustomError("value_error", "{error}", {"error": message})
    return ValidationError.from_exception_data("DataConfig", [InitErrorDetails(type=error, loc=(key,), input=value)])


# --------------------------------------------------------------------------------------- stages
class TrainParams(Closed):
    """Parameters of the train stage (SCIENCE.md sections 2 and 3). Any of them can be a sweep axis."""

    arch: Literal["small_resnet", "resnet18"] = "small_resnet"
    width: int = Field(16, ge=2, description="base width of small_resnet (stages use 1x, 2x, 4x, 8x)")
    blocks: tuple[int, ...] = Field((1, 1, 1, 1), min_length=4, max_length=4,
                                    description="BasicBlocks in each of the 4 small_resnet stages")
    band: Band = "none"
    lsf_sigma_px224: float = Field(1.5, gt=0, description="LSF blur sigma in px at 224 px")
    human_mu: float = Field(4.5, description="human channel centre = 1.75 * 2**mu c/img")
    human_s: float = Field(0.4246, gt=0, description="human channel log2 SD")
    human_floor: bool = Field(False, description="human channel with a gain floor instead of pure band-pass")
    alpha: float = Field(0.0, ge=0.0, le=1.0, description="neural co-training weight: L = (1-a) CE + a MSE")
    seed: int = Field(0, ge=0)
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    lr_step: int = Field(20, ge=1, description="StepLR step size in epochs")
    lr_gamma: float = Field(0.1, gt=0, le=1)
    augment: bool = Field(True, description="random crop (padding 1/16 of the size) and horizontal flip")
    augment_contrast_min: float = Field(1.0, gt=0, le=1, description="each training image's contrast is scaled "
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
    predictor_width: int = Field(16, ge=2, description="base width of small_resnet")
    predictor_epochs: int = Field(40, ge=1)
    predictor_batch_size: int = Field(200, ge=1)
    predictor_lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    predictor_weight_decay: float = Field(5e-4, ge=0)
    predictor_seed: int = Field(0, ge=0)

    @field_validator("subject")
    @classmethod
    def _known_subject(cls, subject: str) -> str:
        return known_subject(subject)


class RsaParams(Closed):
    """Similarity of a trained model's representational geometry to the subject's ROIs (SCIENCE.md section 6)."""

    rsa_subjects: tuple[str, ...] | None = Field(
        None, description="subjects whose ROIs each model is compared with; default: a guided model's own subject, "
                          "an unguided one every subject of the sweep's predictor stage (subj01 without one)")
    rsa_permutations: int = Field(1000, ge=0, description="image permutations of the significance test")
    rsa_seed: int = Field(0, ge=0)

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


class CbmParams(Closed):
    """Critical band masking of a trained model (SCIENCE.md section 4). Parameter names are prefixed `cbm_` so that
    they can be sweep axes beside the train stage's."""

    cbm_noise_sds: tuple[float, ...] = Field((0.0, 0.02, 0.04, 0.08, 0.16), min_length=2,
                                             description="noise SDs; the first must be 0 (the noise-free level)")
    cbm_criterion: float | Literal["midpoint"] = Field(
        0.5, description="accuracy at or below which a level counts as masked: a number (SCIENCE.md: 0.5), or "
                         "'midpoint' between chance and the model's noise-free accuracy (for weaker models)")
    cbm_images: int | None = Field(None, ge=1, description="test images used (default: all)")
    cbm_seed: int = Field(0, ge=0, description="seed of the masking noise")
    cbm_batch_size: int = Field(128, ge=1)

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


Epsilon = float | str


class AttackParams(Closed):
    """AutoAttack on a trained model's test images (SCIENCE.md section 5), split into shards (array tasks)."""

    attack_version: Literal["standard", "plus", "rand", "custom"] = "standard"
    attack_names: tuple[str, ...] | None = Field(None, description="attacks of version custom, e.g. [apgd-ce]")
    attack_eps: dict[str, tuple[Epsilon, ...]] = Field(
        {"Linf": ("1/255", "2/255", "4/255", "8/255")},
        description="epsilons per norm (Linf, L2, L1) in pixel units of [0, 1] images; '8/255' is allowed",
        validate_default=True)
    attack_shards: int | None = Field(None, ge=1, description="shards per model (default: the job file's)")
    attack_images: int | None = Field(None, ge=1, description="test images attacked (default: all)")
    attack_seed: int = Field(0, ge=0)
    attack_batch_size: int = Field(128, ge=1)
    attack_apgd_iterations: int | None = Field(None, ge=1, description="quick runs: APGD iterations (default 100)")
    attack_apgd_restarts: int | None = Field(None, ge=1, description="quick runs: APGD-CE restarts")
    attack_shard: int = Field(0, ge=0, description="set by sfhpc for each shard; not a sweep parameter")

    @field_validator("attack_eps")
    @classmethod
    def _fractions_to_numbers(cls, eps: dict[str, tuple[Epsilon, ...]]) -> dict[str, tuple[float, ...]]:
        return {norm: tuple(parse_epsilon(value) for value in values) for norm, values in eps.items()}

    def epsilons(self) -> dict[str, tuple[float, ...]]:
        return {norm: tuple(float(value) for value in values) for norm, values in self.attack_eps.items()}


def parse_epsilon(value: float | str) -> float:
    """8/255 written as a number or as the text '8/255'."""
    if isinstance(value, str):
        numerator, slash, denominator = value.partition("/")
        try:
            return float(numerator) / float(denominator) if slash else float(numerator)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"epsilon {value!r} is not a number or a fraction like '8/255'") from None
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

    nodes: int = Field(1, ge=1)
    tasks_per_node: int = Field(1, ge=1)
    cpus_per_task: int = Field(2, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    mem_gb: float = Field(8, gt=0)
    timeout_min: int = Field(60, ge=1)
    array_parallelism: int | None = Field(None, ge=1, description="%N throttle of the stage's arrays")
    max_requeues: int = Field(5, ge=0, description="times a job may requeue itself at its time limit")
    signal_delay_s: int = Field(90, ge=0, description="SLURM sends USR2 this long before the time limit: "
                                                      "the job checkpoints and requeues itself")


class ClusterProfile(Closed):
    """Site settings for SLURM (slurm_templates/profiles/<name>.yaml), overridable in a sweep's `cluster`."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gres: str | None = None
    setup: list[str] = Field([], description="shell lines run before the job, e.g. module loads")
    additional: dict[str, bool | int | str] = Field({}, description="other sbatch options, e.g. {exclude: node7}; "
                                                                   "true for a flag such as {hold: true}")


class JobSpec(Closed):
    """A stage's job file (jobs/<stage>.yaml): the module that runs it, its default resources and, for a sharded
    stage, how many shards each upstream point is split into."""

    entry: str
    resources: Resources = Resources()
    shards: int = Field(1, ge=1)
    expected_minutes: float | None = Field(None, gt=0, description="typical run time of one point, for the "
                                                                   "GPU- and CPU-hour estimate of `sweep expand`")

    @field_validator("entry")
    @classmethod
    def _entry_is_a_stage_module(cls, entry: str) -> str:
        if not re.fullmatch(r"sfhpc\.stages\.[a-z_]+", entry):
            raise ValueError(f"entry must be a module sfhpc.stages.<name>, got {entry!r}")
        return entry


class StageConfig(Closed):
    """One stage of a sweep: fixed parameters (validated per point), its job file and resource overrides."""

    job: str | None = Field(None, description="name of a jobs/*.yaml file; default: the stage name")
    params: dict[str, Any] = {}
    resources: dict[str, Any] = {}


class SweepConfig(Closed):
    """A sweep file. Axes come from `grid` (cartesian product), `zip` (lists that vary together) and
    `include` (extra points); `exclude` removes points matching a pattern."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    output: str | None = None
    executor: Executor = "auto"
    cluster: dict[str, Any] = Field({}, description="`profile` (slurm_templates/profiles) and overrides of it")
    data: DataConfig = DataConfig()
    grid: dict[str, list[Any]] = {}
    zip: dict[str, list[Any]] = {}
    include: list[dict[str, Any]] = []
    exclude: list[dict[str, Any]] = []
    stages: dict[str, StageConfig]

    @field_validator("zip")
    @classmethod
    def _zip_lists_align(cls, zipped: dict[str, list[Any]]) -> dict[str, list[Any]]:
        lengths = {key: len(values) for key, values in zipped.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"zip lists must have equal lengths, got {lengths}")
        return zipped


# --------------------------------------------------------------------------------------- errors
def format_key(path: KeyPath) -> str:
    """('stages', 'train', 'params', 'lr') -> 'stages.train.params.lr'; list indices as [i]."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class LocatedYaml:
    """A parsed YAML document plus the line of every key and list item, found from the composed node tree."""

    def __init__(self, path: Path):
        self.path = path
        self.lines: dict[KeyPath, int] = {}
        text = _read_text(path)
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
            self.data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            problem = getattr(err, "problem", None) or str(err)
            raise SweepError(path, mark.line + 1 if mark else None, "", f"not valid YAML: {problem}") from None
        if root is not None:
            self._index(root, ())

    def _index(self, node: yaml.Node, path: KeyPath) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
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


def explain_pydantic_error(error: dict[str, Any]) -> str:
    kind, context = error["type"], error.get("ctx", {})
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        return f"got {error['input']!r}; allowed: {context.get('expected')}"
    if kind == "value_error":
        return str(context.get("error", error["msg"]))
    return f"{error['msg'].lower()} (got {error['input']!r})" if "input" in error else error["msg"].lower()


def unknown_key_error(doc: LocatedYaml, path: KeyPath, allowed: list[str]) -> SweepError:
    return doc.error(path, f"unknown key; allowed: {', '.join(allowed)}")


# ------------------------------------------------------------------------------------- loading
def load_sweep(path: Path | str) -> tuple[SweepConfig, LocatedYaml]:
    """Read and validate a sweep file's shape (axes and points are checked by sfhpc.sweep.expand)."""
    doc = LocatedYaml(Path(path))
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


def load_job_spec(name: str, jobs_dir: Path = JOBS_DIR) -> JobSpec:
    """Load jobs/<name>.yaml, with located errors like a sweep file."""
    path = jobs_dir / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in jobs_dir.glob("*.yaml"))
        raise SweepError(path, None, "", f"no such job file; known jobs: {', '.join(known)}")
    doc = LocatedYaml(path)
    try:
        return JobSpec.model_validate(doc.data or {})
    except ValidationError as err:
        raise validation_error(doc, err) from None


def load_cluster_profile(sweep: SweepConfig, doc: LocatedYaml, profiles_dir: Path = PROFILES_DIR) -> ClusterProfile:
    """The sweep's cluster profile (slurm_templates/profiles/<profile>.yaml) with the sweep's overrides on top."""
    overrides = dict(sweep.cluster)
    name = overrides.pop("profile", "default")
    path = profiles_dir / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in profiles_dir.glob("*.yaml")))
        raise doc.error(("cluster", "profile"), f"no cluster profile {name!r} in {profiles_dir}; known: {known}")
    profile_doc = LocatedYaml(path)
    try:
        base = ClusterProfile.model_validate(profile_doc.data or {})
    except ValidationError as err:
        raise validation_error(profile_doc, err) from None
    try:
        return ClusterProfile.model_validate({**base.model_dump(), **overrides})
    except ValidationError as err:
        raise validation_error(doc, err, ("cluster",)) from None

"""Typed, closed configuration: sweeps, stage parameters, job specs; YAML loading with located errors.

Everything here is login-node code: pydantic, yaml and numpy-free band checks only, never torch.
Every user mistake becomes a :class:`SweepError` that names the file, the line and the key.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    Strict,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from sfhpc.errors import SweepError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
JOBS_DIR = PROJECT_ROOT / "jobs"
PROFILES_DIR = PROJECT_ROOT / "slurm_templates" / "profiles"

Executor = Literal["auto", "local", "slurm", "debug"]
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


# Training arithmetic: float32, or bfloat16 autocast (the forward pass and the loss; weights, optimizer state and
# every evaluation stay float32). On CPUs with AMX or AVX512-BF16, and on GPUs, bf16 trains about 2x faster.
Precision = Literal["float32", "bf16"]
PRECISION_HELP = ("training arithmetic: float32, or bf16 autocast of the forward pass and loss (weights, optimizer "
                  "and every evaluation stay float32; about 2x faster on CPUs with AMX/AVX512-BF16 and on GPUs)")

# How a training stage lays out and feeds its images (sfhpc.stages.device chooses per device; results record it).
# channels_last helps convolutions on GPUs with tensor cores; on CPUs it changes the convolution kernels, and so the
# results' last bits, for no gain measured here, so `auto` keeps CPUs contiguous.
MemoryFormat = Literal["auto", "channels_last", "contiguous"]
MEMORY_FORMAT_HELP = ("the memory layout of images and convolution weights: channels_last (NHWC), contiguous (NCHW), "
                      "or auto: channels_last on CUDA, contiguous on CPUs (whose results stay those of the plain "
                      "loop)")
# Batches a loader thread prepares ahead of the step: gathered from the (memory-mapped) image array, pinned on CUDA
# and copied without blocking. 0: gathered in the step's own thread. The same batches in the same order either way.
MAX_PREFETCH = 64


def _prefetch_value(value: Any) -> Any:
    # Before the union, whose own errors would name its branches ("constrained-int") in the error's location.
    if value == "auto" or (type(value) is int and 0 <= value <= MAX_PREFETCH):
        return value
    raise ValueError(f"got {describe(value)}; expected auto or a number of batches from 0 to {MAX_PREFETCH}")


Prefetch = Annotated[int | Literal["auto"], BeforeValidator(_prefetch_value)]
PREFETCH_HELP = ("training batches a loader thread prepares ahead of the step (gathered from the image array, in "
                 "pinned memory on CUDA, copied without blocking); 0: none, each batch gathered when the step needs "
                 "it; auto: 2 on CUDA, 0 on CPUs. The batches and their order are the same either way")


# --------------------------------------------------------------------------------------------- data
ROIS: tuple[str, ...] = ("V1", "V2", "V4", "VO", "PHC", "LO", "TO")  # hierarchy order (SCIENCE.md section 1)
SUBJECTS: tuple[str, ...] = tuple(f"subj{n:02d}" for n in range(1, 9))
# Reference subj01 mean noise ceilings (%), SCIENCE.md section 1: the simulated brain's defaults.
REFERENCE_NOISE_CEILING: dict[str, float] = {"V1": 31.1, "V2": 29.9, "V4": 31.8, "VO": 31.6, "PHC": 30.0,
                                             "LO": 29.3, "TO": 43.0}


# How the simulated brain's ROIs respond (sfhpc.data.simulated_nsd.roi_tuning).
Tuning = Literal["hierarchy", "coarse_above_v1", "coarse_category_above_v1"]


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
    tuning: Tuning = Field(
        "hierarchy", description="simulated: how the ROIs respond. hierarchy: tuning moves along the hierarchy from "
        "fine, local, oriented energy (V1) to coarse shape and category (TO); coarse_above_v1: a planted effect for "
        "positive controls, every ROI above V1 responds to the energy of the coarsest bands only (no category "
        "term); coarse_category_above_v1: the same, plus the category as the coarse bands alone show it (class "
        "evidence from the spectrum up to 4 c/img): checks that the pipeline sees a low-frequency shift that is "
        "there, not models of a brain")


# A CBM category's name, as a class list gives it: printable text on one line.
CategoryName = Annotated[str, Strict(), Field(min_length=1, max_length=200), AfterValidator(_one_line)]


class DataConfig(Closed):
    """The dataset every stage of a sweep uses: `synthetic`, the embedded default (sfhpc.data.synthetic), or
    `imagefolder`, an ImageNet-style class subset (sfhpc.data.imagefolder).

    For imagefolder, `root` and `classes_file` become absolute paths, so that jobs find them wherever they start and
    the resolved config beside each result says which files were read. Validating reads no file: a sweep's data is
    checked against its files once, where the sweep is loaded (`with_files_checked`), which fills in `n_classes`
    and `categories` from the class list, so that the resolved config beside every result records the categories
    CBM decided among. Synthetic classes are each their own category: `categories` stays unset and is left out of
    the config's dumps, which keep the point ids, data caches and checkpoints of existing synthetic runs."""

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
    class_cue: Float = Field(0.0, ge=0, le=1, description="synthetic: relative contrast of a grating inside each "
                             "shape whose orientation names the class (at a fifth of the image size in c/img): a "
                             "fine-frequency shortcut for positive controls, absent from the simulated brain's "
                             "scenes. 0 (the default): none")
    root: str | None = Field(None, description="imagefolder: folder holding train/ and val/, each with one folder "
                                               "of images per class (ImageNet layout)")
    classes_file: str | None = Field(None, description="imagefolder: the classes used, one class folder per line "
                                                       "(label = line order), optionally followed by a readable "
                                                       "name; '#' starts a comment")
    max_per_class: Int | None = Field(None, ge=2, description="imagefolder: at most this many images per class "
                                                              "from train/ and from val/ (quick runs; default all)")
    categories: tuple[CategoryName, ...] | None = Field(
        None, description="imagefolder: the critical-band-masking category of each class, in label order (CBM "
                          "decides among them: SCIENCE.md section 4), filled in from classes_file ('<folder> <name> "
                          "| <category>'; a class without one is its own category); give it only to check it. "
                          "Synthetic classes are each their own category")
    neural: NeuralConfig = NeuralConfig()

    @field_validator("root", "classes_file")
    @classmethod
    def _absolute(cls, path: str | None) -> str | None:
        return None if path is None else _absolute_path(path)

    @model_validator(mode="after")
    def _keys_match_kind(self) -> DataConfig:
        if self.kind == "imagefolder" and self.class_cue:
            raise _key_error("class_cue", "is only read by kind synthetic (kind is imagefolder)", self.class_cue)
        if self.kind == "imagefolder":
            for key, what in (("root", "the folder holding train/ and val/"), ("classes_file", "the class list")):
                if getattr(self, key) is None:
                    raise _key_error(key, f"kind imagefolder needs {key} ({what})", None)
        else:  # a forgotten `kind: imagefolder` would otherwise train on synthetic images without a word
            for key in ("root", "classes_file", "max_per_class", "categories"):
                if getattr(self, key) is not None:
                    raise _key_error(key, f"is only read by kind imagefolder (kind is {self.kind})", getattr(self, key))
        if self.categories is not None:
            self._check_categories(self.categories)
        return self

    def _check_categories(self, categories: tuple[str, ...]) -> None:
        """A category per class and at least 2 of them. No file is read: the class list is compared with them by
        `with_files_checked`."""
        if "n_classes" in self.model_fields_set and len(categories) != self.n_classes:
            raise _key_error("categories", f"names {len(categories)} categories, one per class, but n_classes is "
                                           f"{self.n_classes}", categories)
        if len(set(categories)) < 2:
            raise _key_error("categories", f"puts every class in the category {categories[0]!r}; CBM decides among "
                                           "at least 2 categories", categories)

    @model_serializer(mode="wrap")
    def _without_unset_categories(self, dump: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Unset (synthetic data, or an imagefolder whose files are not yet checked), `categories` is left out, so
        # that the dumps that name points, data caches and checkpoints stay what they were before it existed.
        dumped: dict[str, Any] = dump(self)
        if self.categories is None:
            dumped.pop("categories", None)
        if not self.class_cue:  # the same for a synthetic cue that is off
            dumped.pop("class_cue", None)
        return dumped

    def class_categories(self) -> tuple[str, ...]:
        """The CBM category of each class label: each synthetic class its own, named by its shape; an imagefolder's
        from `categories`, or, in a config written before they were recorded, from its class list."""
        if self.kind == "synthetic":
            from sfhpc.data.synthetic import CLASS_NAMES  # numpy, no torch

            return CLASS_NAMES[:self.n_classes]
        categories = self.categories if self.categories is not None else with_files_checked(self).categories
        assert categories is not None  # with_files_checked fills it in for imagefolder
        return categories


def _absolute_path(path: str) -> str:
    """``path`` with ~ expanded, relative to the current folder (symbolic links kept as written)."""
    return os.path.abspath(os.path.expanduser(path))


class DataFileError(ValueError):
    """A data config that its files contradict, at `key`."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def with_files_checked(data: DataConfig, skipped: list[str] | None = None) -> DataConfig:
    """`data` checked against the files it names, with what they say filled in: for imagefolder, `root` holds
    train/ and val/ and `classes_file` lists at least 2 classes in at least 2 CBM categories; `n_classes` and
    `categories` are taken from the class list (given ones must match it), so that every stage reading
    `data.n_classes` gets the list's length and every result's config records the categories CBM used.
    DataFileError (with the key at fault) otherwise. With a `skipped` list (planning: `sweep expand`), a file or
    folder that does not exist is not an error: the check is appended there and the rest goes on."""
    if data.kind != "imagefolder" or data.root is None or data.classes_file is None:
        return data
    if skipped is not None and not Path(data.classes_file).exists():
        skipped.append(f"data.classes_file: {data.classes_file} does not exist here (n_classes and categories unknown)")
        return data
    from sfhpc.data.imagefolder import (  # numpy and PIL, no torch
        ImageFolderError,
        check_root,
        class_categories,
        read_class_list,
    )

    try:
        entries = read_class_list(Path(data.classes_file))
    except ImageFolderError as err:
        raise DataFileError("classes_file", str(err)) from None
    count, categories = len(entries), class_categories(entries)
    if count < 2:
        raise DataFileError("classes_file", f"{data.classes_file} lists 1 class; a classifier needs at least 2")
    if len(set(categories)) < 2:
        raise DataFileError("classes_file", f"{data.classes_file} puts every class in the category "
                                            f"{categories[0]!r}; CBM decides among at least 2 categories")
    if "n_classes" in data.model_fields_set and data.n_classes != count:
        raise DataFileError("n_classes", f"is {data.n_classes}, but classes_file {data.classes_file} lists {count} "
                                         "classes; leave n_classes out for imagefolder (it is taken from the file)")
    if data.categories is not None and data.categories != categories:
        raise DataFileError("categories", f"is {list(data.categories)}, but classes_file {data.classes_file} gives "
                                          f"{list(categories)}; leave categories out (it is taken from the file)")
    if skipped is not None and not Path(data.root).exists():
        skipped.append(f"data.root: {data.root} does not exist here")
    else:
        try:
            check_root(Path(data.root))
        except ImageFolderError as err:
            raise DataFileError("root", str(err)) from None
    return data.model_copy(update={"n_classes": count, "categories": categories})


def _key_error(key: str, message: str, value: Any) -> ValidationError:
    """A validation error located at `key` (a validator's own errors would point at the whole model or field)."""
    error = PydanticCustomError("value_error", "{error}", {"error": message})
    return ValidationError.from_exception_data("Closed", [InitErrorDetails(type=error, loc=(key,), input=value)])


def known_subject(subject: str) -> str:
    """`subject`, if NSD has it; else a ValueError listing the subjects."""
    if subject not in SUBJECTS:
        raise ValueError(f"unknown subject {subject!r}; NSD subjects are {', '.join(SUBJECTS)}")
    return subject


# ----------------------------------------------------------------------------------- resources
MAX_SHARDS = 1000  # each shard is an array task of every trained point: the sweep's point cap does not bound them


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
    resources: dict[str, Any] = Field({}, description="defaults for every stage's resources on this cluster (e.g. "
                                      "{mem_gb: 2} where nodes are small), over the job files' and under a sweep "
                                      "stage's own `resources`")
    additional: dict[str, Annotated[bool | int | str, BeforeValidator(_sbatch_value)]] = Field(
        {}, description="other sbatch options by long name, e.g. {exclude: node7}; true for a flag such as "
                        "{hold: true}")

    @field_validator("resources")
    @classmethod
    def _resources_are_known(cls, resources: dict[str, Any]) -> dict[str, Any]:
        Resources.model_validate(resources)  # every key a resource, every value valid (errors located there)
        return resources

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
    def _entry_is_a_module_name(cls, entry: str) -> str:
        # Expansion checks that it is the module of the job's stage (sfhpc.stages.<name>, or a plugin's module).
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", entry):
            raise ValueError(f"entry must be a stage's module, such as sfhpc.stages.train, got {describe(entry)}")
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
                if not isinstance(key_node, yaml.ScalarNode):  # `{{}}`, `? [a, b]`: YAML allows it, a sweep never
                    raise SweepError(self.path, key_node.start_mark.line + 1, format_key(path),
                                     "a key that is a mapping or a list (keys are names; `{{}}` is a mapping used as a "
                                     "key: write `{}` for an empty mapping)")
                key = key_node.value
                if key in seen:
                    raise SweepError(self.path, key_node.start_mark.line + 1, format_key((*path, key)),
                                     "duplicate key (YAML would silently keep only the last one)")
                seen.add(key)
                key_path = (*path, key)
                self.lines[key_path] = key_node.start_mark.line + 1
                self._index(value_node, key_path)
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
    node, line = root, root.start_mark.line + 1
    where: KeyPath = ()
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


def explain_pydantic_error(error: ErrorDetails) -> str:
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
def load_sweep(path: Path | str, base_dir: Path | None = None, skipped: list[str] | None = None
               ) -> tuple[SweepConfig, LocatedYaml]:
    """Read and validate a sweep file's shape and its data files (stages, axes and points are checked by
    sfhpc.sweep.expand). `base_dir`: what relative file references are relative to (default: the file's folder).
    `skipped`: plan without the data files that are not here, listing the checks skipped (see with_files_checked)."""
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
    try:
        data = with_files_checked(sweep.data, skipped)
    except DataFileError as err:
        raise doc.error(("data", err.key), str(err)) from None
    return sweep.model_copy(update={"data": data}), doc


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

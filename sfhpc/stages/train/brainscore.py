"""`sfhpc export brainscore RUN POINT DIR`: one finished train point of a run as a Brain-Score vision model plugin
(brainscore_vision 2.4.2's layout, as its own plugins in brainscore_vision/models/ have it).

The plugin travels on its own: it holds a copy of the point's weights (weights/model.pt, its SHA-256 checked when
the model loads) and of the model code they were trained with (sfhpc_models/: the modules of sfhpc.models that
build the classifier, copied from the run's frozen code, RUN/code/<digest>/, with their imports made relative), so
it needs torch, torchvision and numpy, not sfhpc (whose own requirements, a pinned torch among them, would have to
be installed beside Brain-Score's). model.py builds the torch model with those alone and imports brainscore_vision
only to wrap it. Login-node code: no torch (layer names come from the architecture, and the plugin checks them
against the built model).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import string
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sfhpc.errors import RunError
from sfhpc.exports import copy_hashed
from sfhpc.job import PointConfig
from sfhpc.models.bands import BandParams
from sfhpc.results import check_result, now_iso, read_metrics
from sfhpc.rundir import MODEL_NAME, RunDir, manifest_points
from sfhpc.snapshot import CODE_DIR, PACKAGE
from sfhpc.stages.train import SPEC, TrainParams

BRAINSCORE_VERSION = "2.4.2"  # the brainscore-vision whose plugin layout this writes, and that the tests register in
TEMPLATES = Path(__file__).with_name("brainscore_plugin")
EXPORT_RECORD = "sfhpc-export.json"  # what was exported from where; also marks a folder as this command's to replace
WEIGHTS = "weights/model.pt"
MODEL_PACKAGE = "sfhpc_models"  # the plugin's copy of sfhpc.models
MODEL_MODULE = "classifier"  # the module of sfhpc.models that builds the model (with the modules it imports)
MODEL_BUILDER = "build_classifier"
# The keyword arguments model.py passes to it: ARCHITECTURE's (sfhpc.stages.common.build_model's), band_params and
# neural_dim.
PLUGIN_ARGUMENTS = ("arch", "n_classes", "band", "image_size", "width", "blocks", "band_params", "neural_dim")
# An identifier names the plugin's folder (a Python package: pytest imports its test.py only from a folder whose name is
# one), its region map file and its registry entry, inside Python quotes as it is.
IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,99}")
LITERAL_LINE = 80  # characters of a value in model.py that fit on its line
# Brain-Score's ventral-stream regions, in depth order; the default map commits each to one of the four ResNet stages.
REGIONS = ("V1", "V2", "V4", "IT")
# The study sfhpc implements, as SCIENCE.md cites it (surnames, year, arXiv id): nothing more is known here.
BIBTEX = """@misc{shao2026,
  author = {Shao and Ren and Wang and Isik and Beck},
  year = {2026},
  eprint = {2605.04443},
  archivePrefix = {arXiv}
}"""


@dataclass(frozen=True)
class PluginLayers:
    """The model's modules a Brain-Score region may be mapped to (names in Classifier.named_modules()): the stem's
    output, each of the four ResNet stages', the pooled features and, for a guided model, the neural head."""

    stem: str
    stages: tuple[str, str, str, str]
    pooled: str
    neural_head: str | None

    @property
    def names(self) -> list[str]:
        return [self.stem, *self.stages, self.pooled, *([self.neural_head] if self.neural_head else [])]

    def region_layer_map(self) -> dict[str, str]:
        """The default commitment: V1, V2, V4 and IT to the four stages, in depth order."""
        return dict(zip(REGIONS, self.stages, strict=True))


def plugin_layers(arch: str, guided: bool) -> PluginLayers:
    """The layers of an sfhpc classifier (sfhpc.models.classifier): the trunk is torchvision's ResNet-18 (resnet18) or
    a Sequential of stem conv, BN, ReLU, four stages, average pooling and flatten (small_resnet); `head` (the logits
    of the run's own classes) is left out. tests/test_brainscore_export.py checks the names on built models."""
    neural_head = "neural_head" if guided else None
    if arch == "resnet18":
        return PluginLayers("trunk.maxpool", ("trunk.layer1", "trunk.layer2", "trunk.layer3", "trunk.layer4"),
                            "trunk.avgpool", neural_head)
    return PluginLayers("trunk.2", ("trunk.3", "trunk.4", "trunk.5", "trunk.6"), "trunk.7", neural_head)


@dataclass(frozen=True)
class BrainScoreExport:
    """What `export_brainscore` wrote (also DIR/sfhpc-export.json)."""

    identifier: str
    folder: str
    run: str
    point: str  # "train/<point id>"
    exported: str
    files: list[str]  # relative to folder
    layers: list[str]
    region_layer_map: dict[str, str]
    behavioral_readout_layer: str
    image_size: int
    preprocessing: str
    weights_sha256: str
    model_code: str  # the folder of the run's sfhpc code the plugin's sfhpc_models/ was copied from
    git_sha: str
    brainscore_vision: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def export_brainscore(run: RunDir, point: str, folder: Path, identifier: str | None = None,
                      force: bool = False) -> BrainScoreExport:
    """Write train point `point` of `run` into `folder` as a Brain-Score model plugin, all at once (the plugin is
    written beside it and renamed into place). A RunError for a point that is not a finished train point, a folder
    that is a file or holds other files, an earlier export in it without `force`, or an identifier Brain-Score
    cannot take."""
    run = RunDir(run.path.resolve())
    manifest = run.read_manifest()
    point_id = train_point_id(run, manifest, point)
    config, params, attrs = finished_point(run, point_id)
    identifier = plugin_identifier(identifier, str(manifest.get("name") or run.path.name), point_id)
    folder = folder.expanduser().absolute()
    check_destination(folder, force)
    code = model_code_folder(run, attrs)
    partial = folder.parent / f".{folder.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)  # one this process left (its pid): no other writer's
    try:
        partial.mkdir(parents=True)
        export = write_plugin(partial, Origin(run, point_id, config, params, attrs, code), identifier, folder)
        install_folder(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return export


@dataclass(frozen=True)
class Origin:
    """Where a plugin's model comes from: a finished train point, its config and parameters, its result's attributes
    and the run's copy of the sfhpc code it ran."""

    run: RunDir
    point_id: str
    config: PointConfig
    params: TrainParams
    attrs: dict[str, Any]
    code: Path


def write_plugin(partial: Path, origin: Origin, identifier: str, folder: Path) -> BrainScoreExport:
    """Write the plugin into the empty folder `partial` (to become `folder`): the model code, the weights, the
    plugin's files and the export's record; the record."""
    params = origin.params
    layers = plugin_layers(params.arch, guided=params.alpha > 0)
    size = origin.config.data.image_size
    copy_model_code(origin.code, partial / MODEL_PACKAGE)
    sha256 = copy_hashed(origin.run.point_dir(SPEC.name, origin.point_id) / MODEL_NAME, partial / WEIGHTS)
    export = BrainScoreExport(
        identifier=identifier, folder=str(folder), run=str(origin.run.path), point=f"{SPEC.name}/{origin.point_id}",
        exported=now_iso(), files=[], layers=layers.names, region_layer_map=layers.region_layer_map(),
        behavioral_readout_layer=layers.pooled, image_size=size,
        preprocessing=(f"brainscore_vision's load_preprocess_images: each stimulus resized to {size} x {size} px, "
                       "pixels in [0, 1] (mean 0, SD 1: the model normalises them itself)"),
        weights_sha256=sha256, model_code=str(origin.code), git_sha=str(origin.attrs.get("git_sha", "unknown")),
        brainscore_vision=BRAINSCORE_VERSION)
    write_plugin_files(partial, export, architecture(params, origin.config), band_parameters(params), origin.attrs)
    export = replace(export, files=sorted([*plugin_files(partial), EXPORT_RECORD]))
    (partial / EXPORT_RECORD).write_text(json.dumps(export.to_json(), indent=1) + "\n")
    return export


# ------------------------------------------------------------------------------------------ the point
def train_point_id(run: RunDir, manifest: dict[str, Any], point: str) -> str:
    """The id of the run's train point `point` ("<id>" or "train/<id>"); a RunError naming the run's train points
    (or the train point a point of another stage evaluates) when it is not one."""
    stages = [stage["name"] for stage in manifest["plan"]["stages"]]
    if SPEC.name not in stages:
        raise RunError(f"{run.path} has no {SPEC.name} stage (its stages: {', '.join(stages)}); a Brain-Score "
                       f"plugin is made from a {SPEC.name} point's model")
    points = manifest_points(manifest)
    wanted = point.removeprefix(f"{SPEC.name}/")
    train = [entry["id"] for stage, entry in points if stage == SPEC.name]
    if wanted in train:
        return wanted
    for stage, entry in points:
        if point in (entry["id"], f"{stage}/{entry['id']}"):
            models = [up for up in entry["upstream"] if up.startswith(f"{SPEC.name}/")]
            evaluates = f"; it evaluates {models[0]}" if len(models) == 1 else ""
            raise RunError(f"{point} is a point of stage {stage} in {run.path}, not a {SPEC.name} point{evaluates}")
    shown = ", ".join(train[:5]) + (f", ... ({len(train)} in all)" if len(train) > 5 else "")
    raise RunError(f"no {SPEC.name} point {point} in {run.path}; its {SPEC.name} points: {shown}")


def finished_point(run: RunDir, point_id: str) -> tuple[PointConfig, TrainParams, dict[str, Any]]:
    """The config and parameters a finished train point ran with and its result's attributes; a RunError when it has
    no valid result, no weights or no config that this sfhpc reads."""
    point_dir = run.point_dir(SPEC.name, point_id)
    check = check_result(run.result_path(SPEC.name, point_id), point_id)
    if check.state != "ok":
        raise RunError(f"{SPEC.name} point {point_id} is not finished ({check.state}: {check.reason or 'no result'}); "
                       f"`sfhpc status {run.path}` says where it stands")
    if not (point_dir / MODEL_NAME).is_file():
        raise RunError(f"{point_dir / MODEL_NAME}: missing, though the point's result is there; rerun the point "
                       "(sfhpc sweep launch --force) to write its weights again")
    config_path = point_dir / "config.yaml"
    try:
        config = PointConfig.model_validate(yaml.safe_load(config_path.read_text()))
        params = TrainParams.model_validate(config.params)
    except (OSError, yaml.YAMLError, ValidationError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunError(f"cannot read the config {config_path} the point ran with: {reason}") from None
    _, attrs = read_metrics(run.result_path(SPEC.name, point_id))
    return config, params, attrs


def plugin_identifier(given: str | None, run_name: str, point_id: str) -> str:
    """The model's Brain-Score identifier: `given`, or `<run name>_<point id>` with every run of other characters than
    letters and digits made one '_' ('sfhpc_' before it unless it starts with a letter), cut to 100 characters
    (keeping the point id's hash at the end)."""
    if given is not None:
        if not IDENTIFIER.fullmatch(given):
            raise RunError(f"identifier {given!r}: give 1 to 100 letters, digits or '_', starting with a letter (it "
                           "names the plugin's folder, a Python package, its region map file and its registry entry)")
        return given
    derived = re.sub(r"[^A-Za-z0-9]+", "_", f"{run_name}_{point_id}").strip("_")
    derived = derived if derived[:1].isalpha() else f"sfhpc_{derived}"
    if len(derived) > 100:
        hash_part = point_id[-8:]
        derived = f"{derived[:100 - len(hash_part) - 1].rstrip('_')}_{hash_part}"
    return derived


def model_code_folder(run: RunDir, attrs: dict[str, Any]) -> Path:
    """The sfhpc package the point ran (its result's `sfhpc_source`: the run's frozen copy, RUN/code/<digest>/sfhpc),
    found in this run folder when the run was moved; a RunError when it is gone."""
    recorded = Path(str(attrs.get("sfhpc_source", "")))
    candidates = [recorded]
    if recorded.parent.parent.name == CODE_DIR:
        candidates.append(run.path / CODE_DIR / recorded.parent.name / PACKAGE)
    for folder in candidates:
        if (folder / "models" / f"{MODEL_MODULE}.py").is_file():
            return folder
    raise RunError(f"the model code the point ran ({recorded}, its result's sfhpc_source) is not there any more; "
                   "the plugin copies the code the weights were trained with")


# ------------------------------------------------------------------------------------------ the model code
def copy_model_code(code: Path, package: Path) -> list[str]:
    """Copy sfhpc.models.classifier and the sfhpc.models modules it imports, transitively, from the run's code into
    `package`, their `sfhpc.models` imports made relative; their names. A RunError when one imports another part of
    sfhpc (the plugin would need sfhpc) or its build_classifier lacks a parameter the plugin passes."""
    source = code / "models"
    todo, texts = [MODEL_MODULE], {}
    while todo:
        name = todo.pop()
        if name not in texts:
            texts[name] = (source / f"{name}.py").read_text()
            todo += models_imported(ast.parse(texts[name]), source)
    check_builder(ast.parse(texts[MODEL_MODULE]), source / f"{MODEL_MODULE}.py")
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""sfhpc.models as the run\'s code held it, for ../model.py."""\n')
    for name, text in sorted(texts.items()):
        header = f"# sfhpc.models.{name} as the run's code held it, its sfhpc.models imports made relative\n"
        (package / f"{name}.py").write_text(header + relative_model_imports(text, source / f"{name}.py"))
    return sorted(texts)


def relative_model_imports(text: str, path: Path) -> str:
    """`text` with `from sfhpc.models[.X] import` made `from .[X] import`; a RunError naming any other import of
    sfhpc that remains."""
    rewritten = re.sub(r"^(\s*)from sfhpc\.models\.(\w+) import ", r"\1from .\2 import ", text, flags=re.M)
    rewritten = re.sub(r"^(\s*)from sfhpc\.models import ", r"\1from . import ", rewritten, flags=re.M)
    for node in ast.walk(ast.parse(rewritten)):
        modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                   else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        for module in modules:
            if module == PACKAGE or module.startswith(f"{PACKAGE}."):
                raise RunError(f"{path} imports {module}: the plugin carries sfhpc.models alone, so it cannot build "
                               "this model without sfhpc")
    return rewritten


def models_imported(tree: ast.Module, source: Path) -> list[str]:
    """The sfhpc.models modules an (original) module imports; a RunError for one that is not in `source`."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module == f"{PACKAGE}.models":
                names += [alias.name for alias in node.names]
            elif node.module.startswith(f"{PACKAGE}.models."):
                names.append(node.module.removeprefix(f"{PACKAGE}.models."))
    for name in names:
        if not (source / f"{name}.py").is_file():
            raise RunError(f"{source}: the model code imports sfhpc.models.{name}, which is not a module there")
    return names


def check_builder(tree: ast.Module, path: Path) -> None:
    """The run's build_classifier takes every argument the plugin's model.py passes."""
    builders = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == MODEL_BUILDER]
    if not builders:
        raise RunError(f"{path} has no {MODEL_BUILDER}: code older than this export can build models from")
    arguments = builders[0].args
    taken = {arg.arg for arg in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]}
    missing = [name for name in PLUGIN_ARGUMENTS if name not in taken]
    if missing:
        raise RunError(f"{path}: its {MODEL_BUILDER} takes no {', '.join(missing)}: code older than this export can "
                       "build models from")



def architecture(params: TrainParams, config: PointConfig) -> dict[str, Any]:
    """build_classifier's arguments that say what model the point trained, as sfhpc.stages.common.build_model passes
    them (band_params and neural_dim apart)."""
    return {"arch": params.arch, "n_classes": config.data.n_classes, "band": params.band,
            "image_size": config.data.image_size, "width": params.width, "blocks": tuple(params.blocks)}


def band_parameters(params: TrainParams) -> dict[str, Any]:
    """The point's spectral front-end parameters: BandParams' fields, which TrainParams has under the same names."""
    return {field.name: getattr(params, field.name) for field in fields(BandParams)}


# ------------------------------------------------------------------------------------------ the files
def write_plugin_files(folder: Path, export: BrainScoreExport, architecture: dict[str, Any],
                       band_params: dict[str, Any], attrs: dict[str, Any]) -> None:
    """__init__.py (the registration), model.py, test.py, requirements.txt and the region-to-layer map."""
    values = {
        "identifier": export.identifier, "identifier_literal": repr(export.identifier),
        "run_literal": repr(export.run), "point_literal": repr(export.point), "image_size": str(export.image_size),
        "architecture": literal(architecture), "band_params": literal(band_params), "layers": literal(export.layers),
        "layer_notes": layer_notes(export), "readout": repr(export.behavioral_readout_layer),
        "weights_sha256": repr(export.weights_sha256), "bibtex": BIBTEX,
    }
    for name in ("__init__.py", "model.py", "test.py"):
        text = string.Template((TEMPLATES / f"{name}.tmpl").read_text()).substitute(values)
        (folder / name).write_text(text)
    (folder / "region_layer_map").mkdir()
    (folder / "region_layer_map" / f"{export.identifier}.json").write_text(json.dumps(export.region_layer_map) + "\n")
    (folder / "requirements.txt").write_text(requirements(attrs))


def literal(value: dict[str, Any] | list[str]) -> str:
    """`value` as a Python literal; one item a line when it is longer than LITERAL_LINE."""
    if len(repr(value)) <= LITERAL_LINE:
        return repr(value)
    if isinstance(value, dict):
        return "{\n" + "".join(f"    {key!r}: {item!r},\n" for key, item in value.items()) + "}"
    return "[\n" + "".join(f"    {item!r},\n" for item in value) + "]"


def layer_notes(export: BrainScoreExport) -> str:
    """What LAYERS holds, for a comment in model.py."""
    neural = ",\n# then the neural head (the guided model's fMRI predictions)" if "neural_head" in export.layers else ""
    return f"the stem, the four ResNet stages, the pooled features{neural}"


def requirements(attrs: dict[str, Any]) -> str:
    """requirements.txt: what sfhpc_models/ and model.py import; which versions the run trained with, as a comment."""
    trained = ", ".join(f"{name} {attrs[key]}" for name, key in (("torch", "torch_version"), ("numpy", "numpy_version"))
                        if key in attrs)
    return (f"# sfhpc_models/ and model.py import these (not sfhpc itself); the run trained with {trained or 'them'}\n"
            "torch\ntorchvision\nnumpy\n")


def plugin_files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


# ------------------------------------------------------------------------------------------ the folder
def check_destination(folder: Path, force: bool) -> None:
    """`folder` may receive the plugin: it does not exist, is empty, or (with `force`) holds an earlier export."""
    if folder.exists() and not folder.is_dir():
        raise RunError(f"{folder} is a file; give a new or empty folder for the plugin")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    if not (folder / EXPORT_RECORD).is_file():
        raise RunError(f"{folder} is not empty and holds no Brain-Score plugin exported by sfhpc ({EXPORT_RECORD}); "
                       "give a new or empty folder")
    if not force:
        raise RunError(f"{folder} holds an earlier export; pass --force to replace it")


def install_folder(partial: Path, folder: Path) -> None:
    """Put the complete plugin `partial` where `folder` is: an empty folder is removed first, an earlier export is
    moved aside and deleted only once the new one is in place."""
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    if not folder.exists():
        partial.rename(folder)
        return
    aside = folder.parent / f".{folder.name}.replaced-{os.getpid()}"
    folder.rename(aside)
    try:
        partial.rename(folder)
    except OSError:
        aside.rename(folder)
        raise
    shutil.rmtree(aside)

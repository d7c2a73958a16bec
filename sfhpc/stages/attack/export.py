"""`sfhpc export robustbench RUN DIR`: a RobustBench model-info file for every attacked model and threat model (norm
and epsilon), with an index (robustbench.json).

RobustBench (github.com/RobustBench/robustbench; `robustbench` 1.1.1 on PyPI) describes each model of a leaderboard
in a JSON file, model_info/<dataset>/<threat model>/<model>.json, which its leaderboard page and
`list_available_models` read. Every Linf and L2 file carries link, name, authors, additional_data (bool),
number_forward_passes (int), dataset, venue, architecture, eps ("8/255", "0.5"), clean_acc, reported and
autoattack_acc, accuracies in percent as text ("59.53", "0.0": its own writer's `str(round(100 * accuracy, 2))`);
some add footnote, unreliable and external. A leaderboard has one epsilon per threat model; an sfhpc attack has a
grid of them, so each (norm, eps) gets a folder of its own, one file per model in it:
DIR/<dataset>/<norm>/eps=<eps>/<model point id>.json (a run whose attack points have axes of their own, such as
attack_seed, adds a folder per variant below the epsilon's).

What the files never pretend:
- `autoattack_acc` is written only for AutoAttack standard at its own iterations and restarts, the attack RobustBench
  runs (through the same pyautoattack package). Any other attack's number is `robust_acc`, and the footnote and
  `sfhpc.attack` say which attack it was.
- `dataset` names the data the model was trained and attacked on (sfhpc-synthetic, imagefolder), never a RobustBench
  dataset, and the footnote says that the numbers are not comparable with RobustBench's leaderboards.
- `reported` (the accuracy a paper claims) is empty; `unreliable` and `external` are left out: sfhpc cannot know them.
The rest of what a result records (run, points, attack settings, both units of eps, image count) is under `sfhpc`,
a key RobustBench's readers do not look at. A model whose attack shards are not all valid, or do not merge, gets no
file and is listed as a problem, never skipped quietly. Login-node code: no torch; h5py when shards are read.
"""

from __future__ import annotations

import json
import shlex
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from sfhpc.errors import RunError
from sfhpc.evaluation.attack import AttackSettings
from sfhpc.exports import ExportProblem, export_folder
from sfhpc.report.model import variant_label, variant_labels, variant_name
from sfhpc.results import atomic_write, check_result, now_iso, read_metrics
from sfhpc.rundir import RunDir, manifest_points
from sfhpc.stages.attack import EPS_UNIT_ATTR, SETTINGS_ATTR, SPEC
from sfhpc.stages.attack.report import MergedAttack, format_eps, merge_attack_shards
from sfhpc.sweep import point_id

INDEX_NAME = "robustbench.json"
MODELS_STAGE = SPEC.upstream[0]  # the stage whose points the attack evaluates: the models
AUTOATTACK_FIELD = "autoattack_acc"  # RobustBench's: robust accuracy under AutoAttack standard
OTHER_ATTACK_FIELD = "robust_acc"  # sfhpc's: robust accuracy under any other attack
SFHPC_FIELD = "sfhpc"  # what RobustBench has no field for
SYNTHETIC_DATASET = "sfhpc-synthetic"  # sfhpc's embedded synthetic images (sfhpc.data.synthetic)


@dataclass(frozen=True)
class AttackedModel:
    """One model's attack points of one variant (the attack axes the model lacks, such as attack_seed), as the
    manifest lists them."""

    model: dict[str, Any]  # the models stage's point: id, labels, params
    variant: dict[str, Any]
    shards: tuple[str, ...]  # attack point ids

    def where(self) -> str:
        """`train/<point id> (attack_seed=1)`: the model and variant, as the report names them."""
        return variant_label(f"{MODELS_STAGE}/{self.model['id']}", variant_name(self.variant))


@dataclass(frozen=True)
class ModelAttack:
    """What a model's attack shards say together: accuracies merged over all of them, and the attack of each
    (norm, eps)."""

    merged: MergedAttack
    settings: dict[tuple[str, float], AttackSettings]  # (norm, pixel eps) -> the attack it ran
    eps_unit: str | None  # the unit the sweep gave the epsilons in (None: a result from before it was recorded)
    pyautoattack_version: str


@dataclass(frozen=True)
class ModelInfoFile:
    """One file written, as the index lists it."""

    file: str  # its path in the export folder
    model: str  # "train/<point id>"
    variant: str
    norm: str
    eps: str  # as the file gives it: "8/255" (Linf), "0.5"
    clean_acc: str
    accuracy_field: str  # autoattack_acc, or robust_acc for any other attack
    robust_acc: str
    attack: str
    images: int


@dataclass(frozen=True)
class RobustBenchExport:
    """What `export_robustbench` wrote into `folder` and what it could not."""

    run: str
    folder: str
    index: str
    exported: str
    dataset: str
    files: list[ModelInfoFile]
    problems: list[ExportProblem]  # states: incomplete (a shard without a valid result) | corrupt (do not merge)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def export_robustbench(run: RunDir, folder: Path) -> RobustBenchExport:
    """Write a RobustBench model-info file for every (model, norm, eps) that `run`'s attack measured into `folder`
    (made when missing), and the index there. A RunError when the run has no attack stage, when no model has all its
    attack shards valid, or when `folder` is a file. Paths in the index and the files are absolute."""
    run = RunDir(run.path.resolve())
    manifest = run.read_manifest()
    attacked: list[tuple[AttackedModel, ModelAttack]] = []
    problems: list[ExportProblem] = []
    models = attacked_models(run, manifest)
    for model in models:
        found = model_attack(run, model)
        if isinstance(found, ExportProblem):
            problems.append(found)
        else:
            attacked.append((model, found))
    if not attacked:
        states = Counter(problem.state for problem in problems)
        raise RunError(f"nothing to export: none of the {len(models)} model attacks (a model, or a variant of its "
                       f"attack) in {run.path} has all its {SPEC.name} shards valid "
                       f"({', '.join(f'{n} {state}' for state, n in states.items())}); "
                       f"`sfhpc status {shlex.quote(str(run.path))}` says which points are done")
    folder = export_folder(folder).resolve()
    sweep, data = manifest["plan"]["sweep"]["name"], manifest["plan"]["sweep"]["data"]
    files = []
    for model, attack in attacked:
        for norm, eps in attack.merged.robust_accuracy:
            files.append(write_model_info(folder, model_info(run, sweep, data, model, attack, norm, eps), model))
    export = RobustBenchExport(run=str(run.path), folder=str(folder), index=str(folder / INDEX_NAME),
                               exported=now_iso(), dataset=dataset_name(data), files=files, problems=problems)
    atomic_write(folder / INDEX_NAME, lambda tmp: tmp.write_text(json.dumps(export.to_json(), indent=1) + "\n"))
    return export


def attacked_models(run: RunDir, manifest: dict[str, Any]) -> list[AttackedModel]:
    """Every model's attack points, grouped by model and variant, in launch order; a RunError naming the run's
    stages when it has no attack stage."""
    stages = [stage["name"] for stage in manifest["plan"]["stages"]]
    if SPEC.name not in stages:
        raise RunError(f"{run.path} has no {SPEC.name} stage (its stages: {', '.join(stages)}); RobustBench files "
                       f"come from {SPEC.name} points")
    points = manifest_points(manifest)
    models = {point["id"]: point for stage, point in points if stage == MODELS_STAGE}
    groups: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any], list[str]]] = {}
    for stage, point in points:
        if stage == SPEC.name:
            model = models[evaluated_model(point)]
            variant = variant_labels(point["labels"], model["labels"])
            groups.setdefault((model["id"], variant_name(variant)), (model, variant, []))[2].append(point["id"])
    return [AttackedModel(model, variant, tuple(shards)) for model, variant, shards in groups.values()]


def evaluated_model(point: dict[str, Any]) -> str:
    """The id of the model an attack point evaluates: its one upstream point (`train/<id>`)."""
    (upstream,) = point["upstream"]
    return str(upstream).split("/", 1)[1]


def model_attack(run: RunDir, model: AttackedModel) -> ModelAttack | ExportProblem:
    """A model's attack, merged over its shards; the problem when a shard has no valid result or they do not
    merge (shards that do not make one whole test set, or were attacked with different settings)."""
    paths, records, bad = [], [], []
    for point in model.shards:
        path = run.result_path(SPEC.name, point)
        check = check_result(path, point)
        if check.state == "ok":
            paths.append(path)
            records.append(read_metrics(path)[1])
        else:
            bad.append(f"{point}: {check.state}" + (f" ({check.reason})" if check.reason else ""))
    if bad:
        return ExportProblem(model.where(), "incomplete", f"{len(bad)} of {len(model.shards)} {SPEC.name} shards "
                                                          f"without a valid result ({'; '.join(bad)}); no file for "
                                                          "this model")
    try:
        merged, settings = merge_attack_shards(paths), shard_settings(records)
    except (ValueError, KeyError, TypeError, OSError) as err:
        return ExportProblem(model.where(), "corrupt", f"shards do not merge: {err}; no file for this model")
    versions = sorted({str(record.get("pyautoattack_version", "unknown")) for record in records})
    return ModelAttack(merged, settings, records[0].get(EPS_UNIT_ATTR), ", ".join(versions))


def shard_settings(records: list[dict[str, Any]]) -> dict[tuple[str, float], AttackSettings]:
    """The attack of each (norm, pixel eps), as the shards' results record it (their SETTINGS_ATTR); a ValueError
    when they record different ones."""
    recorded = [json.loads(record[SETTINGS_ATTR]) for record in records]
    if any(settings != recorded[0] for settings in recorded[1:]):
        raise ValueError("its shards were attacked with different settings")
    names = {field.name for field in fields(AttackSettings)}
    return {(entry["norm"], float(entry["eps"])): AttackSettings(**{k: v for k, v in entry.items() if k in names})
            for entry in recorded[0]}


def is_autoattack_standard(settings: AttackSettings) -> bool:
    """AutoAttack as RobustBench runs it: version standard, with its own attacks, iterations and restarts."""
    return (settings.version == "standard" and not settings.attacks and settings.apgd_iterations is None
            and settings.apgd_restarts is None)


def attack_description(settings: AttackSettings) -> str:
    """What ran, in words: 'AutoAttack standard', 'AutoAttack custom: apgd-ce; APGD 2 iterations (AutoAttack's:
    100)'."""
    parts = [f"AutoAttack {settings.version}" + (f": {', '.join(settings.attacks)}" if settings.attacks else "")]
    if settings.apgd_iterations is not None:
        parts.append(f"APGD {settings.apgd_iterations} iterations (AutoAttack's: 100)")
    if settings.apgd_restarts is not None:
        parts.append(f"APGD-CE {settings.apgd_restarts} restarts (not the version's own)")
    return "; ".join(parts)


def percent(fraction: float) -> str:
    """An accuracy as RobustBench's files give it: percent, as text, rounded to 2 decimals ('59.53', '0.0'); its
    own writer (robustbench.utils.update_json) makes it so."""
    return str(round(fraction * 100, 2))


def dataset_name(data: dict[str, Any]) -> str:
    """The `dataset` of a file: what the models were trained and attacked on, never a RobustBench dataset's name."""
    return SYNTHETIC_DATASET if data["kind"] == "synthetic" else str(data["kind"])


def architecture(params: dict[str, Any]) -> str:
    """`ResNet-18`, `small ResNet (width 16, blocks 1-1-1-1)`, and the spectral front-end a band adds."""
    if params["arch"] == "resnet18":
        network = "ResNet-18"
    else:
        network = f"small ResNet (width {params['width']}, blocks {'-'.join(map(str, params['blocks']))})"
    band = params.get("band", "none")
    return network if band == "none" else f"{network} behind a fixed {band} spectral filter"


def additional_data(params: dict[str, Any]) -> list[str]:
    """What a model learnt from beyond its labelled training images (RobustBench's `additional_data`), in words."""
    reasons = []
    if params.get("pretrained"):
        reasons.append(f"initialised from pretrained weights ({params['pretrained']})")
    if params.get("alpha", 0) > 0:
        reasons.append(f"neurally guided (alpha {params['alpha']}): also trained on a predictor's outputs, the "
                       "predictor fitted to fMRI responses")
    return reasons


def model_info(run: RunDir, sweep: str, data: dict[str, Any], model: AttackedModel, attack: ModelAttack, norm: str,
               eps: float) -> dict[str, Any]:
    """The model-info file of one model (and variant) at one threat model (norm, pixel eps): RobustBench's fields in
    its order, then what sfhpc adds under `sfhpc`."""
    merged, settings = attack.merged, attack.settings[(norm, eps)]
    standard = is_autoattack_standard(settings)
    eps_text, description = format_eps(norm, eps, exact=True), attack_description(settings)
    params, dataset = model.model["params"], dataset_name(data)
    reasons = additional_data(params)
    robust, eps_normalized = merged.robust_accuracy[(norm, eps)], merged.eps_normalized.get((norm, eps))
    return {
        "link": run.point_dir(MODELS_STAGE, model.model["id"]).as_uri(),
        "name": f"{sweep}: {model.where()}",
        "authors": "",
        "additional_data": bool(reasons),
        "number_forward_passes": 1,  # the attack refuses a randomized model (sfhpc.evaluation.attack)
        "dataset": dataset,
        "venue": "N/A",
        "architecture": architecture(params),
        "eps": eps_text,
        "clean_acc": percent(merged.clean_accuracy),
        "reported": "",
        AUTOATTACK_FIELD if standard else OTHER_ATTACK_FIELD: percent(robust),
        "footnote": footnote(dataset, description, standard, merged.images, eps_text, eps_normalized),
        SFHPC_FIELD: {
            "run": str(run.path), "sweep": sweep, "model": f"{MODELS_STAGE}/{model.model['id']}",
            "labels": model.model["labels"], "variant": model.variant,
            "attack_points": [f"{SPEC.name}/{point}" for point in model.shards],
            "attack": description, "autoattack_standard": standard,
            "attack_settings": {k: v for k, v in asdict(settings).items() if k not in ("norm", "eps")},
            "pyautoattack_version": attack.pyautoattack_version,
            "norm": norm, "eps": eps, "eps_normalized": eps_normalized,
            "eps_sd": merged.eps_sd, "eps_unit": attack.eps_unit,
            "images": merged.images, "clean_accuracy": merged.clean_accuracy, "robust_accuracy": robust,
            "data": {k: v for k, v in data.items() if k != "neural"}, "additional_data": reasons,
        },
    }


def footnote(dataset: str, attack: str, standard: bool, images: int, eps: str, eps_normalized: float | None) -> str:
    """What a reader of a RobustBench leaderboard must know: not its dataset, which attack on how many images, and the
    unit of eps."""
    measured = (f"{AUTOATTACK_FIELD}: AutoAttack standard on {images} test images" if standard else
                f"{OTHER_ATTACK_FIELD}: robust accuracy on {images} test images under {attack}; not AutoAttack "
                f"standard, so not {AUTOATTACK_FIELD}")
    unit = "" if eps_normalized is None else f" ({eps_normalized:.3g} in the model's input-normalisation units)"
    return (f"An sfhpc model trained and attacked on {dataset}, not on a RobustBench dataset: its numbers are not "
            f"comparable with RobustBench's leaderboards. {measured}. eps {eps} in pixels of [0, 1] images{unit}.")


def model_info_path(info: dict[str, Any], model: AttackedModel) -> Path:
    """Where a file goes in the export folder: <dataset>/<norm>/eps=<eps>/[<variant>/]<model point id>.json, one
    folder per threat model as RobustBench's leaderboards have (eps 8/255 as eps=8_255)."""
    extra = info[SFHPC_FIELD]
    folder = Path(info["dataset"], extra["norm"], f"eps={info['eps'].replace('/', '_')}")
    if model.variant:  # readable and hashed, as a point id: a valid folder name, whatever the labels hold
        folder /= point_id(SPEC.name, model.variant, tuple(model.variant), model.variant)
    return folder / f"{model.model['id']}.json"


def write_model_info(folder: Path, info: dict[str, Any], model: AttackedModel) -> ModelInfoFile:
    """Write one file atomically (indented as RobustBench's are) and say what it holds."""
    path = model_info_path(info, model)
    atomic_write(folder / path, lambda tmp: tmp.write_text(json.dumps(info, indent=2) + "\n"))
    field = AUTOATTACK_FIELD if AUTOATTACK_FIELD in info else OTHER_ATTACK_FIELD
    extra = info[SFHPC_FIELD]
    return ModelInfoFile(file=str(path), model=extra["model"], variant=variant_name(model.variant),
                         norm=extra["norm"], eps=info["eps"], clean_acc=info["clean_acc"], accuracy_field=field,
                         robust_acc=info[field], attack=extra["attack"], images=extra["images"])

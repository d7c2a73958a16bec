"""`sfhpc export brainscore RUN POINT DIR`: a trained point as a Brain-Score vision model plugin. A tiny guided sweep
(a predictor, an unguided and a guided model behind the LSF front-end) is launched on the local executor; the
plugins exported from it are imported here without brainscore_vision (their model.py builds the model with torch
alone) and compared with sfhpc's own models, and, where `make brainscore-env` made Brain-Score's environment, copied
into its brainscore_vision/models/ and tested there by their own test.py (registration, region map, preprocessing,
activations, bibtex; scoring a benchmark needs Brain-Score's data, which cannot be downloaded here)."""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from test_login_node import heavy_modules_after
from test_report_runs import make_run
from typer.testing import CliRunner

from sfhpc.cli import app
from sfhpc.errors import RunError
from sfhpc.models.classifier import build_classifier
from sfhpc.rundir import MODEL_NAME, RunDir, manifest_points
from sfhpc.stages.common import load_trained
from sfhpc.stages.train.brainscore import (
    BIBTEX,
    EXPORT_RECORD,
    REGIONS,
    plugin_identifier,
    plugin_layers,
    relative_model_imports,
)

SWEEP = """\
name: bs
executor: local
data: {image_size: 32, n_classes: 4, n_train: 64, n_val: 16, n_test: 16, neural: {n_images: 40, n_shared: 12}}
grid:
  band: [lsf]
  alpha: [0, 0.5]
  roi: [V1]
  seed: [0]
stages:
  predictor: {params: {predictor_width: 4, predictor_epochs: 1, predictor_batch_size: 16}}
  train: {params: {width: 4, epochs: 1, batch_size: 32}}
"""
ROOT = Path(__file__).resolve().parents[1]
BRAINSCORE_ENV = ROOT / ".venv-brainscore"
PLUGIN_FILES = ["__init__.py", "model.py", "requirements.txt", EXPORT_RECORD, "sfhpc_models/__init__.py",
                "sfhpc_models/bands.py", "sfhpc_models/classifier.py", "sfhpc_models/normalization.py",
                "sfhpc_models/spectral.py", "test.py", "weights/model.pt"]
runner = CliRunner()


def sfhpc(*args, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "400"})
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception  # no traceback
    return result


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunDir:
    """A launched run: a V1 predictor, an unguided and a guided (alpha 0.5) model, 1 epoch on 32 px images."""
    folder = tmp_path_factory.mktemp("brainscore") / "lab's runs"
    folder.mkdir()
    (folder / "bs.yaml").write_text(SWEEP)
    sfhpc("sweep", "launch", folder / "bs.yaml", "--output", folder / "runs" / "bs", "--parallel", "1")
    return RunDir(folder / "runs" / "bs")


def train_point(run: RunDir, guided: bool) -> str:
    (point,) = [entry["id"] for stage, entry in manifest_points(run.read_manifest())
                if stage == "train" and (entry["params"]["alpha"] > 0) == guided]
    return point


@pytest.fixture(scope="module")
def plugins(run: RunDir, tmp_path_factory) -> dict[bool, Path]:
    """guided -> the plugin folder exported from that train point (named by its identifier, as Brain-Score's are)."""
    out = tmp_path_factory.mktemp("plugins")
    folders = {}
    for guided in (False, True):
        point = train_point(run, guided)
        folder = out / plugin_identifier(None, "bs", point)
        sfhpc("export", "brainscore", run.path, f"train/{point}", folder)
        folders[guided] = folder
    return folders


def plugin_package(folder: Path) -> str:
    """The name the plugin in `folder` is imported under here: one per folder."""
    return f"plugin_{hashlib.sha1(str(folder).encode()).hexdigest()[:12]}"


def plugin_model(folder: Path) -> types.ModuleType:
    """The plugin's model.py, imported as a submodule of its folder without running its __init__.py (which registers
    it with brainscore_vision, not installed here)."""
    package = plugin_package(folder)
    if package not in sys.modules:
        parent = types.ModuleType(package)
        parent.__path__ = [str(folder)]
        sys.modules[package] = parent
    return importlib.import_module(f"{package}.model")


def record_outputs(model: torch.nn.Module, layers: list[str]) -> dict[str, torch.Tensor]:
    """The outputs of these modules in the model's next forward pass, in the order they are computed (filled by
    forward hooks, which return None: a hook's return value would replace the output)."""
    outputs: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    for layer in layers:
        modules[layer].register_forward_hook(lambda _m, _i, output, layer=layer: outputs.__setitem__(layer, output))
    return outputs


def record(folder: Path) -> dict:
    return json.loads((folder / EXPORT_RECORD).read_text())


# ------------------------------------------------------------------------------------------ the model
@pytest.mark.parametrize("guided", [False, True], ids=["unguided", "guided"])
def test_the_plugin_builds_the_runs_model_with_its_trained_weights(run, plugins, guided):
    module = plugin_model(plugins[guided])
    model = module.build_model()
    reference, _ = load_trained(run.path, f"train/{train_point(run, guided)}")
    images = torch.rand(3, 3, module.IMAGE_SIZE, module.IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(images), reference(images))
        assert torch.equal(model.features(images), reference.features(images))
        if guided:
            assert torch.equal(model(images, with_neural=True)[1], reference(images, with_neural=True)[1])
    assert not model.training
    assert (model.neural_head is not None) == guided
    assert type(model).__module__ == f"{plugin_package(plugins[guided])}.sfhpc_models.classifier"  # the plugin's copy


@pytest.mark.parametrize("guided", [False, True], ids=["unguided", "guided"])
def test_every_layer_is_a_module_with_activations_and_the_readout_is_the_pooled_features(plugins, guided):
    module = plugin_model(plugins[guided])
    model = module.build_model()
    activations = record_outputs(model, module.LAYERS)
    images = torch.rand(2, 3, module.IMAGE_SIZE, module.IMAGE_SIZE)
    with torch.no_grad():
        model(images, **module.forward_kwargs(model))  # as Brain-Score's PytorchWrapper calls it
        features = model.features(images)
    assert list(activations) == module.LAYERS
    assert ("neural_head" in module.LAYERS) == guided
    assert torch.equal(activations[module.BEHAVIORAL_READOUT_LAYER].flatten(1), features)
    region_map = json.loads((plugins[guided] / "region_layer_map" / f"{module.MODEL_IDENTIFIER}.json").read_text())
    assert list(region_map) == list(REGIONS) and set(region_map.values()) <= set(module.LAYERS)
    assert region_map == record(plugins[guided])["region_layer_map"]


@pytest.mark.parametrize("arch", ["small_resnet", "resnet18"])
@pytest.mark.parametrize("guided", [False, True], ids=["unguided", "guided"])
def test_layer_names_are_modules_of_both_architectures_in_depth_order(arch, guided):
    model = build_classifier(arch, 4, "none", 32, neural_dim=3 if guided else None).eval()
    layers = plugin_layers(arch, guided)
    outputs = record_outputs(model, layers.names)
    with torch.no_grad():
        model(torch.rand(1, 3, 32, 32), with_neural=guided)
    assert list(outputs) == layers.names  # each computed, in depth order
    widths = [outputs[layer].shape[1] for layer in layers.stages]
    assert widths == sorted(widths) and outputs[layers.pooled].flatten(1).shape[1] == model.feature_dim


def test_model_py_needs_neither_brainscore_nor_sfhpc(plugins, tmp_path):
    """In a fresh interpreter started elsewhere, building the model imports neither brainscore_vision nor sfhpc."""
    probe = ("import sys, types, importlib; parent = types.ModuleType('plugin'); parent.__path__ = [sys.argv[1]]; "
             "sys.modules['plugin'] = parent; model = importlib.import_module('plugin.model').build_model(); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sfhpc', 'brainscore_vision')))")
    out = subprocess.run([sys.executable, "-I", "-c", probe, str(plugins[True])], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_weights_that_are_not_the_exported_file_are_refused(plugins, tmp_path):
    copy = tmp_path / plugins[False].name
    shutil.copytree(plugins[False], copy)
    with open(copy / "weights" / "model.pt", "ab") as f:
        f.write(b"\0")
    with pytest.raises(RuntimeError, match="is not the file exported"):
        plugin_model(copy).build_model()


# ------------------------------------------------------------------------------------------ the files
def test_the_plugin_holds_brainscores_files_and_the_runs_weights(run, plugins):
    for guided, folder in plugins.items():
        point = train_point(run, guided)
        identifier = plugin_identifier(None, "bs", point)
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                       if p.is_file() and "__pycache__" not in p.parts)  # (importing it here wrote bytecode)
        assert files == sorted([*PLUGIN_FILES, f"region_layer_map/{identifier}.json"])
        assert f"model_registry['{identifier}'] = lambda: ModelCommitment(" in (folder / "__init__.py").read_text()
        for path in folder.rglob("*.py"):
            compile(path.read_text(), str(path), "exec")  # test.py too: valid Python
        weights = (folder / "weights" / "model.pt").read_bytes()
        assert weights == (run.point_dir("train", point) / MODEL_NAME).read_bytes()
        written = record(folder)
        assert written["weights_sha256"] == hashlib.sha256(weights).hexdigest() == plugin_model(folder).WEIGHTS_SHA256
        assert written["identifier"] == identifier and written["point"] == f"train/{point}"
        assert written["files"] == sorted([*PLUGIN_FILES, f"region_layer_map/{identifier}.json"])
        assert Path(written["model_code"]).parent.parent == run.path.resolve() / "code"  # the run's frozen copy
        assert written["image_size"] == plugin_model(folder).IMAGE_SIZE == 32
        requirements = [line for line in (folder / "requirements.txt").read_text().splitlines()
                        if not line.startswith("#")]
        assert requirements == ["torch", "torchvision", "numpy"]
        assert plugin_model(folder).get_bibtex() == BIBTEX and "2605.04443" in BIBTEX


def test_the_copied_model_code_imports_no_sfhpc_and_is_the_runs(run, plugins):
    code = Path(record(plugins[True])["model_code"]) / "models"
    for path in (plugins[True] / "sfhpc_models").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level or not (node.module or "").startswith("sfhpc"), f"{path}: {ast.unparse(node)}"
        if path.name != "__init__.py":
            original = (code / path.name).read_text()
            assert path.read_text().splitlines()[1:] == relative_model_imports(original, path).splitlines()


def test_other_imports_of_sfhpc_in_the_model_code_are_refused():
    assert relative_model_imports("from sfhpc.models import bands\nfrom sfhpc.models.bands import BandParams\n",
                                  Path("x.py")) == "from . import bands\nfrom .bands import BandParams\n"
    with pytest.raises(RunError, match="imports sfhpc.config"):
        relative_model_imports("from sfhpc.config import ROIS\n", Path("classifier.py"))


def test_identifiers_are_package_names_keeping_the_points_hash():
    assert plugin_identifier(None, "bs", "band=lsf-alpha=0.5-roi=V1-seed=0-fd8c9dff") == \
        "bs_band_lsf_alpha_0_5_roi_V1_seed_0_fd8c9dff"
    assert plugin_identifier(None, "2026-paper", "seed=0-0123abcd") == "sfhpc_2026_paper_seed_0_0123abcd"
    long = plugin_identifier(None, "run", "x=" + "é" * 150 + "-0123abcd")
    assert len(long) <= 100 and long.endswith("_0123abcd") and long.isidentifier()
    with pytest.raises(RunError, match="identifier 'a-b'"):
        plugin_identifier("a-b", "run", "p")


# ------------------------------------------------------------------------------------------ the command
def test_json_reports_what_was_written_and_force_replaces_an_earlier_export(run, tmp_path):
    point = train_point(run, False)
    folder = tmp_path / "plugin"
    first = json.loads(sfhpc("export", "brainscore", run.path, point, folder, "--json").stdout)
    assert first == record(folder) and first["folder"] == str(folder)
    (folder / "stale.txt").write_text("from an earlier export")
    err = sfhpc("export", "brainscore", run.path, point, folder, code=2).output
    assert "holds an earlier export; pass --force" in err
    sfhpc("export", "brainscore", run.path, point, folder, "--force", "--identifier", "my_model")
    assert not (folder / "stale.txt").exists() and record(folder)["identifier"] == "my_model"
    assert (folder / "region_layer_map" / "my_model.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing left beside it


def test_mistakes_are_one_line_errors(run, tmp_path):
    point = train_point(run, False)
    predictor = next(entry["id"] for stage, entry in manifest_points(run.read_manifest()) if stage == "predictor")
    a_file = tmp_path / "a file"
    a_file.write_text("")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("")
    unfinished, _ = make_run(tmp_path / "unfinished", SWEEP)
    cases = [
        ((tmp_path / "nowhere", point, tmp_path / "out"), "no run folder"),
        ((run.path, "seed=9-00000000", tmp_path / "out"), f"no train point seed=9-00000000 in {run.path.resolve()}; "
                                                          "its train points: "),
        ((run.path, f"predictor/{predictor}", tmp_path / "out"), "is a point of stage predictor in"),
        ((unfinished.path, point, tmp_path / "out"), f"train point {point} is not finished (missing"),
        ((run.path, point, a_file), "is a file; give a new or empty folder"),
        ((run.path, point, tmp_path / "full"), "is not empty and holds no Brain-Score plugin exported by sfhpc"),
    ]
    for args, message in cases:
        err = sfhpc("export", "brainscore", *args, code=2).output
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists() and (tmp_path / "full" / "notes.txt").exists()
    out = sfhpc("export", "brainscore", run.path, point, tmp_path / "out", "--identifier", "9lives", "--json",
                code=2).stdout
    assert "identifier '9lives'" in json.loads(out)["error"]


def test_help_and_no_torch_on_the_login_node(run, tmp_path):
    for flag in ("-h", "--help"):
        assert "region_layer_map" in sfhpc("export", "brainscore", flag).stdout
    assert "brainscore" in sfhpc("export", "-h").stdout
    assert heavy_modules_after("export", "brainscore", run.path, train_point(run, True), tmp_path / "p") == ""
    assert (tmp_path / "p" / "model.py").is_file()


# ------------------------------------------------------------------------------------------ in Brain-Score
@pytest.mark.skipif(not (BRAINSCORE_ENV / ".installed").exists(),
                    reason=f"no Brain-Score environment ({BRAINSCORE_ENV.name}): `make brainscore-env` creates it "
                           "(about 5 minutes; brainscore-vision pins numpy 1.26 and pulls jupyter, so it stays out of "
                           ".venv)")
def test_brainscore_registers_the_plugin_and_its_own_tests_pass(plugins, tmp_path):
    """The guided plugin in Brain-Score's environment: its test.py, offline tests only (Brain-Score registers the
    plugin, reads its region map, feeds its preprocessing, records every layer and each mapped region, parses its
    bibtex). Its scoring test needs the MajajHong2015 data from Brain-Score's storage: left out here."""
    python = BRAINSCORE_ENV / "bin" / "python"
    models = Path(subprocess.run([python, "-c", "import brainscore_vision.models as m; print(m.__path__[0])"],
                                 capture_output=True, text=True, check=True, timeout=300).stdout.strip())
    identifier = f"sfhpc_test_{os.getpid()}"  # a name of its own in the shared environment
    installed = models / identifier
    shutil.rmtree(installed, ignore_errors=True)  # left by a test of this name that was killed
    sfhpc("export", "brainscore", record(plugins[True])["run"], record(plugins[True])["point"], installed,
          "--identifier", identifier)
    try:
        out = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not memory_intense",
                              "-W", "ignore::pytest.PytestUnknownMarkWarning", str(installed / "test.py")],
                             capture_output=True, text=True, cwd=tmp_path, timeout=600,
                             env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "BS_INSTALL_DEPENDENCIES": "no"})
    finally:
        shutil.rmtree(installed)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "5 passed, 1 deselected" in out.stdout, out.stdout

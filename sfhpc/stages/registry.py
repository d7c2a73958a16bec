"""The stages sfhpc knows: the built-in ones, and those other packages add through the entry-point group
`sfhpc.stages`.

To add a stage: write its module (a torch-free `SPEC`, sfhpc.stages.spec.StageSpec, and the function its `runner`
names), add one line to BUILTIN_STAGES (or, from another package, one entry point), and write jobs/<stage>.yaml.
Nothing else names it: the sweep expansion, the launcher, `status`, `aggregate` and the report read the registry.

An entry point names the stage and its spec, e.g. in the plugin package's pyproject.toml:

    [project.entry-points."sfhpc.stages"]
    brainscore = "mylab_stages.brainscore:SPEC"

Login-node code: importing a spec module imports no torch.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from sfhpc.stages.spec import StageSpec

ENTRY_POINT_GROUP = "sfhpc.stages"

# name -> the module holding its SPEC. The order is the report's: families and figures follow it.
BUILTIN_STAGES: dict[str, str] = {
    "predictor": "sfhpc.stages.predictor",
    "train": "sfhpc.stages.train",
    "attack": "sfhpc.stages.attack",
    "cbm": "sfhpc.stages.cbm",
    "rsa": "sfhpc.stages.rsa",
}


@dataclass(frozen=True)
class Registry:
    """Every usable stage by name, and the plugins that could not be used, with the reason (a broken plugin stops
    no sweep that does not use it; one that does is told why its stage is unknown)."""

    stages: dict[str, StageSpec[Any]]
    broken: dict[str, str]

    def __getitem__(self, name: str) -> StageSpec[Any]:
        return self.stages[name]

    def __contains__(self, name: object) -> bool:
        return name in self.stages


@functools.cache
def registry() -> Registry:
    """The built-in stages, then the entry points' (read once per process)."""
    stages: dict[str, StageSpec[Any]] = {name: _spec_of(importlib.import_module(module), name)
                                         for name, module in BUILTIN_STAGES.items()}
    broken: dict[str, str] = {}
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {entry_point.name} = {entry_point.value}"
        if entry_point.name in stages:
            broken[entry_point.name] = (f"{where} (package {_package(entry_point)}) is not used: "
                                        f"{entry_point.name!r} is already a stage")
            continue
        try:
            stages[entry_point.name] = _spec_of(entry_point.load(), entry_point.name)
        except Exception as err:  # noqa: BLE001 - a plugin's import can raise anything; its stage is then unknown
            broken[entry_point.name] = f"{where} (package {_package(entry_point)}) cannot be loaded: " \
                                       f"{type(err).__name__}: {err}"
    return Registry(stages, broken)


def stage_spec(name: str) -> StageSpec[Any]:
    return registry()[name]


def _spec_of(loaded: Any, name: str) -> StageSpec[Any]:
    """The StageSpec an entry point or a module gives (a module holds it as SPEC), named `name`."""
    spec = getattr(loaded, "SPEC", loaded)
    if not isinstance(spec, StageSpec):
        raise TypeError(f"expected a sfhpc.stages.spec.StageSpec (or a module holding one as SPEC), got "
                        f"{type(spec).__name__}")
    if spec.name != name:
        raise ValueError(f"its spec is named {spec.name!r}, not {name!r}")
    return spec


def _package(entry_point: metadata.EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "unknown"

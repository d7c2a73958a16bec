"""The attack stage: AutoAttack on one shard of a trained model's test images (SCIENCE.md section 5).

Each shard writes per-sample clean correctness and robust flags for every (norm, eps); shards of one model combine
exactly (robust accuracy = robust count / N). The result records the epsilon grid (monotone or independent) and
counts the images whose flags are not monotone in eps (0 for a monotone grid unless a carried adversarial example
failed its check and the image then withstood the attack at the larger epsilon). Finished (norm, eps) pairs are
kept in the point folder and never redone when a shard is requeued or relaunched. Epsilons given in normalized units
are converted with the SDs the trained model itself divides its inputs by (its `std` buffer, saved with its
weights), and every result records both units.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sfhpc.data import load_dataset
from sfhpc.evaluation.attack import (
    AttackSettings,
    attack_shard,
    clean_correct,
    conversion_sd,
    grid_settings,
    nonmonotone_images,
    normalized_epsilon,
    pixel_epsilons,
    shard_bounds,
)
from sfhpc.job import PointRun
from sfhpc.models.classifier import Classifier
from sfhpc.results import package_version
from sfhpc.stages.attack import (
    CLEAN_CORRECT_CURVE,
    EPS_GRID_ATTR,
    EPS_NORMALIZED_KEY,
    EPS_SD_ATTR,
    EPS_UNIT_ATTR,
    NONMONOTONE_ATTR,
    NORMALIZATION_STD_ATTR,
    SETTINGS_ATTR,
    SPEC,
    AttackParams,
    robust_accuracy_metric,
    robust_curve_name,
)
from sfhpc.stages.common import evaluation_model

STATE_DIR = "attack_state"


def normalization_std(model: Classifier) -> tuple[float, ...]:
    """The per-channel SDs `model` divides its inputs by, as the decimals they were built from: the buffer is
    float32, and its shortest round-tripping decimal (0.224, not 0.2240000069) is the value it holds."""
    return tuple(float(np.format_float_positional(value)) for value in model.std.detach().cpu().numpy().ravel())


def settings_of(params: AttackParams, std: tuple[float, ...]) -> list[AttackSettings]:
    """One AutoAttack configuration per (norm, eps), in the sweep's order, with eps in pixel units (converted with
    the model's SDs `std` when the sweep gave normalized ones), in the sweep's epsilon grid."""
    return grid_settings(pixel_epsilons(params.epsilons(), params.attack_eps_unit, std), params.attack_eps_grid,
                         version=params.attack_version, attacks=params.attack_names, seed=params.attack_seed,
                         batch_size=params.attack_batch_size, apgd_iterations=params.attack_apgd_iterations,
                         apgd_restarts=params.attack_apgd_restarts, random_start=params.attack_random_start)


def grid_record(params: AttackParams, settings: list[AttackSettings], flags: dict[str, np.ndarray]) -> dict[str, Any]:
    """The result attributes that say how the epsilons were attacked: the grid, and per norm the images whose flags
    are not monotone in eps (JSON: norm -> count)."""
    counts = {norm: nonmonotone_images({s.eps: flags[s.key()] for s in settings if s.norm == norm})
              for norm in dict.fromkeys(s.norm for s in settings)}
    return {EPS_GRID_ATTR: params.attack_eps_grid, NONMONOTONE_ATTR: json.dumps(counts)}


def epsilon_record(params: AttackParams, settings: list[AttackSettings], std: tuple[float, ...]) -> dict[str, Any]:
    """The result attributes that state the unit of every epsilon: the sweep's unit, the model's SDs, the one SD
    that converted, and each setting's epsilon in pixel units (its "eps") and in normalized units."""
    return {EPS_UNIT_ATTR: params.attack_eps_unit, NORMALIZATION_STD_ATTR: list(std), EPS_SD_ATTR: conversion_sd(std),
            SETTINGS_ATTR: json.dumps([{**s.__dict__, EPS_NORMALIZED_KEY: normalized_epsilon(s.eps, std)}
                                       for s in settings])}


def run(point: PointRun[AttackParams]) -> Path:
    """Attack this point's shard of the test images and write its per-sample flags."""
    params = point.params
    model, trained, plan = evaluation_model(point)
    device = plan.device
    test = load_dataset(trained.data, point.data_cache).test
    total = min(params.attack_images or len(test.labels), len(test.labels))
    shards = SPEC.n_shards(params.model_dump(), point.config.job)
    start, stop = shard_bounds(total, shards, params.attack_shard)
    x = torch.from_numpy(test.images[start:stop]).float().div_(255.0)
    y = torch.from_numpy(test.labels[start:stop])
    std = normalization_std(model)
    settings = settings_of(params, std)
    flags = attack_shard(model, x, y, settings, point.dir / STATE_DIR, device)
    clean = clean_correct(model, x, y, params.attack_batch_size, device)
    return point.write_result(
        metrics={"images": stop - start, "clean_accuracy": float(clean.mean()),
                 **{robust_accuracy_metric(s.norm, s.eps): float(flags[s.key()].mean()) for s in settings}},
        curves={CLEAN_CORRECT_CURVE: clean, **{robust_curve_name(s.norm, s.eps): flags[s.key()] for s in settings}},
        attrs={"upstream": point.only_upstream(), "shard": params.attack_shard, "shards": shards,
               "shard_start": start, "shard_stop": stop, **epsilon_record(params, settings, std),
               **grid_record(params, settings, flags),
               "pyautoattack_version": package_version("pyautoattack"), **plan.attrs()},
    )

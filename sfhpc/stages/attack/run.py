"""The attack stage: AutoAttack on one shard of a trained model's test images (SCIENCE.md section 5).

Each shard writes per-sample clean correctness and robust flags for every (norm, eps); shards of one model combine
exactly (robust accuracy = robust count / N). Finished (norm, eps) pairs are kept in the point folder and never
redone when a shard is requeued or relaunched.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sfhpc.data import load_dataset
from sfhpc.evaluation.attack import AttackSettings, attack_shard, clean_correct, shard_bounds
from sfhpc.job import PointRun
from sfhpc.results import package_version
from sfhpc.stages.attack import (
    CLEAN_CORRECT_CURVE,
    SETTINGS_ATTR,
    SPEC,
    AttackParams,
    robust_accuracy_metric,
    robust_curve_name,
)
from sfhpc.stages.common import load_upstream_model

STATE_DIR = "attack_state"


def settings_of(params: AttackParams) -> list[AttackSettings]:
    """One AutoAttack configuration per (norm, eps), in the sweep's order."""
    names = tuple(params.attack_names) if params.attack_names else None
    return [AttackSettings(params.attack_version, names, norm, eps, params.attack_seed, params.attack_batch_size,
                           params.attack_apgd_iterations, params.attack_apgd_restarts)
            for norm, values in params.epsilons().items() for eps in values]


def run(point: PointRun[AttackParams]) -> Path:
    """Attack this point's shard of the test images and write its per-sample flags."""
    params = point.params
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, trained = load_upstream_model(point, device)
    test = load_dataset(trained.data, point.data_cache).test
    total = min(params.attack_images or len(test.labels), len(test.labels))
    shards = SPEC.n_shards(params.model_dump(), point.config.job)
    start, stop = shard_bounds(total, shards, params.attack_shard)
    x = torch.from_numpy(test.images[start:stop]).float().div_(255.0)
    y = torch.from_numpy(test.labels[start:stop])
    settings = settings_of(params)
    flags = attack_shard(model, x, y, settings, point.dir / STATE_DIR, device)
    clean = clean_correct(model, x, y, params.attack_batch_size, device)
    return point.write_result(
        metrics={"images": stop - start, "clean_accuracy": float(clean.mean()),
                 **{robust_accuracy_metric(s.norm, s.eps): float(flags[s.key()].mean()) for s in settings}},
        curves={CLEAN_CORRECT_CURVE: clean, **{robust_curve_name(s.norm, s.eps): flags[s.key()] for s in settings}},
        attrs={"upstream": point.only_upstream(), "shard": params.attack_shard, "shards": shards,
               "shard_start": start, "shard_stop": stop, SETTINGS_ATTR: json.dumps([s.__dict__ for s in settings]),
               "pyautoattack_version": package_version("pyautoattack")},
    )

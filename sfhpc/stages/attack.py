"""The attack stage: AutoAttack on one shard of a trained model's test images (SCIENCE.md section 5).

Each shard writes per-sample clean correctness and robust flags for every (norm, eps); shards of one model combine
exactly (robust accuracy = robust count / N). Finished (norm, eps) pairs are kept in the point folder and never
redone when a shard is requeued or relaunched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sfhpc.config import AttackParams, JobSpec
from sfhpc.data import load_dataset
from sfhpc.evaluation.attack import AttackSettings, attack_shard, clean_correct, robust_curve_name, shard_bounds
from sfhpc.results import RESULT_NAME, Provenance, now_iso, package_version, write_result
from sfhpc.stages.train import data_cache, load_upstream_model
from sfhpc.sweep import n_shards

STATE_DIR = "attack_state"


def settings_of(params: AttackParams) -> list[AttackSettings]:
    """One AutoAttack configuration per (norm, eps), in the sweep's order."""
    names = tuple(params.attack_names) if params.attack_names else None
    return [AttackSettings(params.attack_version, names, norm, eps, params.attack_seed, params.attack_batch_size,
                           params.attack_apgd_iterations, params.attack_apgd_restarts)
            for norm, values in params.epsilons().items() for eps in values]


def metric_name(settings: AttackSettings) -> str:
    return f"robust_accuracy_{settings.norm}_eps{settings.eps:.6g}"


def run(config: dict[str, Any], point_dir: Path) -> Path:
    """Attack this point's shard of the test images and write its per-sample flags."""
    started = now_iso()
    params = AttackParams.model_validate(config["params"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, _, data_cfg = load_upstream_model(config, device)
    test = load_dataset(data_cfg, data_cache(config)).test
    total = min(params.attack_images or len(test.labels), len(test.labels))
    shards = n_shards(params.model_dump(), JobSpec.model_validate(config["job"]))
    start, stop = shard_bounds(total, shards, params.attack_shard)
    x = torch.from_numpy(test.images[start:stop]).float().div_(255.0)
    y = torch.from_numpy(test.labels[start:stop])
    settings = settings_of(params)
    flags = attack_shard(model, x, y, settings, point_dir / STATE_DIR, device)
    clean = clean_correct(model, x, y, params.attack_batch_size, device)
    result = point_dir / RESULT_NAME
    write_result(
        result, stage="attack", point_id=config["point_id"], config=config,
        provenance=Provenance(config.get("git_sha", "unknown"), started, now_iso()),
        metrics={"images": stop - start, "clean_accuracy": float(clean.mean()),
                 **{metric_name(s): float(flags[s.key()].mean()) for s in settings}},
        curves={"clean_correct": clean, **{robust_curve_name(s.norm, s.eps): flags[s.key()] for s in settings}},
        extra_attrs={"upstream": config["upstream"][0], "shard": params.attack_shard, "shards": shards,
                     "shard_start": start, "shard_stop": stop, "settings": json.dumps([s.__dict__ for s in settings]),
                     "pyautoattack_version": package_version("pyautoattack")},
    )
    return result

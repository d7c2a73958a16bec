"""Attack evaluation: flags equal pyautoattack's own, shards combine exactly, state resumes and refuses mixing."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pyautoattack
import pytest
import torch
import torch.nn.functional as F
from pyautoattack.autoattack import AttackName
from pyautoattack.autopgd_base import APGDAttack
from torch import nn

from sfhpc.evaluation.attack import (
    ATTACK_NAMES,
    AttackSettings,
    attack_shard,
    check_model_for_attack,
    clean_correct,
    grid_settings,
    image_fingerprints,
    nonmonotone_images,
    per_image_random_starts,
    shard_bounds,
    still_adversarial,
    validate_attack_settings,
)

N_IMAGES = 24
WRONG_LABELS = (1, 9, 17)  # one clean-incorrect sample per shard of 8: never robust
REAL_AUTOATTACK = pyautoattack.AutoAttack
FAST_APGD_ITERATIONS = 10


def tiny_cnn() -> nn.Module:
    """A seeded CNN returning logits, steep enough that small epsilons flip some but not all predictions."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))
    with torch.no_grad():
        model[3].weight.mul_(5)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return tiny_cnn()


@pytest.fixture(scope="module")
def data(model) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images labelled with the model's own predictions, except a few wrong labels."""
    x = torch.rand(N_IMAGES, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    y[list(WRONG_LABELS)] = (y[list(WRONG_LABELS)] + 1) % 10
    return x, y


def settings(eps: float = 2 / 255, attacks: tuple[str, ...] = ("apgd-ce",), batch_size: int = 4,
             random_start: str = "image", norm: str = "Linf") -> AttackSettings:
    return AttackSettings(version="custom", attacks=attacks, norm=norm, eps=eps, seed=0, batch_size=batch_size,
                          random_start=random_start)


class FastAutoAttack(REAL_AUTOATTACK):
    """AutoAttack with APGD cut to one restart of 10 iterations: the same code paths in seconds, not minutes.

    Flags depend on these counts, so every test compares against this class, never against the full default.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for apgd in (self.apgd, self.apgd_targeted):
            apgd.n_restarts = 1
            apgd.n_iter = apgd.n_iter_orig = FAST_APGD_ITERATIONS
            apgd.n_iter_2, apgd.n_iter_min, apgd.size_decr = 2, 1, 1  # APGD's own step schedule for 10 iterations


@pytest.fixture(autouse=True)
def fast_autoattack(monkeypatch) -> None:
    monkeypatch.setattr(pyautoattack, "AutoAttack", FastAutoAttack)


def direct_flags(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chosen: AttackSettings,
                 state_path: Path | None = None) -> np.ndarray:
    """Flags from one plain AutoAttack call, the documented way: still classified correctly after the attacks (with
    APGD's random starts drawn per image where the settings say so)."""
    autoattack = FastAutoAttack(model, norm=chosen.norm, eps=chosen.eps, version=chosen.version,
                               attacks=list(chosen.attacks), seed=chosen.seed, device="cpu")
    if chosen.random_start == "image":
        per_image_random_starts(autoattack)
    _, y_adv = autoattack.run_standard_evaluation(x, y, batch_size=chosen.batch_size, state_path=state_path)
    return (y_adv == y).numpy()


class CountingAutoAttack(FastAutoAttack):
    """AutoAttack that counts its constructions and can fail on a chosen one or on a chosen attack (at any eps, or
    at a chosen one)."""

    constructions = 0
    fail_on_construction: int | None = None
    fail_on_attack: str | None = None
    fail_on_eps: float | None = None

    def __init__(self, *args, **kwargs):
        type(self).constructions += 1
        if type(self).constructions == self.fail_on_construction:
            raise RuntimeError("simulated crash (node lost)")
        super().__init__(*args, **kwargs)

    def run_standard_evaluation(self, *args, **kwargs):
        if self.attacks_to_run == [self.fail_on_attack] and self.fail_on_eps in (None, self.epsilon):
            raise RuntimeError("simulated crash during an attack")
        return super().run_standard_evaluation(*args, **kwargs)


@pytest.fixture
def counting(monkeypatch) -> type[CountingAutoAttack]:
    """Stand CountingAutoAttack in for pyautoattack.AutoAttack, with fresh counters."""

    class Counting(CountingAutoAttack):
        constructions = 0

    monkeypatch.setattr(pyautoattack, "AutoAttack", Counting)
    return Counting


def forbid_autoattack(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("AutoAttack must not be constructed here")

    monkeypatch.setattr(pyautoattack, "AutoAttack", refuse)


# --- torch-free helpers -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "n_shards"), [(24, 3), (10, 3), (7, 7), (5, 1), (101, 8)])
def test_shard_bounds_partition_the_test_set(n, n_shards):
    bounds = [shard_bounds(n, n_shards, shard) for shard in range(n_shards)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(stop == next_start for (_, stop), (next_start, _) in zip(bounds, bounds[1:], strict=False))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


@pytest.mark.parametrize(("args", "message"), [((3, 4, 0), "at most 3"), ((10, 3, 3), "out of range"),
                                               ((10, 3, -1), "out of range"), ((10, 0, 0), "at least 1")])
def test_shard_bounds_refuses_bad_shards(args, message):
    with pytest.raises(ValueError, match=message):
        shard_bounds(*args)


def test_attack_names_are_pyautoattacks():
    assert set(ATTACK_NAMES) == set(typing.get_args(AttackName))


GOOD = {"version": "custom", "attacks": ["apgd-ce"], "norms": ["Linf", "L2"],
        "epsilons": {"Linf": [2 / 255, 8 / 255], "L2": [0.5]}, "n_shards": 4, "n_test": 100}


@pytest.mark.parametrize(("change", "message"), [
    ({"epsilons": {"Linf": [], "L2": [0.5]}}, "empty epsilon list for norm Linf"),
    ({"epsilons": [0.1, -0.5]}, "epsilon -0.5 for norm Linf must be a finite number > 0"),
    ({"epsilons": [0.0]}, "must be a finite number > 0"),
    ({"epsilons": {"Linf": [0.1]}}, r"no epsilon list for norm\(s\) \['L2'\]"),
    ({"attacks": ["apgd-ce", "pgd"]}, "unknown attack 'pgd'; choose from apgd-ce, apgd-dlr, apgd-t, fab, fab-t"),
    ({"attacks": None}, "version 'custom' needs a non-empty list of attacks"),
    ({"version": "standard"}, "list attacks only with version 'custom'"),
    ({"version": "fast", "attacks": None}, "unknown AutoAttack version 'fast'"),
    ({"norms": ["Linf", "Lp"], "epsilons": [0.1]}, "norm 'Lp' is not supported by AutoAttack; choose from Linf, L2"),
    ({"n_shards": 101}, "101 attack shards for a test set of 100 images"),
    ({"epsilons": {"Linf": [0.1, 0.2, 0.1], "L2": [0.5]}}, r"epsilon\(s\) \[0.1\] given twice for norm Linf"),
])
def test_validate_attack_settings_explains_each_mistake(change, message):
    with pytest.raises(ValueError, match=message):
        validate_attack_settings(**{**GOOD, **change})


def test_validate_attack_settings_accepts_good_settings():
    validate_attack_settings(**GOOD)
    validate_attack_settings("standard", None, ["L1"], [12.0], 1, 1)


def test_validation_and_sharding_do_not_import_torch():
    code = ("import sys; from sfhpc.evaluation.attack import shard_bounds, validate_attack_settings, AttackSettings;"
            "validate_attack_settings('custom', ['apgd-ce'], ['Linf'], [0.1], 2, 10); shard_bounds(10, 2, 1);"
            "AttackSettings('standard', None, 'L2', 0.5, 0, 250).key();"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_settings_key_is_stable_and_exact():
    assert settings().key() == settings().key()
    assert settings().key().startswith("Linf-eps=0.00784314-custom-apgd-ce-seed=0-bs=4-")
    assert settings(eps=2 / 255).key() != settings(eps=2 / 255 + 1e-12).key()  # same text, different hash
    with pytest.raises(ValueError, match="seed must be an integer"):
        AttackSettings("custom", ("apgd-ce",), "Linf", 0.1, None, 4)


# --- attacks on the tiny CNN --------------------------------------------------------------------------------------

def test_shards_match_direct_autoattack_and_merge_exactly(model, data, tmp_path):
    x, y = data
    chosen = settings()
    robust_counts, merged = [], []
    for shard in range(3):
        start, stop = shard_bounds(N_IMAGES, 3, shard)
        flags = attack_shard(model, x[start:stop], y[start:stop], [chosen], tmp_path / f"shard {shard}")
        state_path = tmp_path / f"direct {shard}.json"
        expected = direct_flags(model, x[start:stop], y[start:stop], chosen, state_path)
        np.testing.assert_array_equal(flags[chosen.key()], expected)
        # y_adv == y is exactly AutoAttack's own per-sample robust flags (kept in its state file)
        np.testing.assert_array_equal(expected, json.loads(state_path.read_text())["_robust_flags"])
        robust_counts.append(int(flags[chosen.key()].sum()))
        merged.append(flags[chosen.key()])
    merged_flags = np.concatenate(merged)
    assert merged_flags.mean() == sum(robust_counts) / N_IMAGES
    assert not merged_flags[list(WRONG_LABELS)].any()  # clean-incorrect samples are never robust
    assert 0 < sum(robust_counts) < N_IMAGES - len(WRONG_LABELS)  # the attack flipped some, not all


@pytest.fixture
def apgd_batches(monkeypatch) -> list[tuple[str, str]]:
    """Every batch APGD attacks, as (loss, hash of the images), in order."""
    batches, real_perturb = [], APGDAttack.perturb

    def recording(self, x, *args, **kwargs):
        batches.append((self.loss, hashlib.sha256(x.detach().cpu().numpy().tobytes()).hexdigest()))
        return real_perturb(self, x, *args, **kwargs)

    monkeypatch.setattr(APGDAttack, "perturb", recording)
    return batches


def test_attacks_checkpointed_one_by_one_equal_one_autoattack_call(model, data, tmp_path, counting, apgd_batches):
    x, y = data
    chosen = settings(eps=1.5 / 255, attacks=("apgd-ce", "apgd-dlr"))
    counting.fail_on_attack = "apgd-dlr"
    with pytest.raises(RuntimeError, match="during an attack"):
        attack_shard(model, x, y, [chosen], tmp_path)
    progress = json.loads((tmp_path / f"{chosen.key()}.progress.json").read_text())
    assert progress["attacks_done"] == ["apgd-ce"]

    counting.fail_on_attack = None
    flags = attack_shard(model, x, y, [chosen], tmp_path)[chosen.key()]
    assert not (tmp_path / f"{chosen.key()}.progress.json").exists()
    assert (np.array(progress["robust"], dtype=bool) & ~flags).any()  # the resumed second attack fooled more
    checkpointed_batches = list(apgd_batches)
    apgd_batches.clear()
    np.testing.assert_array_equal(flags, direct_flags(model, x, y, chosen))
    assert checkpointed_batches == apgd_batches  # the very same batches, hence the same flags in general


def test_rerun_of_finished_shard_runs_no_attack(model, data, tmp_path, monkeypatch):
    x, y = data[0][:8], data[1][:8]
    chosen = settings()
    first = attack_shard(model, x, y, [chosen], tmp_path)
    forbid_autoattack(monkeypatch)
    again = attack_shard(model, x, y, [chosen], tmp_path, on_done=lambda *_: pytest.fail("nothing was computed"))
    np.testing.assert_array_equal(again[chosen.key()], first[chosen.key()])


def test_interrupted_shard_resumes_without_redoing_finished_pairs(model, data, tmp_path, counting):
    x, y = data[0][:8], data[1][:8]
    pairs = [settings(eps=1 / 255), settings(eps=2 / 255)]
    computed = []
    counting.fail_on_construction = 2
    with pytest.raises(RuntimeError, match="node lost"):
        attack_shard(model, x, y, pairs, tmp_path, on_done=lambda chosen, flags: computed.append((chosen, flags)))
    assert [chosen for chosen, _ in computed] == [pairs[0]]

    counting.constructions, counting.fail_on_construction = 0, None
    resumed = attack_shard(model, x, y, pairs, tmp_path)
    assert counting.constructions == 1  # only the unfinished pair
    np.testing.assert_array_equal(resumed[pairs[0].key()], computed[0][1])
    np.testing.assert_array_equal(resumed[pairs[1].key()], direct_flags(model, x, y, pairs[1]))


class Softmaxed(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).softmax(dim=1)


class AlwaysDropout(nn.Module):
    """Dropout that ignores eval mode, as a careless functional call does."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(F.dropout(x, p=0.5, training=True))


@pytest.mark.parametrize(("wrap", "message"), [(Softmaxed, "model outputs probabilities"),
                                               (AlwaysDropout, "model is not deterministic")])
def test_refuses_bad_models_before_any_attack(model, data, tmp_path, monkeypatch, wrap, message):
    forbid_autoattack(monkeypatch)
    with pytest.raises(ValueError, match=message):
        attack_shard(wrap(model), *data, [settings()], tmp_path)
    with pytest.raises(ValueError, match=message):
        check_model_for_attack(wrap(model), data[0][:4], "cpu")


def test_check_puts_model_in_eval_mode(data):
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(768, 10)).train()
    check_model_for_attack(model, data[0][:4], "cpu")
    assert not model.training


def test_refuses_normalised_images(model, data, tmp_path, monkeypatch):
    forbid_autoattack(monkeypatch)
    x, y = data
    with pytest.raises(ValueError, match=r"pixel space \[0, 1\]"):
        attack_shard(model, (x - 0.5) / 0.25, y, [settings()], tmp_path)


def test_clean_correct_marks_wrong_labels(model, data):
    correct = clean_correct(model, *data, batch_size=5, device="cpu")
    assert correct.dtype == bool and np.flatnonzero(~correct).tolist() == list(WRONG_LABELS)


def test_refuses_state_made_for_other_images_or_settings(model, data, tmp_path, monkeypatch):
    x, y = data[0][:8], data[1][:8]
    chosen = settings()
    attack_shard(model, x, y, [chosen], tmp_path)
    forbid_autoattack(monkeypatch)

    other_shard = (data[0][8:16], data[1][8:16])
    with pytest.raises(ValueError, match="was made for other settings/images"):
        attack_shard(model, *other_shard, [chosen], tmp_path)

    manifest_path = tmp_path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest[chosen.key()]["settings"]["batch_size"] = 16
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="was made for other settings/images"):
        attack_shard(model, x, y, [chosen], tmp_path)

    manifest_path.unlink()  # flags whose origin is unknown are not trusted either
    with pytest.raises(ValueError, match="has no manifest entry"):
        attack_shard(model, x, y, [chosen], tmp_path)


def test_a_shard_sets_up_once_what_its_pairs_share(model, data, tmp_path, monkeypatch):
    """One clean pass for all independent pairs of a batch size, no progress file for a pair's last attack, and
    each pair's key computed from its value."""
    from sfhpc.evaluation import attack

    clean_passes, progress_writes = [], []
    real_clean, real_progress = attack.clean_correct, attack._save_progress
    monkeypatch.setattr(attack, "clean_correct", lambda *a, **k: clean_passes.append(1) or real_clean(*a, **k))
    monkeypatch.setattr(attack, "_save_progress", lambda *a: progress_writes.append(a[1][:]) or real_progress(*a))
    pairs = [settings(eps, attacks=("apgd-ce", "apgd-dlr")) for eps in (1 / 255, 2 / 255, 4 / 255)]
    flags = attack_shard(model, *data, pairs, tmp_path)
    assert len(clean_passes) == 1
    assert progress_writes == [["apgd-ce"]] * 3  # after the first attack of each pair; the second ends the pair
    for chosen in pairs:
        np.testing.assert_array_equal(flags[chosen.key()], direct_flags(model, *data, chosen))
    assert AttackSettings("custom", ("apgd-ce",), "L2", 1, 0, 4).key() == AttackSettings("custom", ("apgd-ce",), "L2",
                                                                                          1.0, 0, 4).key()


def test_autoattacks_model_checks_run_once_per_shard_and_are_restored(model, data, tmp_path, monkeypatch, counting):
    from pyautoattack import checks

    calls = {"check_randomized": 0, "check_range_output": 0, "check_dynamic": 0}
    for name in calls:
        real = getattr(checks, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(checks, name, counted)
    installed = {name: getattr(checks, name) for name in calls}
    three_pairs = [settings(eps) for eps in (1 / 255, 2 / 255, 4 / 255)]
    attack_shard(model, *data, three_pairs, tmp_path / "state")
    # Three AutoAttack calls; sfhpc's own check refused nothing, pyautoattack's dynamic check ran once, none per call.
    assert calls == {"check_randomized": 0, "check_range_output": 0, "check_dynamic": 1}
    assert {name: getattr(checks, name) for name in calls} == installed

    counting.fail_on_attack = "apgd-ce"  # a crash inside an attack also puts the checks back
    with pytest.raises(RuntimeError, match="simulated crash"):
        attack_shard(model, *data, [settings(8 / 255)], tmp_path / "state2")
    assert {name: getattr(checks, name) for name in calls} == installed


# --- epsilon grids ------------------------------------------------------------------------------------------------

def monotone_grid(epsilons: tuple[float, ...] = (2 / 255, 0.5 / 255, 1 / 255),
                  attacks: tuple[str, ...] = ("apgd-ce",)) -> list[AttackSettings]:
    """A monotone Linf grid, given out of order as a sweep may give it."""
    return grid_settings({"Linf": epsilons}, "monotone", version="custom", attacks=attacks, seed=0, batch_size=4)


def direct_monotone_flags(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: tuple[float, ...],
                          attacks: tuple[str, ...] = ("apgd-ce",)) -> dict[float, np.ndarray]:
    """The monotone grid by its definition, from plain AutoAttack calls: each epsilon, ascending, attacks the images
    still robust at the previous one (all images at the first)."""
    robust, grid = np.ones(len(x), dtype=bool), {}
    for eps in sorted(epsilons):
        index = np.flatnonzero(robust)
        robust = np.zeros(len(x), dtype=bool)
        if len(index):
            robust[index] = direct_flags(model, x[index], y[index], settings(eps=eps, attacks=attacks))
        grid[eps] = robust
    return grid


@pytest.fixture
def attacked_images(monkeypatch) -> list[int]:
    """How many images each APGD batch attacks, in order."""
    sizes, real_perturb = [], APGDAttack.perturb

    def recording(self, x, *args, **kwargs):
        sizes.append(len(x))
        return real_perturb(self, x, *args, **kwargs)

    monkeypatch.setattr(APGDAttack, "perturb", recording)
    return sizes


def test_grid_settings_give_each_monotone_pair_its_smaller_epsilons():
    grid = grid_settings({"Linf": [0.3, 0.1, 0.2], "L2": [1.0]}, "monotone", version="custom", attacks=["apgd-ce"],
                         seed=0, batch_size=4)
    assert [(s.norm, s.eps, s.smaller_eps) for s in grid] == [("Linf", 0.3, (0.1, 0.2)), ("Linf", 0.1, ()),
                                                             ("Linf", 0.2, (0.1,)), ("L2", 1.0, ())]
    assert grid[0].previous() == grid[2] and grid[2].previous() == grid[1] and grid[1].previous() is None
    assert all("-bs=4-monotone-" in s.key() for s in grid)
    shorter = grid_settings({"Linf": [0.3, 0.2]}, "monotone", version="custom", attacks=["apgd-ce"], seed=0,
                            batch_size=4)
    assert shorter[0].key() != grid[0].key()  # a pair's key covers the grid below it: no state of another grid

    independent = grid_settings({"Linf": [0.3, 0.1]}, "independent", version="custom", attacks=["apgd-ce"], seed=0,
                                batch_size=4, random_start="batch")
    assert [(s.smaller_eps, s.previous()) for s in independent] == [((), None), ((), None)]
    # an independent pair with AutoAttack's own random starts has the key written before grids and per-image starts
    # existed, so its state stays valid; per-image starts (the default) give other flags, hence another key
    per_image = grid_settings({"Linf": [0.3]}, "independent", version="custom", attacks=["apgd-ce"], seed=0,
                              batch_size=4)
    assert per_image[0].random_start == "image" and per_image[0].key() != independent[0].key()
    fields = {"version": "custom", "attacks": ["apgd-ce"], "norm": "Linf", "eps": 0.3, "seed": 0, "batch_size": 4,
              "apgd_iterations": None, "apgd_restarts": None}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]
    assert independent[0].key() == f"Linf-eps=0.3-custom-apgd-ce-seed=0-bs=4-{digest}"


@pytest.mark.parametrize(("change", "message"), [
    ({"eps_grid": "sideways"}, "unknown epsilon grid 'sideways'"),
    ({"smaller_eps": (0.1,)}, "smaller_eps belongs to a monotone grid"),
    ({"eps_grid": "monotone", "smaller_eps": (0.2, 0.1)}, "must ascend"),
    ({"eps_grid": "monotone", "smaller_eps": (0.1, 0.3)}, "below eps 0.3"),
    ({"random_start": "pixel"}, "unknown random start 'pixel'; choose from image, batch"),
])
def test_settings_refuse_a_broken_grid(change, message):
    with pytest.raises(ValueError, match=message):
        AttackSettings("custom", ("apgd-ce",), "Linf", 0.3, 0, 4, **change)


def test_nonmonotone_images_counts_images_robust_after_a_smaller_eps_broke_them():
    flags = {0.2: np.array([1, 0, 1, 0], bool), 0.1: np.array([1, 1, 0, 0], bool), 0.3: np.array([0, 1, 0, 0], bool)}
    assert nonmonotone_images(flags) == 2  # image 1 (robust, broken, robust) and image 2 (broken, robust)
    assert nonmonotone_images({0.1: np.array([1, 1, 0], bool), 0.2: np.array([1, 0, 0], bool)}) == 0
    assert nonmonotone_images({}) == 0


def test_still_adversarial_checks_the_class_the_ball_and_the_box(model, data):
    x, y = data
    autoattack = FastAutoAttack(model, norm="L2", eps=0.5, version="custom", attacks=["apgd-ce"], seed=0)
    x_adv, y_adv = autoattack.run_standard_evaluation(x, y, batch_size=4)
    broken = (y_adv != y).numpy()
    assert broken.sum() > len(WRONG_LABELS)  # the attack broke some correctly classified images
    np.testing.assert_array_equal(still_adversarial(model, x, x_adv, y, "L2", 0.5, 5), broken)
    size = (x_adv - x).flatten(1).norm(dim=1).numpy()
    smaller = float(np.median(size[broken & (size > 0)]))
    np.testing.assert_array_equal(still_adversarial(model, x, x_adv, y, "L2", smaller, 5), broken & (size <= smaller))

    wrong = list(WRONG_LABELS)  # misclassified as they are: their own adversarial examples, at distance 0
    np.testing.assert_array_equal(np.flatnonzero(still_adversarial(model, x, x, y, "Linf", 1 / 255, 5)), wrong)
    outside_box = x.clone()
    outside_box[wrong, 0, 0, 0] = 1.001
    with torch.no_grad():
        assert (model(outside_box[wrong]).argmax(dim=1) != y[wrong]).all()  # still misclassified, but not an image
    assert not still_adversarial(model, x, outside_box, y, "Linf", 1 / 255, 5)[wrong].any()
    # a Linf example projected onto the ball's edge in float32 is inside, whatever the rounding
    edge = (x + 1 / 255 * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(2)))).clamp(0, 1)
    with torch.no_grad():
        misclassified = (model(edge).argmax(dim=1) != y).numpy()
    np.testing.assert_array_equal(still_adversarial(model, x, edge, y, "Linf", 1 / 255, 5), misclassified)
    assert not still_adversarial(model, x, edge, y, "Linf", 0.5 / 255, 5).any()


def test_monotone_grid_never_claims_robust_after_a_smaller_eps_broke_an_image(model, data, tmp_path,
                                                                              attacked_images):
    x, y = data
    grid = monotone_grid()
    flags = attack_shard(model, x, y, grid, tmp_path)
    by_eps = {s.eps: flags[s.key()] for s in grid}
    small, middle, large = (by_eps[eps] for eps in sorted(by_eps))
    assert nonmonotone_images(by_eps) == 0
    assert not (middle & ~small).any() and not (large & ~middle).any()
    assert small.sum() > middle.sum() > large.sum() > 0  # each epsilon broke some images, not all
    # each epsilon attacked only the images robust at the previous one (the clean-correct ones at the first) ...
    assert sum(attacked_images) == (N_IMAGES - len(WRONG_LABELS)) + small.sum() + middle.sum()
    # ... as plain AutoAttack calls would, one per epsilon on those images
    expected = direct_monotone_flags(model, x, y, tuple(by_eps))
    for eps, robust in by_eps.items():
        np.testing.assert_array_equal(robust, expected[eps])
    np.testing.assert_array_equal(small, direct_flags(model, x, y, settings(eps=0.5 / 255)))  # the first: as ever
    assert not list(tmp_path.glob("*.examples.npz"))  # the carried examples go when the grid is done


def test_monotone_grid_resumes_mid_grid_as_if_never_interrupted(model, data, tmp_path, counting):
    x, y = data
    grid = monotone_grid(attacks=("apgd-ce", "apgd-dlr"))
    first, middle, _ = sorted(grid, key=lambda s: s.eps)
    uninterrupted = attack_shard(model, x, y, grid, tmp_path / "uninterrupted")
    counting.fail_on_attack, counting.fail_on_eps = "apgd-dlr", middle.eps  # after the middle epsilon's APGD-CE
    with pytest.raises(RuntimeError, match="during an attack"):
        attack_shard(model, x, y, grid, tmp_path / "resumed")
    state = tmp_path / "resumed"
    assert (state / f"{first.key()}.done.npy").exists() and (state / f"{first.key()}.examples.npz").exists()
    assert json.loads((state / f"{middle.key()}.progress.json").read_text())["attacks_done"] == ["apgd-ce"]
    assert (state / f"{middle.key()}.examples.npz").exists()  # what APGD-CE broke there, for the largest epsilon

    counting.constructions, counting.fail_on_attack = 0, None
    resumed = attack_shard(model, x, y, grid, state)
    assert counting.constructions == 2  # the middle and the largest epsilon; the smallest was done
    for chosen in grid:
        np.testing.assert_array_equal(resumed[chosen.key()], uninterrupted[chosen.key()])
    assert not list(state.glob("*.examples.npz")) and not list(state.glob("*.progress.json"))


def test_carried_examples_that_fail_the_check_are_attacked_again(model, data, tmp_path, counting, attacked_images):
    x, y = data
    grid = monotone_grid()
    first, middle, last = sorted(grid, key=lambda s: s.eps)
    counting.fail_on_attack, counting.fail_on_eps = "apgd-ce", middle.eps
    with pytest.raises(RuntimeError, match="during an attack"):
        attack_shard(model, x, y, grid, tmp_path)
    small = np.load(tmp_path / f"{first.key()}.done.npy")
    with np.load(tmp_path / f"{first.key()}.examples.npz") as stored:
        lost = stored["index"]
    assert len(lost) > 0
    (tmp_path / f"{first.key()}.examples.npz").unlink()  # the clean images stand in for them: the check refuses them

    counting.fail_on_attack = None
    attacked_images.clear()
    flags = attack_shard(model, x, y, grid, tmp_path)
    assert sum(attacked_images) == small.sum() + len(lost) + flags[middle.key()].sum()
    again = small.copy()
    again[lost] = True
    index = np.flatnonzero(again)
    expected = np.zeros(N_IMAGES, dtype=bool)
    expected[index] = direct_flags(model, x[index], y[index], settings(eps=middle.eps))
    np.testing.assert_array_equal(flags[middle.key()], expected)  # the robust ones and the refused ones attacked


def test_monotone_shards_are_each_their_own_grid_and_merge_exactly(model, data, tmp_path):
    x, y = data
    grid = monotone_grid()
    parts = []
    for shard in range(3):
        start, stop = shard_bounds(N_IMAGES, 3, shard)
        flags = attack_shard(model, x[start:stop], y[start:stop], grid, tmp_path / f"shard {shard}")
        expected = direct_monotone_flags(model, x[start:stop], y[start:stop], tuple(s.eps for s in grid))
        for chosen in grid:
            np.testing.assert_array_equal(flags[chosen.key()], expected[chosen.eps])
        parts.append(flags)
    merged = {s.eps: np.concatenate([part[s.key()] for part in parts]) for s in grid}
    assert nonmonotone_images(merged) == 0
    for chosen in grid:
        assert merged[chosen.eps].mean() == sum(int(part[chosen.key()].sum()) for part in parts) / N_IMAGES


def test_a_monotone_pair_needs_its_smaller_epsilons(model, data, tmp_path, monkeypatch):
    forbid_autoattack(monkeypatch)
    with pytest.raises(ValueError, match="continues a monotone grid from eps 0.00392157, which is not among"):
        attack_shard(model, *data, monotone_grid()[:2], tmp_path)


# --- APGD's random starts -----------------------------------------------------------------------------------------

@pytest.fixture
def apgd_starts(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Every APGD single run's images and the start point it was given (None: APGD draws its own)."""
    starts, real_single_run = [], APGDAttack.attack_single_run

    def recording(self, x, y, x_init=None):
        starts.append((x.clone(), None if x_init is None else x_init.clone()))
        return real_single_run(self, x, y, x_init=x_init)

    monkeypatch.setattr(APGDAttack, "attack_single_run", recording)
    return starts


def test_image_fingerprints_depend_on_the_image_alone(data):
    x = data[0]  # 24 images: more than one block of FINGERPRINT_ROWS
    fingerprints = image_fingerprints(x)
    assert fingerprints.dtype == torch.int64 and len(set(fingerprints.tolist())) == N_IMAGES
    order = torch.randperm(N_IMAGES, generator=torch.Generator().manual_seed(3))
    assert torch.equal(image_fingerprints(x[order]), fingerprints[order])
    assert torch.equal(image_fingerprints(x[5:6]), fingerprints[5:6])
    changed = x[:1].clone()
    changed[0, 2, 15, 15] = torch.nextafter(changed[0, 2, 15, 15], torch.tensor(2.0))  # one bit of one pixel
    assert image_fingerprints(changed).item() != fingerprints[0].item()


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_per_image_starts_follow_the_image_not_its_batch(model, data, norm, apgd_starts):
    x, y = data
    eps = 2 / 255 if norm == "Linf" else 0.3
    starts = {}
    for batch_size in (4, 7):  # other batches around each image
        direct_flags(model, x, y, settings(eps=eps, batch_size=batch_size, norm=norm))
        pairs = [(image, start) for images, given in apgd_starts for image, start in zip(images, given, strict=True)]
        apgd_starts.clear()
        starts[batch_size] = {image.numpy().tobytes(): start for image, start in pairs}
    assert starts[4].keys() == starts[7].keys() and len(starts[4]) == N_IMAGES - len(WRONG_LABELS)
    for image, start in starts[4].items():
        torch.testing.assert_close(start, starts[7][image], rtol=0, atol=0)
    first = torch.stack(list(starts[4].values()))
    clean = torch.stack([torch.from_numpy(np.frombuffer(image, dtype=np.float32).reshape(x.shape[1:]).copy())
                         for image in starts[4]])
    size = (first - clean).flatten(1)
    # AutoAttack's start: Linf noise scaled so that its largest pixel is eps; L2 noise scaled to norm eps
    measured = size.abs().amax(dim=1) if norm == "Linf" else size.norm(dim=1)
    torch.testing.assert_close(measured, torch.full_like(measured, eps))
    assert len({start.numpy().tobytes() for start in first}) == len(first)  # each image its own noise


def test_per_image_starts_differ_between_restarts_and_leave_l1_to_autoattack(model, data, apgd_starts, monkeypatch):
    x, y = data

    class TwoRestarts(FastAutoAttack):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.apgd.n_restarts = 2

    monkeypatch.setattr(pyautoattack, "AutoAttack", TwoRestarts)
    autoattack = TwoRestarts(model, norm="Linf", eps=0.5 / 255, version="custom", attacks=["apgd-ce"], seed=0)
    per_image_random_starts(autoattack)
    autoattack.run_standard_evaluation(x[:4], y[:4], batch_size=4)
    (first_images, first), (second_images, second) = apgd_starts  # the second restart: the images still robust
    assert 0 < len(second_images) <= len(first_images)
    again = [row for row, image in enumerate(first_images) if any(torch.equal(image, o) for o in second_images)]
    assert not torch.equal(first[again], second)

    apgd_starts.clear()
    autoattack = FastAutoAttack(model, norm="L1", eps=2.0, version="custom", attacks=["apgd-ce"], seed=0)
    per_image_random_starts(autoattack)
    autoattack.run_standard_evaluation(x[:4], y[:4], batch_size=4)
    assert apgd_starts and all(start is None for _, start in apgd_starts)  # APGD's own sparse L1 start


def test_per_image_starts_make_shards_and_the_monotone_grid_agree_with_one_independent_run(model, data, tmp_path):
    x, y = data
    epsilons = (0.5 / 255, 1 / 255, 2 / 255)
    independent = grid_settings({"Linf": epsilons}, "independent", version="custom", attacks=["apgd-ce"], seed=0,
                                batch_size=5)
    whole = attack_shard(model, x, y, independent, tmp_path / "whole")
    monotone = monotone_grid(epsilons)
    parts = [attack_shard(model, x[a:b], y[a:b], monotone, tmp_path / f"shard {shard}")
             for shard, (a, b) in enumerate(shard_bounds(N_IMAGES, 3, shard) for shard in range(3))]
    merged = {s.eps: np.concatenate([part[s.key()] for part in parts]) for s in monotone}
    robust_before = np.ones(N_IMAGES, dtype=bool)
    for chosen in independent:
        flags = whole[chosen.key()]
        # each image the monotone grid attacks at this eps meets the same attack as in the independent run (other
        # batches, other batch size, split into shards): robust there exactly when robust here and at every smaller
        # eps, so its robust accuracy is never higher
        np.testing.assert_array_equal(merged[chosen.eps], flags & robust_before)
        robust_before &= flags
    assert 0 < merged[max(epsilons)].sum() < merged[min(epsilons)].sum()  # the grid broke some images, not all

"""AutoAttack robustness evaluation of one test-set shard, resumable and refusing mixed state (SCIENCE.md section 5).

What pyautoattack 0.2.0 really does, and what this module builds on it:

- ``run_standard_evaluation(x, y, batch_size=...)`` returns ``(x_adv, y_adv)``. Its per-sample robust flags (clean
  correct and still correct after every attack, the worst case over its attacks) live in its ``EvaluationState``;
  they equal ``y_adv == y`` exactly, because ``y_adv`` starts as the clean prediction and is overwritten only for
  samples an attack fooled. We derive the flags that way, from the public return value.
- The seed is re-applied (``torch.manual_seed``) before every batch of every attack, so flags depend on the seed,
  the batch size and the batch composition, and the global torch RNG is reseeded as a side effect. By default
  (``random_start="image"``) this module draws APGD's random start per image instead, from the seed, the restart
  and the image's bytes (:func:`per_image_random_starts`): on Linf and L2 an image's APGD result then no longer
  depends on its batch, so shards give the flags of one run over all images, and a monotone grid attacks each image
  it attacks exactly as the independent grid does. ``random_start="batch"`` keeps AutoAttack's own.
- Its ``state_path`` does not resume in 0.2.0: the state file stores the attack set as the text of a Python set,
  so reloading it always fails with "created with a different set of attacks" (and the restored path would hit an
  unbound ``y_adv``). It also records no norm, eps, seed or images. So this module does not pass ``state_path``;
  it keeps its own state instead, at the same granularity as AutoAttack's (after each attack):

      state_dir/manifest.json          key -> settings, image count, label hash, pyautoattack version
      state_dir/<key>.progress.json    attacks finished so far and the robust flags after them
      state_dir/<key>.done.npy         the final robust flags of a (norm, eps) pair: never recomputed

  Running the attacks one at a time, each on the still-robust samples in index order, gives exactly the batches
  (hence the flags) of one AutoAttack call over all attacks: AutoAttack forms each attack's batches the same way.
- ``version="custom"`` needs ``attacks``; the other versions refuse them. Norms: Linf, L2, L1.
- Every ``run_standard_evaluation`` call starts with the model checks of ``pyautoattack.checks``: five forward passes
  looking for randomness, one for the output range, and one traced pass (``sys.settrace``) looking for dynamic
  behaviour; all of them only log warnings. Called once per attack, (norm, eps) and shard, they were a fifth of a
  quick sharded attack's CPU time. This module checks the model once per shard instead, before any attack
  (:func:`check_model_for_attack` refuses what the first two would warn about, and pyautoattack's dynamic check
  runs once), and skips them inside its calls (:func:`_model_checked_once`).

Epsilon grids (``eps_grid``): ``independent`` attacks every clean-correct image at every epsilon. ``monotone`` walks
each norm's epsilons in ascending order: at each epsilon only the images still robust at the previous one are
attacked, and every image broken there carries its adversarial example forward; a forward pass checks it again
(:func:`still_adversarial`: still misclassified, inside the new ball and the [0, 1] box) before it counts as broken
at the new epsilon. One that fails the check is attacked again with the still-robust ones. The carried examples
are kept beside the flags until the whole grid is done:

      state_dir/<key>.examples.npz     a monotone pair's adversarial examples (image index, image) of the images its
                                       attacks broke; written before the progress they belong to, removed when
                                       every pair of the call is done

A monotone pair's flags are those of one AutoAttack call on the images it attacks (the previous pair's robust ones),
and its key covers the smaller epsilons before it, so state made for another grid is never mixed in.

Epsilons reach AutoAttack in pixel units of [0, 1] images. A sweep may give them in the model's normalisation units
instead, as the study did (SCIENCE.md section 5); :func:`pixel_epsilons` converts them with one SD
(:func:`conversion_sd`, which says why the smallest channel SD and how large the approximation is).

Only :func:`check_model_for_attack`, :func:`clean_correct`, :func:`still_adversarial` and :func:`attack_shard` need
torch and import it when called, so the login node can validate a sweep's attack settings
(:func:`validate_attack_settings`) without it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sfhpc.results import atomic_write

if TYPE_CHECKING:
    import torch

ATTACK_NAMES = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")  # pyautoattack's AttackName literal
NORMS = ("Linf", "L2", "L1")  # AutoAttack asserts norm in these
VERSIONS = ("standard", "plus", "rand", "custom")
EPS_UNITS = ("pixel", "normalized")  # epsilons in pixels of [0, 1] images, or in the model's normalisation units
EPS_GRIDS = ("monotone", "independent")  # each norm's epsilons attacked in ascending order, or each on its own
# APGD's random start drawn per image (from the seed, the restart and the image itself) or per batch (AutoAttack's
# own: one draw for the whole batch after reseeding, so an image's start depends on its place in its batch)
RANDOM_STARTS = ("image", "batch")
FINGERPRINT_SEED = 20261203  # fixes the weights of image_fingerprints: changing it changes every per-image start
FINGERPRINT_ROWS = 16  # images fingerprinted at a time
MANIFEST_NAME = "manifest.json"
PROBABILITY_TOLERANCE = 1e-4
DETERMINISM_TOLERANCE = 1e-6
# A carried adversarial example is inside the ball if its perturbation's norm is at most eps x (1 + relative) +
# absolute: float32 rounding of x + delta (about 1e-7 near 1) can put a projected Linf example a few ulps outside,
# and an L2 or L1 norm summed over 150,528 pixels carries a relative rounding error. Both are far below the study's
# smallest epsilon (Linf 0.001 normalized = 2.24e-4 pixels) and its steps.
BALL_RELATIVE_TOLERANCE = 1e-6
BALL_ABSOLUTE_TOLERANCE = 1e-6


def shard_bounds(n: int, n_shards: int, shard: int) -> tuple[int, int]:
    """[start, stop) of `shard` among `n_shards` contiguous, disjoint shards covering [0, n); sizes differ by <= 1."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be at least 1, got {n_shards}")
    if n_shards > n:
        raise ValueError(f"{n_shards} shards for {n} test images: some shards would be empty; use at most {n}")
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} is out of range for {n_shards} shards (0..{n_shards - 1})")
    base, extra = divmod(n, n_shards)
    start = shard * base + min(shard, extra)  # the first `extra` shards hold one image more
    return start, start + base + (shard < extra)


def validate_attack_settings(version: str, attacks: Sequence[str] | None, norms: Sequence[str],
                             epsilons: Mapping[str, Sequence[float]] | Sequence[float], n_shards: int,
                             n_test: int, unit: str = "pixel", std: Sequence[float] = ()) -> None:
    """Raise ValueError with the reason if AutoAttack would reject these settings or they make no sense.

    `epsilons` is either one list for every norm or a {norm: list} mapping with an entry per norm, in `unit`
    (normalized: converted with the model's per-channel SDs `std`, see :func:`pixel_epsilons`). Torch-free.
    """
    _validate_version_and_attacks(version, attacks)
    if not norms:
        raise ValueError("no norms given; choose from " + ", ".join(NORMS))
    for norm in norms:
        if norm not in NORMS:
            raise ValueError(f"norm {norm!r} is not supported by AutoAttack; choose from " + ", ".join(NORMS))
    per_norm = _epsilons_per_norm(norms, epsilons)
    for norm, values in per_norm.items():
        if len(values) == 0:
            raise ValueError(f"empty epsilon list for norm {norm}; give at least one epsilon")
        for eps in values:
            if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
                raise ValueError(f"epsilon {eps!r} for norm {norm} must be a finite number > 0 (clean accuracy "
                                 "is reported separately, so eps = 0 is not an attack setting)")
        twice = sorted({eps for eps in values if list(values).count(eps) > 1})
        if twice:
            raise ValueError(f"epsilon(s) {twice} given twice for norm {norm}; each (norm, eps) is attacked once")
    pixel_epsilons(per_norm, unit, std)  # an unknown unit, or a Linf ball that holds every image
    if n_shards < 1:
        raise ValueError(f"n_shards must be at least 1, got {n_shards}")
    if n_shards > n_test:
        raise ValueError(f"{n_shards} attack shards for a test set of {n_test} images: use at most {n_test}")


def _validate_version_and_attacks(version: str, attacks: Sequence[str] | None) -> None:
    if version not in VERSIONS:
        raise ValueError(f"unknown AutoAttack version {version!r}; choose from " + ", ".join(VERSIONS))
    if version == "custom" and not attacks:
        raise ValueError("version 'custom' needs a non-empty list of attacks; choose from " + ", ".join(ATTACK_NAMES))
    if version != "custom" and attacks:
        raise ValueError(f"version {version!r} fixes its own attacks; list attacks only with version 'custom'")
    for attack in attacks or ():
        if attack not in ATTACK_NAMES:
            raise ValueError(f"unknown attack {attack!r}; choose from " + ", ".join(ATTACK_NAMES))
    if attacks and len(set(attacks)) != len(attacks):
        raise ValueError(f"attacks {list(attacks)} name an attack twice")


def _epsilons_per_norm(norms: Sequence[str], epsilons: Mapping[str, Sequence[float]] | Sequence[float]
                       ) -> dict[str, Sequence[float]]:
    """The epsilon list of each norm; a mapping must cover exactly the chosen norms."""
    if not isinstance(epsilons, Mapping):
        return {norm: epsilons for norm in norms}
    extra = sorted(set(epsilons) - set(norms))
    if extra:
        raise ValueError(f"epsilons given for norm(s) {extra} that are not among the attacked norms {list(norms)}")
    missing = [norm for norm in norms if norm not in epsilons]
    if missing:
        raise ValueError(f"no epsilon list for norm(s) {missing}")
    return {norm: epsilons[norm] for norm in norms}


def conversion_sd(std: Sequence[float]) -> float:
    """The one SD that converts an epsilon between the model's normalisation units and AutoAttack's isotropic pixel
    units (pixel = normalized x SD): the smallest of the per-channel SDs `std` the model divides its inputs by.

    The study attacked normalised inputs, (x - mean[c]) / std[c], within an isotropic ball of radius eps; in pixels
    that ball is stretched per channel, radius eps * std[c]. AutoAttack takes one pixel radius for all channels, so
    one SD must stand for three. With the smallest, AutoAttack's ball lies inside the study's in every channel and
    for every norm (|d[c]| / std[c] <= |d[c]| / min(std)): each adversarial image it finds is one the study's threat
    model allows too, so the approximation can only make the attack weaker than the study's, never stronger. Its
    size (:func:`conversion_error`): for ImageNet's SD (0.229, 0.224, 0.225) the largest relative difference between
    a channel's exact pixel radius and the one used is 2.18% (red; blue 0.44%, green 0), under a fifth of the
    study's finest step between epsilons (0.017 -> 0.019, 11.8%). The mean SD (0.226) would make it 1.31%, but its
    ball would reach beyond the study's in green and blue. (A difference that is not the SD's: Foolbox's bounds,
    (-3, 3) in normalised units, are about -0.27..-0.20 to 1.08..1.17 in pixels by channel, so the study's
    adversarial pixels could leave [0, 1] by up to eps; AutoAttack clips them to [0, 1].)
    """
    values = _checked_std(std)
    return min(values)


def conversion_error(std: Sequence[float]) -> float:
    """The largest relative difference between a channel's exact pixel epsilon (eps * std[c]) and the one AutoAttack
    is run with (eps * conversion_sd(std)): max over channels of (std[c] - sd) / std[c]."""
    sd = conversion_sd(std)
    return max((value - sd) / value for value in std)


def pixel_epsilons(epsilons: Mapping[str, Sequence[float]], unit: str, std: Sequence[float] = ()
                   ) -> dict[str, tuple[float, ...]]:
    """AutoAttack's pixel epsilons per norm for `epsilons` given in `unit`: pixel ones unchanged, normalized ones
    times conversion_sd(std) (`std`: the model's per-channel SDs, needed for normalized only).

    Raises ValueError for an unknown unit, and for a Linf epsilon that is 1 or more in pixels: a ball that holds
    every image in [0, 1], so no model could be robust in it. Torch-free: the login node checks a sweep with it."""
    if unit not in EPS_UNITS:
        raise ValueError(f"unknown epsilon unit {unit!r}; choose from " + ", ".join(EPS_UNITS))
    sd = conversion_sd(std) if unit == "normalized" else 1.0
    converted = {norm: tuple(float(eps) * sd for eps in values) for norm, values in epsilons.items()}
    for given, pixel in zip(epsilons.get("Linf", ()), converted.get("Linf", ()), strict=True):
        if pixel < 1:
            continue
        if unit == "pixel":
            raise ValueError(f"Linf epsilon {pixel:.4g} (pixel units of [0, 1] images) is 1 or more: a ball that "
                             "holds every image, so no model could be robust in it")
        raise ValueError(f"Linf epsilon {given:g} in normalized units is {pixel:.4g} in pixel units (x SD {sd:g}): "
                         "1 or more, a ball that holds every image in [0, 1]; the study's normalized epsilons were "
                         "0.001 to 0.019 (SCIENCE.md section 5)")
    return converted


def normalized_epsilon(pixel: float, std: Sequence[float]) -> float:
    """A pixel epsilon in the model's normalisation units: the inverse of the normalized-to-pixel conversion."""
    return pixel / conversion_sd(std)


def _checked_std(std: Sequence[float]) -> list[float]:
    values = [float(value) for value in std]
    if not values or not all(math.isfinite(value) and value > 0 for value in values):
        raise ValueError(f"normalisation SDs {list(std)} must be finite numbers > 0, one per channel")
    return values


@dataclass(frozen=True)
class AttackSettings:
    """One AutoAttack configuration: a (norm, eps) pair plus what makes its flags reproducible."""

    version: str
    attacks: tuple[str, ...] | None
    norm: str
    eps: float
    seed: int
    batch_size: int
    apgd_iterations: int | None = None  # quick runs: fewer APGD iterations than AutoAttack's 100
    apgd_restarts: int | None = None  # quick runs: fewer APGD-CE restarts than the version's own
    eps_grid: str = "independent"  # monotone: attacked after this norm's smaller epsilons (see attack_shard)
    smaller_eps: tuple[float, ...] = ()  # monotone: the smaller epsilons of its norm's grid, ascending
    random_start: str = "image"  # APGD's random starts per image or per batch (see per_image_random_starts)

    def __post_init__(self) -> None:
        if self.attacks is not None:  # accept a list, but keep the frozen value hashable
            object.__setattr__(self, "attacks", tuple(self.attacks))
        object.__setattr__(self, "smaller_eps", tuple(self.smaller_eps))
        validate_attack_settings(self.version, self.attacks, [self.norm], [self.eps], 1, 1)
        self._check_grid()
        if self.random_start not in RANDOM_STARTS:
            raise ValueError(f"unknown random start {self.random_start!r}; choose from " + ", ".join(RANDOM_STARTS))
        # epsilons as floats, as grid_settings gives them: settings equal as values (eps 1 == 1.0) then also have one
        # key, which _settings_key caches by value
        object.__setattr__(self, "eps", float(self.eps))
        object.__setattr__(self, "smaller_eps", tuple(float(eps) for eps in self.smaller_eps))
        # AutoAttack falls back to time.time() for a None seed: flags would not be reproducible
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        for name in ("apgd_iterations", "apgd_restarts"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")

    def _check_grid(self) -> None:
        if self.eps_grid not in EPS_GRIDS:
            raise ValueError(f"unknown epsilon grid {self.eps_grid!r}; choose from " + ", ".join(EPS_GRIDS))
        if self.smaller_eps and self.eps_grid != "monotone":
            raise ValueError("smaller_eps belongs to a monotone grid; an independent pair is attacked on its own")
        steps = (*self.smaller_eps, self.eps)
        if any(not (isinstance(eps, int | float) and 0 < eps < larger) for eps, larger in itertools.pairwise(steps)):
            raise ValueError(f"smaller_eps {list(self.smaller_eps)} must ascend, each > 0, below eps {self.eps}")

    def identity(self) -> dict[str, Any]:
        """What makes this pair's flags: every field, except that an independent pair leaves the grid fields out and
        a pair with AutoAttack's own per-batch random starts leaves that field out (their keys and manifest entries
        are those written before grids and per-image starts existed, so their state stays valid)."""
        fields = asdict(self)
        if self.eps_grid == "independent":
            del fields["eps_grid"], fields["smaller_eps"]
        if self.random_start == "batch":
            del fields["random_start"]
        return fields

    def key(self) -> str:
        """Readable, stable identity naming this pair's state files; the hash covers the exact eps (and a monotone
        pair's smaller epsilons)."""
        return _settings_key(self)

    def previous(self) -> AttackSettings | None:
        """A monotone pair's predecessor in its grid (the next smaller epsilon), None for the first or an
        independent pair."""
        if not self.smaller_eps:
            return None
        return replace(self, eps=self.smaller_eps[-1], smaller_eps=self.smaller_eps[:-1])


@functools.lru_cache(maxsize=4096)
def _settings_key(settings: AttackSettings) -> str:
    # Computed once per settings (a frozen, hashable value): a shard names its state files dozens of times, and
    # asdict + json + sha256 each time was a measurable part of a small shard's fixed cost.
    exact = json.dumps(settings.identity(), sort_keys=True)
    digest = hashlib.sha256(exact.encode()).hexdigest()[:8]
    attacks = "-" + "+".join(settings.attacks) if settings.attacks else ""
    grid = "-monotone" if settings.eps_grid == "monotone" else ""
    return (f"{settings.norm}-eps={settings.eps:.6g}-{settings.version}{attacks}-seed={settings.seed}"
            f"-bs={settings.batch_size}{grid}-{digest}")


def grid_settings(epsilons: Mapping[str, Sequence[float]], eps_grid: str, *, version: str,
                  attacks: Sequence[str] | None, seed: int, batch_size: int, apgd_iterations: int | None = None,
                  apgd_restarts: int | None = None, random_start: str = "image") -> list[AttackSettings]:
    """One AttackSettings per (norm, eps), in the given order; in a monotone grid each knows its norm's smaller
    epsilons, which attack_shard attacks first."""
    names = tuple(attacks) if attacks else None
    return [AttackSettings(version, names, norm, float(eps), seed, batch_size, apgd_iterations, apgd_restarts, eps_grid,
                           tuple(sorted(float(e) for e in values if e < eps)) if eps_grid == "monotone" else (),
                           random_start)
            for norm, values in epsilons.items() for eps in values]


def nonmonotone_images(flags_by_eps: Mapping[float, np.ndarray]) -> int:
    """How many images of one norm are robust at some epsilon after being broken at a smaller one (0: the flags
    are monotone). `flags_by_eps`: eps -> per-image robust flags."""
    ascending = [flags_by_eps[eps] for eps in sorted(flags_by_eps)]
    if not ascending:
        return 0
    broken_before = np.zeros_like(ascending[0], dtype=bool)
    violating = np.zeros_like(broken_before)
    for flags in ascending:
        violating |= broken_before & flags
        broken_before |= ~flags
    return int(violating.sum())


def check_model_for_attack(model: torch.nn.Module, x: torch.Tensor, device: Any = "cpu", *,
                           allow_randomized: bool = False) -> int:
    """Put `model` in eval mode and refuse, before any attack, a model AutoAttack would evaluate wrongly; returns
    its number of classes.

    `x` is a batch of the real inputs. AutoAttack itself only logs warnings for these cases; a probability output
    weakens the gradient attacks, and a random model makes flags irreproducible (version 'rand' is the exception,
    hence `allow_randomized`).
    """
    import torch

    model.eval()
    batch = x.to(device)
    with torch.no_grad():
        first, second = model(batch), model(batch)
    if first.ndim != 2 or first.shape[1] < 2:
        raise ValueError(f"model output has shape {tuple(first.shape)}; AutoAttack needs (batch, classes) logits")
    row_sums = first.sum(dim=1)
    if bool((first >= 0).all()) and bool(((row_sums - 1).abs() <= PROBABILITY_TOLERANCE).all()):
        raise ValueError("model outputs probabilities (rows sum to 1); AutoAttack needs logits: remove the final "
                         "softmax")
    if not allow_randomized and float((first - second).abs().max()) > DETERMINISM_TOLERANCE:
        raise ValueError("model is not deterministic: two eval-mode passes over the same batch differ (dropout in "
                         "train mode? random transforms?); AutoAttack flags would not be reproducible")
    return int(first.shape[1])


@contextlib.contextmanager
def _model_checked_once(model: torch.nn.Module, x: torch.Tensor, n_classes: int, device: Any) -> Iterator[None]:
    """Inside: pyautoattack's per-call model checks are skipped, the model having been checked for the shard.
    pyautoattack's own dynamic-defence check (warnings only) runs here once."""
    from pyautoattack import checks

    checks.check_dynamic(model, x[:1].to(device), False, logger=None)  # it counts calls: one image is enough
    saved = checks.check_randomized, checks.check_range_output, checks.check_dynamic
    checks.check_randomized = checks.check_dynamic = lambda *args, **kwargs: None
    checks.check_range_output = lambda *args, **kwargs: n_classes  # what the real one returns after its check
    try:
        yield
    finally:
        checks.check_randomized, checks.check_range_output, checks.check_dynamic = saved


def clean_correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                  device: Any = "cpu") -> np.ndarray:
    """Per-sample clean correctness (bool), in eval mode and in AutoAttack's own batches."""
    import torch

    model.eval()
    correct = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = model(x[start:start + batch_size].to(device))
            correct.append((logits.max(dim=1)[1].cpu() == y[start:start + batch_size].cpu()).numpy())
    return np.concatenate(correct) if correct else np.zeros(0, dtype=bool)


def still_adversarial(model: torch.nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, norm: str,
                      eps: float, batch_size: int, device: Any = "cpu") -> np.ndarray:
    """Per image (bool): `x_adv` is an adversarial example of (`x`, `y`) at (`norm`, `eps`): misclassified by `model`
    (a forward pass in eval mode, in batches of `batch_size`), inside the ball (its perturbation's norm at most eps,
    up to float32 rounding: BALL_RELATIVE_TOLERANCE, BALL_ABSOLUTE_TOLERANCE) and inside the [0, 1] box."""
    inside = np.zeros(len(x), dtype=bool)
    for start in range(0, len(x), batch_size):
        batch = slice(start, start + batch_size)
        delta = (x_adv[batch].detach().cpu().double() - x[batch].detach().cpu().double()).flatten(1)
        in_box = ((x_adv[batch] >= 0) & (x_adv[batch] <= 1)).flatten(1).all(dim=1).cpu()
        in_ball = perturbation_norms(delta, norm) <= eps * (1 + BALL_RELATIVE_TOLERANCE) + BALL_ABSOLUTE_TOLERANCE
        inside[batch] = (in_ball & in_box).numpy()
    return inside & ~clean_correct(model, x_adv, y, batch_size, device)


def perturbation_norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """The `norm` of each row of `delta` (images flattened to rows), as AutoAttack measures its perturbations."""
    if norm == "Linf":
        return delta.abs().amax(dim=1)
    if norm == "L2":
        return delta.square().sum(dim=1).sqrt()
    if norm == "L1":
        return delta.abs().sum(dim=1)
    raise ValueError(f"norm {norm!r} is not supported by AutoAttack; choose from " + ", ".join(NORMS))


def attack_shard(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, settings_list: Sequence[AttackSettings],
                 state_dir: Path, device: Any = "cpu",
                 on_done: Callable[[AttackSettings, np.ndarray], None] | None = None) -> dict[str, np.ndarray]:
    """Robust flags of this shard's images for each settings, as {settings.key(): bool array of len(x)}.

    `x` is in pixel space [0, 1] (normalisation belongs inside the model). Finished pairs are loaded from
    `state_dir`, never redone; an interrupted pair resumes after its last finished attack. `on_done(settings,
    flags)` is called for each pair computed in this call. Refuses state made for other settings or images.
    A monotone pair needs the smaller epsilons of its grid in `settings_list` too: they are attacked first, and it
    attacks only the images still robust at the previous one (the module docstring says how).
    """
    _check_images(x, y)
    keys = [settings.key() for settings in settings_list]
    if len(set(keys)) != len(keys):
        raise ValueError("settings_list names the same attack settings twice")
    _check_grids_complete(settings_list)
    state_dir.mkdir(parents=True, exist_ok=True)
    _record_manifest(state_dir, settings_list, _shard_identity(y))
    flags_by_key = {settings.key(): _load_done(_done_path(state_dir, settings), len(x))
                    for settings in settings_list if _done_path(state_dir, settings).exists()}
    pending = [settings for settings in _in_grid_order(settings_list) if settings.key() not in flags_by_key]
    if pending:
        _attack_pending(model, x, y, pending, flags_by_key, state_dir, device, on_done)
    for settings in settings_list:  # every pair is done: no grid needs its carried examples any more
        _examples_path(state_dir, settings).unlink(missing_ok=True)
    return {settings.key(): flags_by_key[settings.key()] for settings in settings_list}


def _check_grids_complete(settings_list: Sequence[AttackSettings]) -> None:
    """Refuse a monotone pair whose predecessor (its grid's next smaller epsilon) is not attacked with it."""
    keys = {settings.key() for settings in settings_list}
    for settings in settings_list:
        previous = settings.previous()
        if previous is not None and previous.key() not in keys:
            raise ValueError(f"{settings.key()} continues a monotone grid from eps {previous.eps:.6g}, which is not "
                             "among the settings; attack a grid's epsilons together")


def _in_grid_order(settings_list: Sequence[AttackSettings]) -> list[AttackSettings]:
    """The settings with each monotone grid in ascending order (a pair after its smaller epsilons)."""
    return sorted(settings_list, key=lambda settings: len(settings.smaller_eps))  # stable: else the given order


def _attack_pending(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, pending: list[AttackSettings],
                    flags_by_key: dict[str, np.ndarray], state_dir: Path, device: Any,
                    on_done: Callable[[AttackSettings, np.ndarray], None] | None) -> None:
    """Attack each pending pair in turn, after checking the model once, adding its flags to `flags_by_key`."""
    first_batch = x[:max(settings.batch_size for settings in pending)]
    n_classes = check_model_for_attack(model, first_batch, device,
                                       allow_randomized=all(settings.version == "rand" for settings in pending))
    clean: dict[int, np.ndarray] = {}  # batch size -> clean correctness: one pass per shard, not one per pair
    with _model_checked_once(model, first_batch, n_classes, device):
        for settings in pending:
            previous = settings.previous()
            if previous is None:  # AutoAttack's first pass
                if settings.batch_size not in clean:
                    clean[settings.batch_size] = clean_correct(model, x, y, settings.batch_size, device)
                attacked = clean[settings.batch_size].copy()  # each pair its own flags array
            else:
                attacked = _robust_or_unconfirmed(model, x, y, settings, flags_by_key[previous.key()], state_dir,
                                                  device)
            flags = _attack_pair(model, x, y, settings, attacked, state_dir, device)
            _save_flags(_done_path(state_dir, settings), flags)
            _progress_path(state_dir, settings).unlink(missing_ok=True)
            flags_by_key[settings.key()] = flags
            if on_done is not None:
                on_done(settings, flags)


def _robust_or_unconfirmed(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, settings: AttackSettings,
                           previous_flags: np.ndarray, state_dir: Path, device: Any) -> np.ndarray:
    """The images a monotone pair attacks: those robust at the previous epsilon, and those broken there whose
    carried adversarial example fails the check at this epsilon (attacked again rather than trusted). A clean-
    incorrect image carries itself."""
    import torch

    carried = np.flatnonzero(~previous_flags)
    confirmed = np.zeros(len(x), dtype=bool)
    if len(carried):
        index = torch.from_numpy(carried)
        examples = _carried_examples(state_dir, settings, x)
        confirmed[carried] = still_adversarial(model, x[index], examples[index], y[index], settings.norm,
                                               settings.eps, settings.batch_size, device)
    return ~confirmed


def _carried_examples(state_dir: Path, settings: AttackSettings, x: torch.Tensor) -> torch.Tensor:
    """`x` with each image broken at a smaller epsilon of the grid replaced by its adversarial example from there
    (the latest one, where an image was broken again after failing the check)."""
    import torch

    examples = x.clone()
    previous = settings.previous()
    earlier = []
    while previous is not None:
        earlier.append(previous)
        previous = previous.previous()
    for pair in reversed(earlier):  # ascending, so a later example replaces an earlier one
        index, images = _read_examples(_examples_path(state_dir, pair), x)
        examples[torch.from_numpy(index)] = images
    return examples


def _check_images(x: torch.Tensor, y: torch.Tensor) -> None:
    """Refuse inputs AutoAttack would silently attack wrongly: normalised images, mismatched labels."""
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"{len(x)} images and {len(y)} labels: need the same, non-zero number")
    if y.is_floating_point():
        raise ValueError("labels must be integer class indices")
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 1:  # eps is meant in [0, 1] pixel units; normalised images change its meaning
        raise ValueError(f"images must be in pixel space [0, 1] with normalisation inside the model; got values "
                         f"in [{low:.3g}, {high:.3g}]")


def _shard_identity(y: torch.Tensor) -> dict[str, Any]:
    """What ties state to these images: their count, a hash of their labels, and the attack code's version."""
    labels = y.detach().cpu().numpy().astype("<i8")
    return {"n_images": len(labels), "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest(),
            "pyautoattack": _pyautoattack_version()}


@functools.cache  # importlib.metadata scans the installed distributions on every call
def _pyautoattack_version() -> str:
    try:
        return metadata.version("pyautoattack")
    except metadata.PackageNotFoundError:
        return "unknown"


def _done_path(state_dir: Path, settings: AttackSettings) -> Path:
    return state_dir / f"{settings.key()}.done.npy"


def _progress_path(state_dir: Path, settings: AttackSettings) -> Path:
    return state_dir / f"{settings.key()}.progress.json"


def _record_manifest(state_dir: Path, settings_list: Sequence[AttackSettings], identity: dict[str, Any]) -> None:
    """Add each key's settings and shard identity to the manifest; refuse a key recorded for anything else."""
    manifest_path = state_dir / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    for settings in settings_list:
        key = settings.key()
        entry = {"settings": json.loads(json.dumps(settings.identity())), **identity}
        if key not in manifest:
            if _done_path(state_dir, settings).exists() or _progress_path(state_dir, settings).exists():
                raise ValueError(f"state for {key} in {state_dir} has no manifest entry, so what it was made for is "
                                 "unknown; remove it or use another state folder")
            manifest[key] = entry
        elif manifest[key] != entry:
            raise ValueError(f"state {key} in {state_dir} was made for other settings/images; recorded "
                             f"{manifest[key]}, now {entry}; use another state folder rather than mixing results")
    atomic_write(manifest_path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True)))


def _load_done(path: Path, n_images: int) -> np.ndarray:
    flags = np.load(path)
    if flags.dtype != bool or flags.shape != (n_images,):
        raise ValueError(f"{path} holds {flags.dtype} flags of shape {flags.shape}, not {n_images} booleans")
    return flags


def _save_flags(path: Path, flags: np.ndarray) -> None:
    atomic_write(path, lambda tmp: np.save(tmp, flags), suffix=".npy")  # np.save keeps a name ending in .npy


def _save_progress(path: Path, finished: list[str], robust: np.ndarray) -> None:
    text = json.dumps({"attacks_done": finished, "robust": robust.astype(int).tolist()})
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _attack_pair(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, settings: AttackSettings,
                 attacked: np.ndarray, state_dir: Path, device: Any) -> np.ndarray:
    """Robust flags after all of the settings' attacks on the images `attacked` marks (the others are not robust),
    checkpointed after each attack; a monotone pair also keeps the adversarial examples its attacks find."""
    import pyautoattack  # looked up at call time, so tests can stand in for AutoAttack
    import torch

    autoattack = pyautoattack.AutoAttack(model, norm=settings.norm, eps=settings.eps, version=settings.version,
                                         attacks=list(settings.attacks) if settings.attacks else None,
                                         seed=settings.seed, device=device)
    _shorten_apgd(autoattack, settings)
    if settings.random_start == "image":
        per_image_random_starts(autoattack)
    order = list(autoattack.attacks_to_run)  # a version's own list, or the custom one
    progress_path, examples_path = _progress_path(state_dir, settings), _examples_path(state_dir, settings)
    finished, robust = _load_progress(progress_path, order, len(x))
    if robust is None:
        robust = attacked
    found, examples = None, None
    if settings.eps_grid == "monotone":
        found, examples = np.zeros(len(x), dtype=bool), x.clone()
        index, images = _read_examples(examples_path, x)
        found[index], examples[torch.from_numpy(index)] = True, images
        found &= ~robust  # examples of an attack whose progress a crash did not save: it runs again
    if "fab-t" in finished:
        autoattack.fab.n_restarts = 1  # running fab-t leaves this set for later attacks in one AutoAttack call
    for attack in order[len(finished):]:
        if not robust.any():
            break  # as AutoAttack: nothing left to attack
        updated, index, adversarial = _run_attack(autoattack, attack, x, y, robust, settings.batch_size)
        if found is not None and examples is not None:
            broken = ~updated[index]
            examples[torch.from_numpy(index[broken])] = adversarial[torch.from_numpy(broken)].to(examples.device)
            found[index[broken]] = True
            _save_examples(examples_path, found, examples)  # before the progress that relies on them
        robust = updated
        finished.append(attack)
        if len(finished) < len(order):  # after the last attack the caller saves the pair's flags as done
            _save_progress(progress_path, finished, robust)
    return robust


def _shorten_apgd(autoattack: Any, settings: AttackSettings) -> None:
    """Quick runs: fewer APGD iterations and restarts, with APGD's step schedule scaled as its constructor does."""
    for apgd in (autoattack.apgd, autoattack.apgd_targeted):
        if settings.apgd_iterations:
            n_iter = settings.apgd_iterations
            apgd.n_iter = apgd.n_iter_orig = n_iter
            apgd.n_iter_2, apgd.n_iter_min = max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1)
            apgd.size_decr = max(int(0.03 * n_iter), 1)
    if settings.apgd_restarts:
        autoattack.apgd.n_restarts = settings.apgd_restarts


def per_image_random_starts(autoattack: Any) -> None:
    """Draw the random start of `autoattack`'s APGD attacks (APGD-CE, APGD-DLR, APGD-T) per image on Linf and L2:
    from a generator seeded with AutoAttack's seed, the restart (for APGD-T: target class and restart, in APGD's
    order) and the image's own bytes, instead of one draw for the whole batch after reseeding.

    The start has AutoAttack's distribution (Linf: uniform noise scaled so that its largest pixel is eps; L2:
    Gaussian noise scaled to norm eps; then clipped to [0, 1]), and APGD treats every other step per image (its
    step sizes, checkpoints and restarts are per image), so an image's APGD result no longer depends on which images
    share its batch: shards give the flags of one run over all images, and a monotone grid's epsilon attacks each
    image it attacks exactly as the independent grid does (so its robust accuracy is never higher). pyautoattack's
    APGD passes no start point of its own on these norms; on L1 it does (its sparse start and its step schedule
    depend on it), so L1 keeps AutoAttack's per-batch start, as do FAB and Square, which draw at every step."""
    for apgd in (autoattack.apgd, autoattack.apgd_targeted):
        _draw_starts_per_image(apgd)


def _draw_starts_per_image(apgd: Any) -> None:
    real_perturb, real_single_run = apgd.perturb, apgd.attack_single_run
    runs = itertools.count()

    def perturb(*args: Any, **kwargs: Any) -> Any:
        nonlocal runs
        runs = itertools.count()  # APGD's single runs of this batch: its restarts (APGD-T: per target class)
        return real_perturb(*args, **kwargs)

    def attack_single_run(x: torch.Tensor, y: torch.Tensor, x_init: torch.Tensor | None = None) -> Any:
        run = next(runs)  # every image still attacked takes part in every single run before this one
        if x_init is None and apgd.norm in ("Linf", "L2"):
            x_init = _random_start(x, apgd.norm, apgd.eps, apgd.seed, run, apgd.normalize)
        return real_single_run(x, y, x_init=x_init)

    apgd.perturb, apgd.attack_single_run = perturb, attack_single_run


def _random_start(x: torch.Tensor, norm: str, eps: float, seed: Any, run: int,
                  normalize: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """APGD's random start point for `x` (its own expression), with each image's noise from its own generator on
    x's device, seeded from the seed, the single run and the image's fingerprint (one small host copy per batch)."""
    import torch

    noise = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    for row, fingerprint in enumerate(image_fingerprints(x).tolist()):
        digest = hashlib.blake2b(f"{seed}:{run}:{fingerprint}".encode(), digest_size=8).digest()
        generator = torch.Generator(device=x.device).manual_seed(int.from_bytes(digest, "little"))
        if norm == "Linf":
            noise[row] = 2 * torch.rand(x.shape[1:], generator=generator, device=x.device) - 1
        else:
            noise[row] = torch.randn(x.shape[1:], generator=generator, device=x.device)
    return x + eps * torch.ones_like(x).detach() * normalize(noise)


def image_fingerprints(x: torch.Tensor) -> torch.Tensor:
    """An integer per image of `x`, from its float32 bytes alone: the same image gives the same integer in any batch
    and on any device (a weighted sum of its 16-bit halves, exact in int64 in any order of summation); different
    images share one with a chance of at most 2^-bits (2^-27 at 224 px; see _fingerprint_weights). Computed where
    `x` is, without copying the images to the host."""
    import torch

    bits = x.detach().to(torch.float32).contiguous().view(torch.int32).flatten(1)
    weights = _fingerprint_weights(bits.shape[1], str(x.device))
    parts = []
    for start in range(0, len(bits), FINGERPRINT_ROWS):  # bounded int64 temporaries (about 20 MB each at 224 px)
        words = bits[start:start + FINGERPRINT_ROWS].to(torch.int64)
        parts.append((words & 0xFFFF).mul_(weights[0]).sum(dim=1) + (words >> 16 & 0xFFFF).mul_(weights[1]).sum(dim=1))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64, device=x.device)


@functools.lru_cache(maxsize=8)
def _fingerprint_weights(n: int, device: str) -> torch.Tensor:
    # 2n terms below 2^16 x 2^bits each: their sum stays below 2^62, so int64 never overflows
    import torch

    bits = 61 - 16 - n.bit_length()
    if bits < 8:
        raise ValueError(f"images of {n} values are too large to fingerprint")
    generator = torch.Generator().manual_seed(FINGERPRINT_SEED)
    return torch.randint(0, 2 ** bits, (2, n), generator=generator, dtype=torch.int64).to(device)


def _run_attack(autoattack: Any, attack: str, x: torch.Tensor, y: torch.Tensor, robust: np.ndarray,
                batch_size: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Flags after one attack on the still-robust samples, in index order (AutoAttack's own batches for it), with
    the attacked samples' indices and AutoAttack's images for them (an adversarial example where it broke one)."""
    import torch

    index = np.flatnonzero(robust)
    rows = torch.from_numpy(index)
    autoattack.attacks_to_run = [attack]
    x_adv, y_adv = autoattack.run_standard_evaluation(x[rows], y[rows], batch_size=batch_size)
    updated = robust.copy()
    updated[index] = (y_adv.cpu() == y[rows].cpu()).numpy()
    return updated, index, x_adv.detach()


def _examples_path(state_dir: Path, settings: AttackSettings) -> Path:
    return state_dir / f"{settings.key()}.examples.npz"


def _save_examples(path: Path, found: np.ndarray, examples: torch.Tensor) -> None:
    """The found rows of `examples` with their indices; the others are the clean images, not stored."""
    import torch

    index = np.flatnonzero(found)
    images = examples[torch.from_numpy(index)].cpu().numpy()
    atomic_write(path, lambda tmp: np.savez(tmp, index=index, images=images), suffix=".npz")


def _read_examples(path: Path, x: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """(index, images): the adversarial examples stored in `path` for images of `x` (none when there is no file)."""
    import torch

    if not path.exists():
        return np.zeros(0, dtype=np.int64), x[:0].clone()
    with np.load(path) as stored:
        index, images = stored["index"], stored["images"]
    if images.shape[1:] != tuple(x.shape[1:]) or len(index) != len(images) or (index >= len(x)).any():
        raise ValueError(f"{path} holds {len(images)} examples of shape {images.shape[1:]} for indices up to "
                         f"{index.max(initial=-1)}; these are {len(x)} images of shape {tuple(x.shape[1:])}")
    return index, torch.from_numpy(images).to(dtype=x.dtype, device=x.device)


def _load_progress(path: Path, order: list[str], n_images: int) -> tuple[list[str], np.ndarray | None]:
    """Attacks finished and flags after them from an interrupted run, or ([], None) when there was none."""
    if not path.exists():
        return [], None
    progress = json.loads(path.read_text())
    finished, robust = progress["attacks_done"], np.array(progress["robust"], dtype=bool)
    if finished != order[:len(finished)] or robust.shape != (n_images,):
        raise ValueError(f"{path} was made for other settings/images (attacks {finished}, {robust.size} flags); "
                         f"expected a prefix of {order} and {n_images} flags")
    return finished, robust

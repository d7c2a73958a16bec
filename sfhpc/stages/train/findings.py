"""The study's claims (SCIENCE.md, opening paragraph), declared for the report's Findings section: each a seed-paired
contrast of the train stage's models on a metric of the attack, cbm or rsa stage, whose names come from those
stages' modules. The report tests whatever is declared here and gives each claim its verdict from the run's numbers
(sfhpc.report.findings); a claim whose conditions the sweep lacks is listed as such. Torch-free.

- premise: guided models (alpha > 0, trained predictor) are more robust (robust AUC, per norm) than their same-alpha
  shuffled-predictor control and than alpha = 0, and more so for a higher ROI (the highest against the lowest ROI the
  sweep guides with, in the hierarchy order of sfhpc.config.ROIS);
- (a) guidance shifts the CBM channel toward low frequencies (a lower centre) and toward the human channel (a
  smaller distance, in octaves, of the centre from 39.6 c/img), against the same-alpha shuffled control; and, by a
  second measure that needs no fitted channel (not the study's), guided models recognise their test images from
  lower frequencies (a lower low-pass half-accuracy cut-off, in octaves);
- (b) human-band steering does not raise robust AUC over the unguided, unsteered baseline (the study: no gain, or a
  loss): a significant loss is consistent, a significant gain contradicts;
- (c) LSF steering raises robust AUC over the baseline (modestly), and shifts the CBM centre further toward low
  frequencies than guidance does (its shift over the baseline against the guided models' over their control);
- (d) spectrally steered models (any band, alpha 0) gain less RSA rho (pooled layer) over the baseline than guided
  models gain over their control, at the guided ROI.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from sfhpc.config import ROIS
from sfhpc.evaluation.attack import NORMS
from sfhpc.models.bands import HUMAN_BASE_CPI
from sfhpc.report.model import Claim, Contrast, Report, Settings, split_variant
from sfhpc.stages.attack.report import auc_metric
from sfhpc.stages.cbm import CENTRE, LOWPASS_HALF
from sfhpc.stages.cbm.report import HUMAN_CHANNEL
from sfhpc.stages.rsa.report import POOLED_LAYER, report_metric
from sfhpc.stages.train import (
    ALPHA,
    BAND,
    PREDICTOR,
    ROI,
    SHUFFLED,
    is_baseline,
    is_guided,
    is_guided_by,
)

HUMAN_CENTRE_CPI = HUMAN_BASE_CPI * 2 ** HUMAN_CHANNEL[1]  # 39.6 c/img: the human channel's centre
LSF, HUMAN, NONE = "lsf", "human", "none"  # train stage bands (sfhpc.stages.train.Band)
CONTROL_AXES = ("seed", PREDICTOR)  # a guided model and its same-alpha shuffled control differ in these only
UNGUIDED_AXES = ("seed", ALPHA, PREDICTOR)
BASELINE_AXES = ("seed", BAND)
NEEDS_CONTROL = "guided models (alpha > 0, trained predictor) with their same-alpha shuffled-predictor controls"
NEEDS_AUC = "the attack stage (robust AUC)"
NEEDS_CBM = "the cbm stage (a fitted channel)"
NEEDS_LOWPASS = "the cbm stage (its low-pass measurement)"
NEEDS_RSA = "the rsa stage"
AUC_UNIT = "AUC (accuracy, 0-1)"


def octaves_from_human_channel(centre_cpi: float) -> float:
    """How far a channel centre lies from the human channel's, in octaves."""
    return abs(math.log2(centre_cpi / HUMAN_CENTRE_CPI)) if centre_cpi > 0 else math.nan


def _at(roi: str | None, rule: Callable[[Settings], bool]) -> Callable[[Settings], bool]:
    return lambda settings: rule(settings) and (roi is None or settings.get(ROI) == roi)


def _unguided(settings: Settings) -> bool:
    return float(settings.get(ALPHA, 0.0)) == 0


def _steered(band: str | None) -> Callable[[Settings], bool]:
    """Unguided models behind a front-end: this band, or any band (None)."""
    return lambda settings: (_unguided(settings) and settings.get(BAND, NONE) != NONE
                             and (band is None or settings.get(BAND) == band))


def _named(roi: str | None) -> str:
    return f"{roi}-guided" if roi is not None else "guided"


def guided_vs_control(roi: str | None) -> Contrast:
    return Contrast(_at(roi, is_guided), _at(roi, lambda s: is_guided_by(SHUFFLED, s)), CONTROL_AXES,
                    f"{_named(roi)} − same-alpha shuffled control")


def guided_vs_unguided(roi: str | None) -> Contrast:
    return Contrast(_at(roi, is_guided), _unguided, UNGUIDED_AXES, f"{_named(roi)} − alpha 0")


def steered_vs_baseline(band: str | None) -> Contrast:
    return Contrast(_steered(band), is_baseline, BASELINE_AXES,
                    f"{band or 'steered (any band)'} − baseline (band none, alpha 0)")


def _keys(report: Report, name: str) -> list[str]:
    """The report's metric keys of `name` (one per variant); [name] when it has none (the claim is then listed as not
    in this sweep)."""
    return [key for key in report.metrics if split_variant(key)[0] == name] or [name]


def _auc_keys(report: Report) -> list[str]:
    keys = [key for norm in NORMS for key in _keys(report, auc_metric(norm)) if key in report.metrics]
    return keys or [auc_metric(NORMS[0])]


def _guided_rois(report: Report) -> list[str | None]:
    """The ROIs the sweep's guided models are guided by, in hierarchy order; [None] without any."""
    found = {model.settings().get(ROI) for model in report.models if is_guided(model.settings())}
    return [roi for roi in ROIS if roi in found] or [None]


def study_claims(report: Report) -> list[Claim]:
    """The study's claims for this run: one row per claim, norm (and variant) and guided ROI present."""
    rois = _guided_rois(report)
    low, high = (rois[0], rois[-1]) if len(rois) > 1 else (ROIS[0], ROIS[-1])
    return [*_premise(report, rois, low, high), *_shift_to_low_frequencies(report, rois),
            *_steering(report, rois), *_rsa(report, rois)]


def _premise(report: Report, rois: list[str | None], low: str | None, high: str | None) -> list[Claim]:
    claims = []
    for key in _auc_keys(report):
        for roi in rois:
            claims += [
                Claim("premise", f"{_named(roi)} models are more robust than their same-alpha shuffled-predictor "
                      "control", key, AUC_UNIT, +1, guided_vs_control(roi), f"{NEEDS_CONTROL}, and {NEEDS_AUC}"),
                Claim("premise", f"{_named(roi)} models are more robust than unguided (alpha 0) models", key, AUC_UNIT,
                      +1, guided_vs_unguided(roi), f"guided and alpha 0 models of the same band, and {NEEDS_AUC}")]
        claims.append(Claim("premise", f"the robustness gain over the shuffled control is larger for {high} than for "
                            f"{low} guidance", key, AUC_UNIT, +1, guided_vs_control(high),
                            f"{NEEDS_CONTROL} for two ROIs ({low} and {high}), and {NEEDS_AUC}",
                            minus=guided_vs_control(low)))
    return claims


def _shift_to_low_frequencies(report: Report, rois: list[str | None]) -> list[Claim]:
    claims = []
    for key in _keys(report, CENTRE):
        for roi in rois:
            claims += [
                Claim("(a)", f"{_named(roi)} models' CBM channel centre is lower (toward low frequencies) than their "
                      "control's", key, "c/img", -1, guided_vs_control(roi), f"{NEEDS_CONTROL}, and {NEEDS_CBM}"),
                Claim("(a)", f"{_named(roi)} models' CBM channel centre is nearer the human channel "
                      f"({HUMAN_CENTRE_CPI:.1f} c/img) than their control's", key, "octaves from the human centre", -1,
                      guided_vs_control(roi), f"{NEEDS_CONTROL}, and {NEEDS_CBM}",
                      transform=octaves_from_human_channel)]
    for key in _keys(report, LOWPASS_HALF):
        claims += [Claim("(a)", f"{_named(roi)} models recognise their test images from lower frequencies than their "
                         "control (low-pass half-accuracy cut-off; not the study's measure)", key, "octaves", -1,
                         guided_vs_control(roi), f"{NEEDS_CONTROL}, and {NEEDS_LOWPASS}", transform=math.log2)
                   for roi in rois]
    return claims


def _steering(report: Report, rois: list[str | None]) -> list[Claim]:
    claims = []
    for key in _auc_keys(report):
        claims += [
            Claim("(b)", "human-band steering does not raise robustness over the baseline (study: no gain or a loss; "
                  "a significant loss is consistent)", key, AUC_UNIT, -1, steered_vs_baseline(HUMAN),
                  f"human-band and baseline models, and {NEEDS_AUC}"),
            Claim("(c)", "LSF steering raises robustness over the baseline (study: a modest gain)", key, AUC_UNIT, +1,
                  steered_vs_baseline(LSF), f"LSF and baseline models, and {NEEDS_AUC}")]
    for key in _keys(report, CENTRE):
        claims += [Claim("(c)", f"LSF steering shifts the CBM centre further toward low frequencies (over the "
                         f"baseline) than {_named(roi)} models shift over their control", key, "c/img", -1,
                         steered_vs_baseline(LSF), f"LSF and baseline models, {NEEDS_CONTROL}, and {NEEDS_CBM}",
                         minus=guided_vs_control(roi)) for roi in rois]
    return claims


def _rsa(report: Report, rois: list[str | None]) -> list[Claim]:
    claims = []
    for roi in rois:
        target = roi if roi is not None else ROIS[-1]
        for key in _keys(report, report_metric(POOLED_LAYER, target)):
            claims.append(Claim("(d)", f"spectrally steered models gain less RSA ρ ({target}, pooled layer) over the "
                                f"baseline than {_named(roi)} models gain over their control", key, "ρ", -1,
                                steered_vs_baseline(None), f"steered and baseline models, {NEEDS_CONTROL}, and "
                                f"{NEEDS_RSA}", minus=guided_vs_control(roi)))
    return claims


__all__ = ["HUMAN_CENTRE_CPI", "octaves_from_human_channel", "study_claims"]

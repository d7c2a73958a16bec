"""What the cbm stage adds to the report (torch-free): each model's fitted channel (bandwidth, centre, peak noise
sensitivity) and its clean grayscale accuracy, in rows labelled with the measure (the criterion and the decision
rule); each model without a channel, with the reason; its thresholds per band, kept per model for the channel
figure; the terminal's bandwidth and centre. h5py is imported when results are read, scipy (the band grid) and
matplotlib when the figure is drawn.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sfhpc.report.figures import figure_legend, new_figure, save_figure
from sfhpc.report.model import (
    Collection,
    Family,
    FigureSpec,
    Model,
    Report,
    ReportedMetric,
    StageReport,
    metric_columns,
    variant_key,
    variant_label,
)
from sfhpc.stages.cbm import (
    ABOVE_CRITERION_P,
    BAND_CENTRES_CURVE,
    BANDWIDTH,
    CENTRE,
    CHANNEL_FIT_ATTR,
    CLEAN_GRAYSCALE_ACCURACY,
    CRITERION_RULE_ATTR,
    DECISION_RULE_ATTR,
    LOWPASS_HALF,
    NOISE_SDS_CURVE,
    NOT_FITTED,
    PEAK_SENSITIVITY,
    SPEC,
    THRESHOLDS_CURVE,
    CbmParams,
    measure,
)

FAMILY = "cbm"
CBM_FIGURE = "cbm_channels.png"
HUMAN_CHANNEL = (4.0, 4.5, 0.4246)  # A, mu, sigma in band-index units: 1.00 octave at 39.6 c/img
DEFAULT_LEVELS = len(CbmParams.model_fields["cbm_noise_sds"].default)  # a result without its noise SDs: the study's
CHANNEL_METRICS = (
    ReportedMetric(BANDWIDTH, "CBM bandwidth (octaves)", FAMILY, ".2f", column="CBM bandwidth (octaves)"),
    ReportedMetric(CENTRE, "CBM centre (c/img)", FAMILY, ".1f", column="CBM centre (c/img)"),
    ReportedMetric(PEAK_SENSITIVITY, "CBM peak noise sensitivity", FAMILY),
    ReportedMetric(CLEAN_GRAYSCALE_ACCURACY, "CBM clean grayscale accuracy", FAMILY),
)

LOWPASS_METRIC = ReportedMetric(LOWPASS_HALF, "low-pass half-accuracy cut-off (c/img)", FAMILY, ".2f")


NO_CHANNEL = "no channel"  # a problem's state: the model was measured, and has no channel (the reason follows)
UNRECORDED_MEASURE = "criterion and decision rule not recorded (a result written before they were)"
MEASURES = "measures"  # Collection.extras: variant -> the measure of its first model, which its rows are labelled by


@dataclass(frozen=True)
class ModelThresholds:
    """What the channel figure draws of one model: its thresholds per band and the measure they were taken with."""

    centres: np.ndarray
    thresholds: np.ndarray
    measure: str
    levels: int  # noise levels of the measurement (the noise-free one included): what A and the sensitivity count


def collect(collection: Collection) -> None:
    """Each cbm result's channel scalars, in rows labelled with its measure (criterion and decision rule), and its
    thresholds per band (Model.curves[cbm][variant]: ModelThresholds). A result without them is listed as corrupt
    and gives no number: the scalars and the curves a figure draws come from the same files or not at all. A model
    without a channel is listed with the reason its result gives; one measured otherwise than the variant's first
    model is listed and left out, never averaged with it."""
    import h5py

    measures: dict[str, str] = collection.extras.setdefault(MEASURES, {})
    for point in collection.points:
        scalars = collection.result_scalars(point)
        if scalars is None:
            continue  # listed by summarize
        model, variant = collection.model_and_variant(point)
        try:
            with h5py.File(collection.run.result_path(collection.stage, point["id"]), "r") as f:
                centres, thresholds = f["curves"][BAND_CENTRES_CURVE][()], f["curves"][THRESHOLDS_CURVE][()]
                levels = len(f["curves"][NOISE_SDS_CURVE]) if NOISE_SDS_CURVE in f["curves"] else DEFAULT_LEVELS
                attrs = {name: _text(f.attrs.get(name)) for name in
                         (CRITERION_RULE_ATTR, DECISION_RULE_ATTR, CHANNEL_FIT_ATTR)}
            values = [float(scalars[metric.name]) for metric in CHANNEL_METRICS]
        except (KeyError, OSError) as err:
            collection.add_problem(point["id"], "corrupt", f"incomplete cbm result ({type(err).__name__}: {err})")
            continue
        measured = _measure(attrs[CRITERION_RULE_ATTR], attrs[DECISION_RULE_ATTR])
        first = measures.setdefault(variant, measured)
        if measured != first:
            collection.add_problem(point["id"], "inconsistent", f"measured with {measured}, while this variant's "
                                                                f"other models were measured with {first}: left out")
            continue
        for metric, value in zip(CHANNEL_METRICS, values, strict=True):
            collection.set_value(model, metric.name, f"{metric.label} [{measured}]", metric.family, variant, value,
                                 metric.fmt)
        if LOWPASS_HALF in scalars:  # results written before the low-pass measurement have none
            collection.set_value(model, LOWPASS_METRIC.name, f"{LOWPASS_METRIC.label} [test images, not the "
                                 f"study's measure]", FAMILY, variant, float(scalars[LOWPASS_HALF]), LOWPASS_METRIC.fmt)
        model.curves.setdefault(collection.stage, {})[variant] = ModelThresholds(
            np.asarray(centres, float), np.asarray(thresholds, float), measured, levels)
        status = attrs[CHANNEL_FIT_ATTR]
        if status is not None and status.startswith(NOT_FITTED):
            collection.add_problem(point["id"], NO_CHANNEL, status.removeprefix(NOT_FITTED))


def _text(value: object) -> str | None:
    """An HDF5 string attribute as text (h5py may give bytes), None when absent."""
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _measure(criterion: str | None, decision: str | None) -> str:
    return UNRECORDED_MEASURE if criterion is None or decision is None else measure(criterion, decision)


def channel_parameters(bandwidth_octaves: float, centre_cpi: float, peak_sensitivity: float,
                       levels: int = DEFAULT_LEVELS) -> tuple[float, float, float]:
    """(A, mu, sigma) in band-index units of a fitted channel, inverting the formulas of SCIENCE.md section 4:
    bandwidth = 2 sqrt(ln 4) sigma, centre = 1.75 * 2**mu, peak sensitivity = 2**(A - (levels - 1)) (2**(A - 4)
    with the study's 5 noise levels)."""
    from sfhpc.evaluation.cbm import LOWEST_CENTRE_CPI  # band k is centred at 1.75 * 2**k c/img

    return (math.log2(peak_sensitivity) + levels - 1, math.log2(centre_cpi / LOWEST_CENTRE_CPI),
            bandwidth_octaves / (2 * math.sqrt(math.log(4))))


def gaussian_channel(x: np.ndarray, amplitude: float, mu: float, sigma: float) -> np.ndarray:
    return amplitude * np.exp(-((x - mu) ** 2) / (2 * sigma**2))


def _thresholds(model: Model) -> dict[str, ModelThresholds]:
    return model.curves.get(SPEC.name, {})


def _mean_channel(models: list[Model], variant: str) -> tuple[tuple[float, float, float] | None, int]:
    """The mean (A, mu, sigma) over the models with a fitted channel (None when none has one), and their number."""
    keys = [variant_key(name, variant) for name in (BANDWIDTH, CENTRE, PEAK_SENSITIVITY)]
    fits = [channel_parameters(m.values[keys[0]], m.values[keys[1]], m.values[keys[2]],
                               _thresholds(m)[variant].levels) for m in models
            if all(math.isfinite(m.values.get(k, math.nan)) for k in keys)]
    return (tuple(np.mean(fits, axis=0).tolist()) if fits else None), len(fits)


def draw_cbm_channels(report: Report, path: Path) -> bool:
    """Per condition: mean thresholds vs band centre (log2 axis), the channel from the mean fitted parameters and
    the human reference channel, titled with the measure (the criterion and the decision rule: once above the
    panels when they share it). Returns False (and draws nothing) when no model has a cbm result."""
    panels = [(c, v) for c in report.conditions
              for v in dict.fromkeys(v for m in report.models if m.condition == c for v in _thresholds(m))]
    if not panels:
        return False
    measures = {_panel_measure(report, condition, variant) for condition, variant in panels}
    from matplotlib.ticker import NullLocator

    from sfhpc.evaluation.cbm import LOWEST_CENTRE_CPI

    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = new_figure(4.2 * ncols, 3.3 * nrows + 0.7)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    top = HUMAN_CHANNEL[0]
    for ax, (condition, variant) in zip(axes, panels, strict=False):  # spare axes hidden below
        models = [m for m in report.models if m.condition == condition and variant in _thresholds(m)]
        centres = _thresholds(models[0])[variant].centres
        stack = np.array([_thresholds(m)[variant].thresholds for m in models
                          if np.array_equal(_thresholds(m)[variant].centres, centres)])
        sem = stack.std(0, ddof=1) / math.sqrt(len(stack)) if len(stack) > 1 else np.zeros(len(centres))
        ax.errorbar(centres, stack.mean(0), yerr=sem, fmt="o", color="C0", capsize=3,
                    label="thresholds (mean ± SEM over seeds)")
        top = max(top, float(stack.max()))
        x = np.linspace(-0.5, max(len(centres) - 1, HUMAN_CHANNEL[1] + 1.5) + 0.3, 400)
        frequency = LOWEST_CENTRE_CPI * 2**x
        fitted, n_fitted = _mean_channel(models, variant)
        title = f"{variant_label(condition, variant)} (n={len(stack)}, {n_fitted} fitted)"
        if fitted:
            ax.plot(frequency, gaussian_channel(x, *fitted), color="C1", linewidth=2,
                    label="channel from the mean fitted parameters")
            bandwidth = 2 * math.sqrt(math.log(4)) * fitted[2]
            title += f"\n{bandwidth:.2f} oct at {LOWEST_CENTRE_CPI * 2 ** fitted[1]:.1f} c/img"
        else:
            title += "\nno channel (reasons: report.md, Problems)"
        if len(measures) > 1:
            title += "\n" + textwrap.fill(_panel_measure(report, condition, variant), 48)
        ax.plot(frequency, gaussian_channel(x, *HUMAN_CHANNEL), "k--", linewidth=1.2, label="human (reference)")
        ax.set_title(title, fontsize="medium")
        ax.set_xscale("log", base=2)
        ticks = LOWEST_CENTRE_CPI * 2.0 ** np.arange(0, math.floor(x[-1]) + 1)
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax in axes[max(0, len(panels) - ncols):len(panels)]:  # the lowest panel of each column shows its ticks
        ax.tick_params(labelbottom=True)
    axes[0].set_ylim(-0.2, top + 0.5)
    fig.supxlabel("band centre (c/img, log scale)", fontsize="medium")
    fig.supylabel("threshold (noise levels masking the band)", fontsize="medium")
    # A measure that every panel shares heads the legend (a title of the figure would sit on it).
    shared = textwrap.fill(f"CBM measure: {next(iter(measures))}", 40 * ncols) if len(measures) == 1 else None
    figure_legend(fig, axes, loc="outside upper center", ncols=3, title=shared, title_fontsize="small")
    save_figure(fig, path)
    return True


def _panel_measure(report: Report, condition: str, variant: str) -> str:
    """The measure of a panel's models (collect keeps one measure per variant)."""
    return next(_thresholds(m)[variant].measure for m in report.models
                if m.condition == condition and variant in _thresholds(m))


REPORT = StageReport(
    families=(Family(FAMILY, "CBM channel",
                     "Gaussian channel fitted to each model's critical-band-masking thresholds (SCIENCE.md section 4). "
                     "Each row names its measure in brackets: the criterion (the study's: 50%; 'midpoint' between "
                     "chance and the noise-free accuracy is a different measure) and the decision rule (the study's: "
                     "the mean softmax probability over each category's classes, accuracy being category accuracy; "
                     "chance is 1 / categories). A model has no channel, and does not count in n, when its noise-free "
                     "accuracy on the stimulus is not above the criterion (one-sided binomial p >= "
                     f"{ABOVE_CRITERION_P}), when its thresholds are flat (all equal, all 0 included), or when the "
                     "fit is wider than the bands tested or centred outside them: the Problems list gives each such "
                     f"model and why ('{NO_CHANNEL}'). n/a: no model of the condition has a channel. Human "
                     "reference: 1.00 octave at 39.6 c/img. The low-pass half-accuracy cut-off is a second measure, "
                     "not the study's: the lowest frequency (c/img) below which a model's own test images (colour, "
                     "full contrast, every higher frequency removed) are still recognised half as far above chance "
                     "as unfiltered ones; lower means recognising images from lower frequencies. It needs no noise "
                     "and no fit."),),
    collect=collect,
    figures=(FigureSpec(CBM_FIGURE, FAMILY, "CBM thresholds per band (mean ± SEM over seeds) and the channel drawn "
                        "from the mean fitted parameters (its centre is the geometric mean of the models' centres), "
                        "under the measure they were taken with (criterion and decision rule); dashed: the human "
                        "reference channel (1.00 octave at 39.6 c/img).", draw_cbm_channels),),
    headline=lambda report: metric_columns(report, CHANNEL_METRICS),
)

"""When CBM has no channel to report (SCIENCE.md section 4): a model whose noise-free accuracy is not above the
criterion, a flat threshold profile, a fit wider than the bands tested or centred outside them. The stage records
the reason instead of numbers; `sfhpc cbm fit` refuses such input with exit code 2 and the reason."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from sfhpc.cli import app
from sfhpc.evaluation import cbm
from sfhpc.stages.cbm import BANDWIDTH, CENTRE, FITTED, NOT_FITTED, PEAK_SENSITIVITY
from sfhpc.stages.cbm.report import channel_parameters
from sfhpc.stages.cbm.run import STATUS, _channel

runner = CliRunner()
HUMAN = "0,0,0,0,2,2,0"  # SCIENCE.md section 4: 1.00 octave at 39.6 c/img
WIDE = "3,3,3,3,3,3,2"  # nearly flat: the fit's width runs off to 11.7 octaves


def fit_output(*args: str, code: int) -> str:
    result = runner.invoke(app, ["cbm", "fit", *args])
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    return " ".join(result.output.split())  # the console wraps long lines


# --- the fit -----------------------------------------------------------------------------------------------------


def test_a_fit_wider_than_the_bands_tested_is_no_channel():
    with pytest.raises(cbm.NoChannel, match="the fitted bandwidth, 11.7 octaves, is wider than the 7 octaves the 7 "
                                            "bands span"):
        cbm.fit_channel(cbm.parse_thresholds(WIDE))


def test_a_fit_centred_outside_the_bands_tested_is_no_channel():
    # Still rising at the highest band: the least-squares peak lies past the last band's upper edge.
    with pytest.raises(cbm.NoChannel, match=r"the fitted centre, 402 c/img, lies outside the bands tested \(1.24 to "
                                            r"158 c/img\)"):
        cbm.fit_channel([0, 0, 0, 0, 1, 1, 2])


def test_the_levels_bound_the_thresholds_and_the_peak_sensitivity():
    fit = cbm.fit_channel([0, 0, 0, 0, 2, 2, 0], levels=5)
    assert fit.peak_sensitivity == pytest.approx(2 ** (fit.amplitude - 4))
    with pytest.raises(ValueError, match="thresholds count noise levels, 0 to 2 with 3 levels, got 3"):
        cbm.fit_channel([0, 0, 3, 1, 0], levels=3)
    fit = cbm.fit_channel([0, 0, 6, 5, 0], levels=7)  # 7 levels: thresholds and A up to 6
    assert fit.amplitude == pytest.approx(6) and fit.peak_sensitivity == pytest.approx(1)
    # The report's figure redraws the channel from the recorded scalars and the number of levels.
    assert channel_parameters(fit.bandwidth_octaves, fit.centre_cpi, fit.peak_sensitivity, levels=7) == \
        pytest.approx((fit.amplitude, fit.mu, fit.sigma))
    assert cbm.MAX_BANDS == len(cbm.band_centres_cpi(1024)) == 9


def test_the_largest_image_a_sweep_takes_is_the_band_limit():
    from sfhpc.config import DataConfig

    limit = next(m.le for m in DataConfig.model_fields["image_size"].metadata if hasattr(m, "le"))
    assert limit == cbm.MAX_IMAGE_SIZE


# --- the stage's rules ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("thresholds, accuracy, images, criterion, reason", [
    ([0, 1, 2, 3, 2, 1, 0], 0.55, 200, 0.5, "the model's noise-free accuracy on the stimulus, 0.550 on 200 images, "
                                             "is not above the criterion 0.500 (one-sided binomial p = 0.089"),
    ([4] * 7, 0.30, 200, 0.5, "is not above the criterion 0.500"),  # failing without noise: masked everywhere
    ([0] * 7, 0.90, 200, 0.5, "flat threshold profile: all 7 bands have threshold 0"),
    ([2] * 6, 0.90, 200, 0.5, "flat threshold profile: all 6 bands have threshold 2"),
    ([3, 3, 3, 3, 3, 3, 2], 0.90, 200, 0.5, "wider than the 7 octaves the 7 bands span"),
])
def test_the_stage_gives_no_channel_and_the_reason(thresholds, accuracy, images, criterion, reason):
    channel = _channel(thresholds, accuracy, images, criterion, levels=5)
    assert channel[STATUS].startswith(NOT_FITTED) and reason in channel[STATUS], channel[STATUS]
    assert all(math.isnan(channel[key]) for key in (BANDWIDTH, CENTRE, PEAK_SENSITIVITY))


def test_the_stage_fits_a_channel_when_the_model_reads_the_stimulus():
    channel = _channel([0, 0, 0, 0, 2, 2, 0], 0.9, 200, 0.5, levels=5)
    assert channel[STATUS] == FITTED
    assert channel[BANDWIDTH] == pytest.approx(1.00, abs=0.01) and channel[CENTRE] == pytest.approx(39.6, abs=0.1)


# --- sfhpc cbm fit -------------------------------------------------------------------------------------------------


def test_cbm_fit_still_fits_the_human_reference():
    out = fit_output(HUMAN, code=0)
    assert out.startswith("bandwidth 1.00 octaves, centre 39.6 c/img")
    result = runner.invoke(app, ["cbm", "fit", HUMAN, "--json"])
    fit = json.loads(result.stdout)
    assert fit["bandwidth_octaves"] == pytest.approx(1.00, abs=0.005) and fit["centre_cpi"] == pytest.approx(39.6,
                                                                                                            abs=0.05)


@pytest.mark.parametrize("args, words", [
    (["1,1,1,1,1,1,1"], "flat threshold profile: all 7 bands have threshold 1"),  # was 8,924 octaves, exit 0
    ([",".join(["1"] * 100)], "need thresholds for 3 to 9 bands"),  # was 3.5 million octaves, exit 0
    (["0,0,0,0,0,0,0"], "flat threshold profile: all 7 bands have threshold 0"),
    (["0,2"], "need thresholds for 3 to 9 bands"),
    ([",".join(["0", "1", "2"] * 4)], "got 12"),
    (["0,0,0,0,2,2,5"], "thresholds count noise levels, 0 to 4 with 5 levels, got 5"),
    (["0,0,0,-1,2,2,0"], "0 to 4 with 5 levels, got -1"),
    (["0,0,0,0,2.5,2,0"], "threshold 5 of 0,0,0,0,2.5,2,0 is 2.5: a threshold counts noise levels, a whole number"),
    (["0,0,0,0,2,x,0"], "threshold 6 of '0,0,0,0,2,x,0' is not a number"),
    ([WIDE], "wider than the 7 octaves the 7 bands span"),
    (["0,0,0,0,1,1,2"], "the fitted centre, 402 c/img, lies outside the bands tested"),
    ([HUMAN, "--levels", "2"], "0 to 1 with 2 levels, got 2"),
    ([HUMAN, "--levels", "1"], "at least 2 noise levels"),
])
def test_cbm_fit_refuses_what_is_no_channel_and_says_why(args, words):
    out = fit_output(*args, code=2)
    assert out.startswith("error: ") and words in out, out
    assert "Traceback" not in out
    error = json.loads(runner.invoke(app, ["cbm", "fit", *args, "--json"]).stdout)["error"]
    assert words in error


def test_cbm_fit_takes_other_noise_level_counts():
    out = fit_output("0,0,0,0,5,5,0", "--levels", "7", code=0)
    assert "centre 39.6 c/img" in out

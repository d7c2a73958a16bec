"""The low-pass measurement of spatial-frequency reliance (sfhpc.evaluation.cbm.lowpass_accuracy and
half_accuracy_cutoff; not the study's measure): the cut-offs, what the ideal low pass keeps and removes, and the
half-accuracy cut-off of models that read low or high frequencies."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sfhpc.evaluation.cbm import half_accuracy_cutoff, lowpass_accuracy, lowpass_cutoffs_cpi

SIZE = 64
COARSE, FINE = 3, 12  # c/img of the two classes' gratings


def gratings(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n images (N, 3, SIZE, SIZE) in [0, 1]: label 1 a COARSE grating, label 0 a FINE one, random phases."""
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 2
    x = np.arange(SIZE) / SIZE
    images = np.empty((n, 3, SIZE, SIZE))
    for i, label in enumerate(labels):
        frequency = COARSE if label else FINE
        row = 0.5 + 0.3 * np.cos(2 * np.pi * frequency * x + rng.uniform(0, 2 * np.pi))
        images[i] = np.broadcast_to(row, (3, SIZE, SIZE))
    return images, labels


def energy_at(images: np.ndarray, frequency: int) -> np.ndarray:
    return np.abs(np.fft.rfft(images[:, 0, 0, :], axis=-1))[:, frequency]


def reads_coarse(images: np.ndarray) -> np.ndarray:
    """A 'model' that answers 1 when it sees the coarse grating, else 0 (it never looks at the fine one)."""
    return (energy_at(images, COARSE) > 1.0).astype(int)


def reads_fine(images: np.ndarray) -> np.ndarray:
    """A 'model' that answers 0 when it sees the fine grating, else 1."""
    return (energy_at(images, FINE) <= 1.0).astype(int)


def test_cutoffs_are_half_octaves_from_2_cpi_below_the_images_corner():
    cutoffs = lowpass_cutoffs_cpi(128)
    assert cutoffs[:3] == pytest.approx([2.0, 2 * math.sqrt(2), 4.0])
    assert np.allclose(np.diff(np.log2(cutoffs)), 0.5)
    assert cutoffs[-1] == pytest.approx(64.0)  # 90.5 would be the corner itself, which holds nothing beyond it
    assert len(cutoffs) == 11 and lowpass_cutoffs_cpi(224)[-1] == pytest.approx(128.0)  # corner 158.4


def test_the_low_pass_removes_what_lies_above_the_cutoff_and_keeps_the_rest():
    images, labels = gratings(8)
    cutoffs = [2.0, 4.0, 8.0, 16.0]
    # Below 3 c/img nothing is left of either grating: the coarse reader says 0 to all (half right); from 4 c/img on
    # it sees its grating. The fine reader needs 16 c/img: below, it takes every image for a coarse one.
    assert lowpass_accuracy(reads_coarse, images, labels, cutoffs).tolist() == [0.5, 1.0, 1.0, 1.0, 1.0]
    assert lowpass_accuracy(reads_fine, images, labels, cutoffs).tolist() == [0.5, 0.5, 0.5, 1.0, 1.0]
    uint8 = np.round(images * 255).astype(np.uint8)  # stored images work the same
    assert lowpass_accuracy(reads_coarse, uint8, labels, cutoffs, batch_size=3).tolist() == [0.5, 1, 1, 1, 1]


def test_the_half_accuracy_cutoff_is_lower_for_a_model_that_reads_low_frequencies():
    images, labels = gratings(8)
    cutoffs = lowpass_cutoffs_cpi(SIZE)
    coarse = half_accuracy_cutoff(cutoffs, lowpass_accuracy(reads_coarse, images, labels, cutoffs), 0.5)
    fine = half_accuracy_cutoff(cutoffs, lowpass_accuracy(reads_fine, images, labels, cutoffs), 0.5)
    assert 2.0 < coarse <= 4.0 and 8.0 < fine <= 16.0  # just above each grating's frequency: the first cut-off
    assert coarse < fine


def test_the_half_accuracy_cutoff_interpolates_in_log_frequency():
    cutoffs = [2.0, 4.0, 8.0]
    # chance 0.25, unfiltered 0.85: the level is 0.55, a third of the way from 0.40 at 4 to 0.85 at 8 c/img.
    assert half_accuracy_cutoff(cutoffs, [0.25, 0.40, 0.85, 0.85], 0.25) == pytest.approx(2 ** (2 + 1 / 3))
    # Above the level already at the lowest cut-off: linear from (0 c/img, chance).
    assert half_accuracy_cutoff(cutoffs, [0.85, 0.85, 0.85, 0.85], 0.25) == pytest.approx(2.0 * 0.3 / 0.6)
    # Reached only unfiltered: between the last cut-off and half an octave above it.
    assert 8.0 < half_accuracy_cutoff(cutoffs, [0.25, 0.25, 0.25, 0.85], 0.25) < 8.0 * math.sqrt(2)
    # The first crossing counts, however the curve goes on.
    assert half_accuracy_cutoff(cutoffs, [0.25, 0.60, 0.30, 0.85], 0.25) < 4.0


@pytest.mark.parametrize("unfiltered", [0.25, 0.20])
def test_no_cutoff_when_the_model_is_not_above_chance(unfiltered):
    assert math.isnan(half_accuracy_cutoff([2.0, 4.0], [0.2, 0.3, unfiltered], 0.25))


def test_bad_shapes_are_refused():
    images, labels = gratings(4)
    with pytest.raises(ValueError, match="square RGB"):
        lowpass_accuracy(reads_coarse, images[:, :1], labels, [2.0])
    with pytest.raises(ValueError, match="one label per image"):
        lowpass_accuracy(reads_coarse, images, labels[:3], [2.0])
    with pytest.raises(ValueError, match="one accuracy per cut-off"):
        half_accuracy_cutoff([2.0, 4.0], [0.5, 0.6], 0.25)

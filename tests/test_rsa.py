"""Representational similarity analysis: RDMs, their rank comparison, the permutation test and the RDM noise
ceiling, checked against direct numpy/scipy computations on random data (tests/test_rsa_toolbox.py checks them
against rsatoolbox itself)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy.spatial.distance import squareform
from scipy.stats import rankdata, spearmanr

from sfhpc.evaluation import rsa


def random_rdm(rng: np.random.Generator, n_images: int, n_features: int = 20) -> np.ndarray:
    return rsa.rdm(rng.standard_normal((n_images, n_features)))


def slow_permutation_test(model_rdm: np.ndarray, roi_rdm: np.ndarray, n_permutations: int, seed: int):
    """The permutation test written the obvious way: reorder the ROI RDM's images, take the upper triangles,
    scipy's Spearman rho, count."""
    upper = np.triu_indices(len(model_rdm), k=1)
    rho = spearmanr(model_rdm[upper], roi_rdm[upper]).statistic
    null = np.array(
        [
            spearmanr(model_rdm[upper], roi_rdm[np.ix_(order, order)][upper]).statistic
            for order in rsa.image_permutations(len(model_rdm), n_permutations, seed)
        ]
    )
    p_value = (1 + np.sum(null >= rho - rsa.TIE_TOLERANCE)) / (1 + n_permutations)
    return rho, p_value, null


def test_rdm_is_one_minus_corrcoef_symmetric_with_a_zero_diagonal():
    features = np.random.default_rng(0).standard_normal((30, 12)).astype(np.float32)
    dissimilarity = rsa.rdm(features)
    assert dissimilarity.dtype == np.float64
    np.testing.assert_allclose(dissimilarity, 1 - np.corrcoef(features.astype(np.float64)), atol=1e-12)
    assert np.array_equal(dissimilarity, dissimilarity.T)
    assert not np.diagonal(dissimilarity).any()
    assert dissimilarity.min() >= 0 and dissimilarity.max() <= 2


def test_rdm_of_identical_and_opposite_rows_is_0_and_2():
    row = np.array([1.0, 2.0, 4.0, 8.0])
    dissimilarity = rsa.rdm(np.stack([row, 3 * row + 1, -row]))
    np.testing.assert_allclose(dissimilarity, [[0, 0, 2], [0, 0, 2], [2, 2, 0]], atol=1e-12)


def test_rdm_refuses_constant_rows_and_names_them():
    features = np.random.default_rng(0).standard_normal((10, 8))
    features[3] = 0.0
    features[7] = 0.1  # equal floats whose mean is not exactly 0.1: a variance test would miss this row
    with pytest.raises(ValueError, match=r"2 of 10 rows \(images\) are constant.*rows 3, 7;"):
        rsa.rdm(features)


def test_rdm_counts_constant_rows_beyond_the_ones_it_lists():
    features = np.random.default_rng(0).standard_normal((10, 8))
    features[:7] = 1.0
    with pytest.raises(ValueError, match=r"7 of 10 rows .*rows 0, 1, 2, 3, 4 and 2 more"):
        rsa.rdm(features)


@pytest.mark.parametrize(
    ("features", "message"),
    [
        (np.zeros(5), "must be \\(n_images, n_features\\)"),
        (np.ones((1, 5)), "at least 2 images and 2 features"),
        (np.ones((5, 1)), "at least 2 images and 2 features"),
        (np.array([[0.0, 1.0], [np.nan, 2.0], [3.0, 1.0]]), "1 non-finite"),
    ],
)
def test_rdm_refuses_bad_features(features, message):
    with pytest.raises(ValueError, match=message):
        rsa.rdm(features)


def test_upper_triangle_is_squareform_order_row_by_row():
    matrix = random_rdm(np.random.default_rng(1), 7)
    upper = rsa.upper_triangle(matrix)
    assert np.array_equal(upper, squareform(matrix, checks=False))
    assert upper[:6].tolist() == matrix[0, 1:].tolist()  # row 0 first, then row 1 from column 2, ...
    assert upper[6:11].tolist() == matrix[1, 2:].tolist()
    with pytest.raises(ValueError, match="square"):
        rsa.upper_triangle(np.zeros((3, 4)))


def test_compare_rdms_equals_scipy_spearman_of_squareform_vectors():
    rng = np.random.default_rng(2)
    model_rdm, roi_rdm = random_rdm(rng, 40), random_rdm(rng, 40)
    expected = spearmanr(squareform(model_rdm, checks=False), squareform(roi_rdm, checks=False)).statistic
    assert rsa.compare_rdms(model_rdm, roi_rdm) == pytest.approx(expected, abs=1e-12)


def test_compare_rdms_with_tied_dissimilarities_equals_scipy():
    rng = np.random.default_rng(3)
    model_rdm, roi_rdm = random_rdm(rng, 25), np.round(random_rdm(rng, 25), 1)  # rounding makes many ties
    upper = np.triu_indices(25, k=1)
    expected = spearmanr(model_rdm[upper], roi_rdm[upper]).statistic
    assert rsa.compare_rdms(model_rdm, roi_rdm) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("model_rdm", "roi_rdm", "message"),
    [
        (np.zeros((5, 5)), np.zeros((6, 6)), "same images"),
        (np.zeros((5, 4)), np.zeros((5, 4)), "model RDM must be a square"),
        (np.zeros((2, 2)), np.zeros((2, 2)), "at least 3 images"),
        (np.triu(np.ones((4, 4)), k=1), np.zeros((4, 4)), "model RDM is not symmetric"),
        (1 - np.eye(4), np.full((4, 4), np.nan), "ROI RDM contains non-finite"),
        (1 - np.eye(4), 2 * (1 - np.eye(4)), "every dissimilarity in the model RDM is equal"),
    ],
)
def test_compare_rdms_refuses_bad_pairs(model_rdm, roi_rdm, message):
    with pytest.raises(ValueError, match=message):
        rsa.compare_rdms(model_rdm, roi_rdm)
    with pytest.raises(ValueError, match=message):
        rsa.permutation_test(model_rdm, roi_rdm, n_permutations=5, seed=0)


def test_image_permutations_are_seeded_permutations():
    orders = rsa.image_permutations(6, 50, seed=4)
    assert orders.shape == (50, 6)
    assert (np.sort(orders, axis=1) == np.arange(6)).all()
    assert np.array_equal(orders, rsa.image_permutations(6, 50, seed=4))
    assert not np.array_equal(orders, rsa.image_permutations(6, 50, seed=5))
    with pytest.raises(ValueError, match="at least 1"):
        rsa.image_permutations(6, 0, seed=0)


@pytest.mark.parametrize("tied", [False, True])
def test_permutation_test_equals_a_slow_direct_implementation(tied):
    rng = np.random.default_rng(6)
    n_images = 15
    shared = 0.3 * rng.standard_normal((n_images, 10))  # weak true similarity: p lands mid-range, not at an end
    model_rdm = rsa.rdm(shared + rng.standard_normal((n_images, 10)))
    roi_rdm = rsa.rdm(shared + rng.standard_normal((n_images, 10)))
    if tied:
        roi_rdm = np.round(roi_rdm, 1)
    rho, p_value, null = rsa.permutation_test(model_rdm, roi_rdm, n_permutations=300, seed=11)
    slow_rho, slow_p, slow_null = slow_permutation_test(model_rdm, roi_rdm, 300, seed=11)
    assert rho == pytest.approx(slow_rho, abs=1e-12)
    assert rho == pytest.approx(rsa.compare_rdms(model_rdm, roi_rdm), abs=1e-12)
    np.testing.assert_allclose(null, slow_null, atol=1e-12)
    assert p_value == slow_p
    assert 0.01 < p_value < 0.9  # the comparison above is not between two p-values at their floor or ceiling


def test_permutations_that_leave_the_rdm_unchanged_count_as_at_least_as_large():
    """With 4 images, many of the 300 draws are the identity (or map the RDM onto itself): each must count."""
    rng = np.random.default_rng(7)
    model_rdm, roi_rdm = random_rdm(rng, 4), random_rdm(rng, 4)
    rho, p_value, null = rsa.permutation_test(model_rdm, roi_rdm, n_permutations=300, seed=0)
    identities = (rsa.image_permutations(4, 300, seed=0) == np.arange(4)).all(axis=1).sum()
    assert identities > 0
    assert np.sum(null == rho) >= identities  # bit-for-bit equal, not just close
    assert p_value >= (1 + identities) / 301
    assert p_value == slow_permutation_test(model_rdm, roi_rdm, 300, seed=0)[1]


def test_planted_structure_is_found_and_independent_data_is_not():
    rng = np.random.default_rng(8)
    responses = rng.standard_normal((60, 40))
    planted = rsa.permutation_test(
        rsa.rdm(responses + 0.3 * rng.standard_normal((60, 40))), rsa.rdm(responses), n_permutations=200, seed=0
    )
    assert planted.rho > 0.8
    assert planted.p_value == 1 / 201  # no permutation comes close: the smallest p-value possible
    independent = rsa.permutation_test(random_rdm(rng, 60), rsa.rdm(responses), n_permutations=200, seed=0)
    assert abs(independent.rho) < 0.1
    assert independent.p_value > 0.2


def patterns_of(rng: np.random.Generator, signal: np.ndarray, noise: float = 1.0, repeats: int = 3
                ) -> rsa.RoiPatterns:
    """An ROI's patterns: `repeats` noisy single-repeat patterns of `signal` (n_images, n_units), and their mean."""
    single = signal + noise * rng.standard_normal((repeats, *signal.shape))
    return rsa.RoiPatterns(mean=single.mean(axis=0), repeats=single)


def test_rsa_against_rois_matches_permutation_test_pair_by_pair():
    rng = np.random.default_rng(9)
    signals = {"V1": rng.standard_normal((20, 30)), "LO": rng.standard_normal((20, 15))}
    rois = {roi: patterns_of(rng, signal) for roi, signal in signals.items()}
    features = {
        "pooled": signals["V1"] + 0.5 * rng.standard_normal((20, 30)),
        "neural_head": rng.standard_normal((20, 8)),
    }
    rows = rsa.rsa_against_rois(features, rois, n_permutations=100, seed=3)
    assert [(row.layer, row.roi) for row in rows] == [
        ("pooled", "V1"),
        ("pooled", "LO"),
        ("neural_head", "V1"),
        ("neural_head", "LO"),
    ]
    for row in rows:
        model_rdm = rsa.rdm(features[row.layer])
        expected = rsa.permutation_test(model_rdm, rsa.rdm(rois[row.roi].mean), n_permutations=100, seed=3)
        assert row.rho == pytest.approx(expected.rho, abs=1e-12)
        assert row.p_value == expected.p_value
        np.testing.assert_allclose(row.null, expected.null, atol=1e-12)
        assert (row.n_images, row.n_permutations) == (20, 100)
        repeat_rdms = [rsa.rdm(repeat) for repeat in rois[row.roi].repeats]
        assert row.rho_repeats == pytest.approx(np.mean([rsa.compare_rdms(model_rdm, r) for r in repeat_rdms]),
                                                abs=1e-12)
        assert (row.ceiling_lower, row.ceiling_upper) == rsa.rdm_noise_ceiling(repeat_rdms)
    assert rows[0].p_value == 1 / 101
    assert rows[0].ceiling_lower == rows[2].ceiling_lower  # the ceiling is the ROI's, whatever the layer


def patterns(n_images: int, n_units: int = 4, repeats: int = 3) -> rsa.RoiPatterns:
    rng = np.random.default_rng(0)
    return patterns_of(rng, rng.standard_normal((n_images, n_units)), repeats=repeats)


@pytest.mark.parametrize(
    ("features", "rois", "message"),
    [
        ({}, {"V1": patterns(5)}, "no layers"),
        ({"pooled": np.eye(5)}, {}, "no ROIs"),
        ({"pooled": np.eye(5)}, {"V1": patterns(6)}, r"same images.*'pooled': 5.*'V1': 6"),
        ({"pooled": np.eye(2)}, {"V1": patterns(2)}, "at least 3 images"),
        ({"pooled": np.eye(5)}, {"V1": patterns(5, repeats=1)}, r"ROI V1: single-repeat patterns must be \(n_repeats"),
        ({"pooled": np.eye(5)}, {"V1": rsa.RoiPatterns(patterns(5).mean, patterns(5, n_units=3).repeats)},
         r"like its mean patterns, got shape \(3, 5, 3\)"),
    ],
)
def test_rsa_against_rois_refuses_inconsistent_inputs(features, rois, message):
    with pytest.raises(ValueError, match=message):
        rsa.rsa_against_rois(features, rois, n_permutations=5, seed=0)


def slow_noise_ceiling(repeat_rdms: list[np.ndarray]) -> tuple[float, float]:
    """rsatoolbox's boot_noise_ceiling for method 'spearman', written out with scipy: pool RDMs by the mean of their
    ranks, compare each repeat with the pool of the others (lower) and of all (upper), average."""
    upper = np.triu_indices(len(repeat_rdms[0]), k=1)
    vectors = [matrix[upper] for matrix in repeat_rdms]
    ranks = [rankdata(vector) for vector in vectors]
    lower_rhos = [spearmanr(np.mean([r for j, r in enumerate(ranks) if j != k], axis=0), vectors[k]).statistic
                  for k in range(len(vectors))]
    upper_rhos = [spearmanr(np.mean(ranks, axis=0), vector).statistic for vector in vectors]
    return float(np.mean(lower_rhos)), float(np.mean(upper_rhos))


@pytest.mark.parametrize("n_repeats", [2, 3, 5])
def test_rdm_noise_ceiling_equals_a_slow_direct_implementation(n_repeats):
    rng = np.random.default_rng(12)
    single = patterns_of(rng, rng.standard_normal((25, 12)), noise=1.5, repeats=n_repeats).repeats
    repeat_rdms = [rsa.rdm(repeat) for repeat in single]
    ceiling = rsa.rdm_noise_ceiling(repeat_rdms)
    assert ceiling == pytest.approx(slow_noise_ceiling(repeat_rdms), abs=1e-12)
    assert 0 < ceiling.lower < ceiling.upper < 1  # noisy repeats of a shared signal


def test_rdm_noise_ceiling_is_one_for_identical_repeats_and_near_zero_for_pure_noise():
    rng = np.random.default_rng(13)
    same = rsa.rdm(rng.standard_normal((20, 10)))
    assert rsa.rdm_noise_ceiling([same, same, same]) == pytest.approx((1.0, 1.0), abs=1e-12)
    noise = [random_rdm(rng, 60) for _ in range(3)]
    ceiling = rsa.rdm_noise_ceiling(noise)
    assert abs(ceiling.lower) < 0.05  # the other repeats predict nothing of this one's noise
    assert ceiling.upper == pytest.approx(1 / np.sqrt(3), abs=0.05)  # the pool contains a third of each repeat


@pytest.mark.parametrize(
    ("repeat_rdms", "message"),
    [
        ([1 - np.eye(4)], "at least 2 single-repeat RDMs, got 1"),
        ([np.zeros((4, 4)), np.zeros((5, 5))], r"same images, got shapes \[\(4, 4\), \(5, 5\)\]"),
        ([np.zeros((2, 2)), np.zeros((2, 2))], "at least 3 images"),
        ([np.zeros((4, 4)), np.full((4, 4), np.nan)], "RDM of repeat 2 contains non-finite"),
        ([np.zeros((4, 4)), np.triu(np.ones((4, 4)), k=1)], "RDM of repeat 2 is not symmetric"),
        ([1 - np.eye(4), 1 - np.eye(4)], "every dissimilarity in the RDM of repeat 1 is equal"),
    ],
)
def test_rdm_noise_ceiling_refuses_bad_repeats(repeat_rdms, message):
    with pytest.raises(ValueError, match=message):
        rsa.rdm_noise_ceiling(repeat_rdms)


def test_rows_to_arrays_round_trip_through_hdf5(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(10)
    rows = rsa.rsa_against_rois(
        {"pooled": rng.standard_normal((10, 6))},
        {"V1": patterns_of(rng, rng.standard_normal((10, 4))),
         "hV4 (ventral)": patterns_of(rng, rng.standard_normal((10, 4)))},
        n_permutations=20,
        seed=0,
    )
    arrays = rsa.rows_to_arrays(rows)
    assert arrays["null"].shape == (2, 20)
    path = tmp_path / "rsa result.h5"
    with h5py.File(path, "w") as f:
        for name, values in arrays.items():
            f.create_dataset(name, data=values)
    with h5py.File(path, "r") as f:
        stored = {name: f[name][()] for name in f}
    assert np.char.decode(stored["roi"], "utf-8").tolist() == ["V1", "hV4 (ventral)"]
    assert np.char.decode(stored["layer"], "utf-8").tolist() == ["pooled", "pooled"]
    for name in ("rho", "p_value", "rho_repeats", "ceiling_lower", "ceiling_upper"):
        np.testing.assert_array_equal(stored[name], [getattr(row, name) for row in rows])
    np.testing.assert_array_equal(stored["null"], arrays["null"])
    assert stored["n_permutations"].tolist() == [20, 20]


def test_rows_to_arrays_refuses_no_rows():
    with pytest.raises(ValueError, match="no RSA rows"):
        rsa.rows_to_arrays([])


def test_importing_rsa_does_not_import_torch():
    probe = "import sys, sfhpc.evaluation.rsa; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"

"""Representational similarity analysis (RSA, SCIENCE.md section 6): how alike a model's and a brain region's
geometries over the same images are.

Each side becomes a representational dissimilarity matrix (RDM, 1 - Pearson r between the images' response
vectors); two RDMs are compared by the Spearman rho of their upper triangles, and the rho's significance comes from
permuting the images of one RDM (rows and columns together), which keeps each RDM's internal structure intact and
breaks only the image correspondence between them.

Beside each rho stands the ROI RDM's noise ceiling in rho's own units, computed as rsatoolbox 0.3.2's
``rsatoolbox.inference.boot_noise_ceiling(rdms, method="spearman")`` computes it over the single-repeat RDMs (one
RDM per repeat of the images): the lower bound is the mean Spearman rho of each single-repeat RDM with the pooled RDM
of the other repeats, the upper bound the mean rho of each with the pooled RDM of all repeats, where "pooled" means
the mean of the RDMs' ranks (rsatoolbox's ``pool_rdm`` for Spearman).

The module imports numpy and scipy only, so that it runs anywhere (login node, aggregation, tests) without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from scipy.stats import rankdata

MIN_IMAGES = 3  # three images give three pairs: the fewest for which a rank correlation can be anything but +-1
MIN_REPEATS = 2  # an RDM noise ceiling's lower bound compares each repeat with the pool of the others
# A null rho that equals the observed one in exact arithmetic (an image permutation that maps the RDM onto itself)
# can differ from it in the last bits; counting it as "at least as large" keeps the p-value conservative.
TIE_TOLERANCE = 1e-12
CONSTANT_ROWS_SHOWN = 5  # row indices an error message lists before it only counts


def rdm(features: np.ndarray) -> np.ndarray:
    """Dissimilarity matrix (n_images, n_images), float64: 1 - Pearson r between the rows of ``features``.

    ``features`` is (n_images, n_features): one row per image (model activations, voxel responses or PC scores).
    The result is exactly symmetric with exact zeros on the diagonal, values in [0, 2].

    A row with zero variance (every feature equal, e.g. an image whose pooled ReLU features are all zero) has no
    defined correlation with anything, so it raises ValueError naming the rows rather than returning NaN: a NaN
    would make every rho computed from the RDM NaN, or, if NaNs were dropped later, compare RDMs over different
    image pairs without anyone noticing. Whether to drop such images (from the model *and* the ROI side) or to
    fix the features is the researcher's decision, and the error forces it.
    """
    values = np.asarray(features, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"features must be (n_images, n_features), got shape {values.shape}")
    n_images, n_features = values.shape
    if n_images < 2 or n_features < 2:
        raise ValueError(f"need at least 2 images and 2 features for correlations, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"features contain {int((~np.isfinite(values)).sum())} non-finite values (NaN or inf)")
    _refuse_constant_rows(values)
    centred = values - values.mean(axis=1, keepdims=True)
    unit_rows = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    correlation = np.clip(unit_rows @ unit_rows.T, -1.0, 1.0)  # rounding can step just outside [-1, 1]
    dissimilarity = 1.0 - correlation
    dissimilarity = (dissimilarity + dissimilarity.T) / 2  # the matrix product is symmetric only up to rounding
    np.fill_diagonal(dissimilarity, 0.0)
    return dissimilarity


def _refuse_constant_rows(values: np.ndarray) -> None:
    """Raise ValueError naming the rows of ``values`` whose entries are all equal.

    Tested by max == min, which is exact: a variance computed from a mean can be a tiny non-zero number for a
    constant row (the mean of equal floats need not equal them), and the correlation would then be rounding noise.
    """
    constant = np.flatnonzero(values.max(axis=1) == values.min(axis=1))
    if constant.size:
        shown = ", ".join(str(row) for row in constant[:CONSTANT_ROWS_SHOWN])
        more = f" and {constant.size - CONSTANT_ROWS_SHOWN} more" if constant.size > CONSTANT_ROWS_SHOWN else ""
        raise ValueError(
            f"{constant.size} of {len(values)} rows (images) are constant, so their Pearson r is undefined: "
            f"rows {shown}{more}; drop these images from both sides of the comparison or fix the features"
        )


def upper_triangle(dissimilarity: np.ndarray) -> np.ndarray:
    """The entries above the diagonal of a square matrix, row by row (the order of ``squareform``'s vector)."""
    if dissimilarity.ndim != 2 or dissimilarity.shape[0] != dissimilarity.shape[1]:
        raise ValueError(f"an RDM must be a square matrix, got shape {dissimilarity.shape}")
    rows, columns = np.triu_indices(len(dissimilarity), k=1)
    return dissimilarity[rows, columns]


def _check_rdm(name: str, matrix: np.ndarray) -> None:
    """Raise ValueError unless ``matrix`` is a finite, symmetric, square RDM."""
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    # Comparisons read only the upper triangle; an asymmetric matrix would mean another one.
    if not np.allclose(matrix, matrix.T, rtol=0, atol=1e-12):
        raise ValueError(f"{name} is not symmetric")


def _check_rdm_pair(model_rdm: np.ndarray, roi_rdm: np.ndarray) -> None:
    """Raise ValueError unless both are finite, symmetric, square RDMs over the same (>= 3) images."""
    _check_rdm("model RDM", model_rdm)
    _check_rdm("ROI RDM", roi_rdm)
    if model_rdm.shape != roi_rdm.shape:
        raise ValueError(f"RDMs must cover the same images: model RDM {model_rdm.shape}, ROI RDM {roi_rdm.shape}")
    if len(model_rdm) < MIN_IMAGES:
        raise ValueError(f"need at least {MIN_IMAGES} images to compare RDMs, got {len(model_rdm)}")


def _unit_ranks(values: np.ndarray, name: str) -> np.ndarray:
    """Average ranks of ``values``, centred and scaled to unit length: the Pearson r of two such vectors is their
    dot product, which is the Spearman rho of the original values."""
    return _unit_length(rankdata(values), name)


def _unit_length(ranks: np.ndarray, name: str) -> np.ndarray:
    """Ranks centred and scaled to unit length (see :func:`_unit_ranks`)."""
    centred = ranks - ranks.mean()
    length = np.linalg.norm(centred)
    if length == 0:
        raise ValueError(f"every dissimilarity in the {name} is equal, so its rank correlation is undefined")
    return centred / length


def compare_rdms(model_rdm: np.ndarray, roi_rdm: np.ndarray) -> float:
    """Spearman rho between the upper triangles of two RDMs over the same images (ties get average ranks)."""
    _check_rdm_pair(model_rdm, roi_rdm)
    model_ranks = _unit_ranks(upper_triangle(model_rdm), "model RDM")
    roi_ranks = _unit_ranks(upper_triangle(roi_rdm), "ROI RDM")
    return float(model_ranks @ roi_ranks)


def image_permutations(n_images: int, n_permutations: int, seed: int) -> np.ndarray:
    """(n_permutations, n_images) image orders: row k is the k-th ``rng.permutation(n_images)`` of
    ``np.random.default_rng(seed)``. The same seed gives every layer and ROI the same permutations, so their null
    distributions are paired (which a max-statistic correction across comparisons needs)."""
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be at least 1, got {n_permutations}")
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n_images) for _ in range(n_permutations)])


class PermutationResult(NamedTuple):
    """Observed Spearman rho, its one-sided permutation p-value, and the rhos under the permuted images."""

    rho: float
    p_value: float
    null: np.ndarray  # (n_permutations,)


def _permuted_rhos(model_unit_ranks: np.ndarray, roi_rdm: np.ndarray, permutations: np.ndarray) -> np.ndarray:
    """Spearman rho of each model (columns of ``model_unit_ranks``, (n_pairs, n_models)) against ``roi_rdm`` with
    its images reordered by each row of ``permutations``: (n_permutations, n_models).

    No re-ranking per permutation: reordering images moves the RDM's entries around without changing them, so the
    ranks of the reordered upper triangle are the original ranks read at the reordered positions. The ROI's unit
    ranks are laid out once as a symmetric matrix; each permutation gathers its upper triangle through flat indices
    (about twice as fast as ``np.ix_`` on the full matrix) and takes dot products with all models at once.
    """
    n_images = len(roi_rdm)
    rows, columns = np.triu_indices(n_images, k=1)
    roi_rank_matrix = np.zeros((n_images, n_images))
    roi_rank_matrix[rows, columns] = _unit_ranks(upper_triangle(roi_rdm), "ROI RDM")
    roi_rank_matrix[columns, rows] = roi_rank_matrix[rows, columns]
    flat_ranks = roi_rank_matrix.ravel()
    rhos = np.empty((len(permutations), model_unit_ranks.shape[1]))
    for index, order in enumerate(permutations):
        # Entry (i, j) of the reordered RDM is entry (order[i], order[j]) of the original.
        permuted_ranks = flat_ranks[(order * n_images)[rows] + order[columns]]
        rhos[index] = permuted_ranks @ model_unit_ranks
    return rhos


def _observed_and_null(
    model_unit_ranks: np.ndarray, roi_rdm: np.ndarray, permutations: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Observed rhos (n_models,) and null rhos (n_permutations, n_models), both by :func:`_permuted_rhos`: the
    observed one as the identity permutation, so that a permutation leaving the RDM unchanged reproduces it exactly."""
    identity = np.arange(len(roi_rdm))[None]
    rhos = _permuted_rhos(model_unit_ranks, roi_rdm, np.concatenate([identity, permutations]))
    return rhos[0], rhos[1:]


def _p_values(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """One-sided permutation p-values (1 + #null >= observed) / (1 + #permutations), per column of ``null``.

    The +1 counts the observed labelling as one of the permutations, so p is never 0 and is exact (valid) under
    the null hypothesis; its smallest value is 1 / (1 + n_permutations).
    """
    at_least_as_large = (null >= observed - TIE_TOLERANCE).sum(axis=0)
    return (1 + at_least_as_large) / (1 + len(null))


def permutation_test(model_rdm: np.ndarray, roi_rdm: np.ndarray, n_permutations: int, seed: int) -> PermutationResult:
    """Spearman rho of two RDMs and its one-sided p-value from permuting the ROI RDM's images.

    One-sided because the question is whether the geometries are *more* alike than chance; the permutations are
    :func:`image_permutations` of ``seed``. The rho equals :func:`compare_rdms` up to rounding.
    """
    _check_rdm_pair(model_rdm, roi_rdm)
    model_unit_ranks = _unit_ranks(upper_triangle(model_rdm), "model RDM")[:, None]
    permutations = image_permutations(len(model_rdm), n_permutations, seed)
    observed, null = _observed_and_null(model_unit_ranks, roi_rdm, permutations)
    return PermutationResult(float(observed[0]), float(_p_values(observed, null)[0]), null[:, 0])


class RdmCeiling(NamedTuple):
    """An RDM noise ceiling in Spearman rho: the range in which the rho of the true model against the single-repeat
    RDMs is expected to lie (lower: pooled from the other repeats, so not fitted to the noise of the one compared;
    upper: pooled from all repeats, the one compared included)."""

    lower: float
    upper: float


def _repeat_rdms(repeat_rdms: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """The single-repeat RDMs as float64 matrices, checked: at least MIN_REPEATS finite, symmetric, square RDMs of
    the same (>= MIN_IMAGES) images."""
    matrices = [np.asarray(matrix, dtype=np.float64) for matrix in repeat_rdms]
    if len(matrices) < MIN_REPEATS:
        raise ValueError(f"an RDM noise ceiling needs at least {MIN_REPEATS} single-repeat RDMs, got {len(matrices)}")
    for repeat, matrix in enumerate(matrices, start=1):
        _check_rdm(f"RDM of repeat {repeat}", matrix)
    shapes = {matrix.shape for matrix in matrices}
    if len(shapes) != 1:
        raise ValueError(f"single-repeat RDMs must cover the same images, got shapes {sorted(shapes)}")
    if len(matrices[0]) < MIN_IMAGES:
        raise ValueError(f"need at least {MIN_IMAGES} images for an RDM noise ceiling, got {len(matrices[0])}")
    return matrices


def rdm_noise_ceiling(repeat_rdms: Sequence[np.ndarray] | np.ndarray) -> RdmCeiling:
    """Lower and upper bound of the RDM noise ceiling over single-repeat RDMs (n_repeats RDMs over the same images),
    in Spearman rho, as ``rsatoolbox.inference.boot_noise_ceiling(RDMs(vectors), method="spearman")`` computes them.

    rsatoolbox pools RDMs for a Spearman comparison by averaging their ranks (``pool_rdm``); each single-repeat RDM
    is then compared by Spearman rho (average ranks for ties, as :func:`compare_rdms`) with the pooled RDM of the
    other repeats (lower bound) and of all repeats (upper bound), and each bound is the mean over repeats.
    """
    return _ceiling_of_ranks(_repeat_ranks(_repeat_rdms(repeat_rdms)))


def _repeat_ranks(repeat_rdms: list[np.ndarray]) -> np.ndarray:
    """(n_repeats, n_pairs): the average ranks of each single-repeat RDM's upper triangle."""
    return np.stack([rankdata(upper_triangle(matrix)) for matrix in repeat_rdms])


def _repeat_unit_ranks(ranks: np.ndarray) -> np.ndarray:
    """(n_repeats, n_pairs): each single-repeat RDM's ranks at unit length, for Spearman rhos as dot products."""
    return np.stack([_unit_length(r, f"RDM of repeat {k}") for k, r in enumerate(ranks, start=1)])


def _ceiling_of_ranks(ranks: np.ndarray) -> RdmCeiling:
    """rdm_noise_ceiling from the single-repeat RDMs' ranks (n_repeats, n_pairs). Ranking is the costly step (NSD's
    1000 shared images make 499,500 dissimilarities), so each RDM is ranked once, and each pool once."""
    unit_ranks = _repeat_unit_ranks(ranks)
    pooled_all = _unit_ranks(ranks.mean(axis=0), "pooled RDM of all repeats")
    lower = [_unit_ranks(np.delete(ranks, k, axis=0).mean(axis=0), f"pooled RDM of the repeats but {k + 1}")
             @ unit_ranks[k] for k in range(len(ranks))]
    return RdmCeiling(lower=float(np.mean(lower)), upper=float(np.mean(unit_ranks @ pooled_all)))


@dataclass(frozen=True)
class RoiPatterns:
    """One ROI's response patterns over the compared images, rows in the order of the model's images.

    ``mean`` (n_images, n_units): the patterns the ROI RDM is made from (e.g. the z-scored PCA scores of the repeat
    averages); ``repeats`` (n_repeats, n_images, n_units): each repeat's single-trial patterns put through the same
    pipeline, for the RDM noise ceiling."""

    mean: np.ndarray
    repeats: np.ndarray


@dataclass(frozen=True)
class RsaRow:
    """One (model layer, ROI) comparison: the RSA result table has one row per pair."""

    layer: str  # e.g. "pooled" (the penultimate 512-d layer) or "neural_head"
    roi: str
    rho: float  # Spearman rho between the layer's and the ROI's RDM upper triangles
    p_value: float  # one-sided, from permuting images
    rho_repeats: float  # mean Spearman rho of the layer's RDM with each single-repeat RDM: what the ceiling bounds
    ceiling_lower: float  # the ROI RDM's noise ceiling (rdm_noise_ceiling), the same for every layer
    ceiling_upper: float
    n_images: int
    n_permutations: int
    null: np.ndarray = field(repr=False, compare=False)  # (n_permutations,) rhos under permuted images


def _n_images(arrays: dict[str, np.ndarray], kind: str) -> set[int]:
    """The image counts (first axes) of ``arrays``; raise if there are none."""
    if not arrays:
        raise ValueError(f"no {kind} given")
    return {len(array) for array in arrays.values()}


def _check_repeats(roi: str, patterns: RoiPatterns) -> None:
    """Raise ValueError unless the ROI's single-repeat patterns are (>= MIN_REPEATS, n_images, n_units) like its
    mean patterns."""
    repeats, mean = np.asarray(patterns.repeats), np.asarray(patterns.mean)
    if repeats.ndim != 3 or repeats.shape[1:] != mean.shape or len(repeats) < MIN_REPEATS:
        raise ValueError(f"ROI {roi}: single-repeat patterns must be (n_repeats >= {MIN_REPEATS}, *{mean.shape}) like "
                         f"its mean patterns, got shape {repeats.shape}")


class _RoiComparison(NamedTuple):
    """Every layer against one ROI: observed rhos, p-values and nulls per layer (columns), and the ROI's ceiling."""

    observed: np.ndarray
    p_values: np.ndarray
    null: np.ndarray
    rho_repeats: np.ndarray
    ceiling: RdmCeiling


def _compare_roi(layer_unit_ranks: np.ndarray, patterns: RoiPatterns, permutations: np.ndarray) -> _RoiComparison:
    """Every layer (columns of ``layer_unit_ranks``) against one ROI's RDM, its single-repeat RDMs and ceiling."""
    observed, null = _observed_and_null(layer_unit_ranks, rdm(patterns.mean), permutations)
    ranks = _repeat_ranks(_repeat_rdms([rdm(repeat) for repeat in patterns.repeats]))
    # rsatoolbox's eval_fixed: a model's mean rho against the data RDMs, the quantity its noise ceiling bounds.
    rho_repeats = (_repeat_unit_ranks(ranks) @ layer_unit_ranks).mean(axis=0)
    return _RoiComparison(observed, _p_values(observed, null), null, rho_repeats, _ceiling_of_ranks(ranks))


def rsa_against_rois(
    features_by_layer: dict[str, np.ndarray],
    roi_patterns: dict[str, RoiPatterns],
    n_permutations: int,
    seed: int,
) -> list[RsaRow]:
    """Compare every layer's RDM with every ROI's RDM of the same subject over the same images, and give each ROI's
    RDM noise ceiling beside it.

    ``features_by_layer`` maps a layer name to (n_images, n_features); ``roi_patterns`` maps an ROI name to its
    patterns (:class:`RoiPatterns`: voxels or PC scores), the images in the same order on both sides, which only the
    caller can ensure. Rows come layer by layer, ROIs in the given order. Every pair uses the same image permutations
    (from ``seed``), so null distributions are paired across layers and ROIs.
    """
    counts = _n_images(features_by_layer, "layers") | _n_images(
        {roi: patterns.mean for roi, patterns in roi_patterns.items()}, "ROIs")
    if len(counts) != 1:
        layer_sizes = {layer: len(features) for layer, features in features_by_layer.items()}
        roi_sizes = {roi: len(patterns.mean) for roi, patterns in roi_patterns.items()}
        raise ValueError(f"layers and ROIs must cover the same images, got image counts {layer_sizes} and {roi_sizes}")
    for roi, patterns in roi_patterns.items():
        _check_repeats(roi, patterns)
    (n_images,) = counts
    if n_images < MIN_IMAGES:
        raise ValueError(f"need at least {MIN_IMAGES} images to compare RDMs, got {n_images}")
    layer_rdms = {layer: rdm(features) for layer, features in features_by_layer.items()}
    # One column per layer, so each ROI permutation is gathered once for all layers.
    layer_unit_ranks = np.stack(
        [_unit_ranks(upper_triangle(matrix), f"RDM of layer {layer}") for layer, matrix in layer_rdms.items()], axis=1
    )
    permutations = image_permutations(n_images, n_permutations, seed)
    by_roi = {roi: _compare_roi(layer_unit_ranks, patterns, permutations) for roi, patterns in roi_patterns.items()}
    return [
        RsaRow(
            layer=layer,
            roi=roi,
            rho=float(compared.observed[column]),
            p_value=float(compared.p_values[column]),
            rho_repeats=float(compared.rho_repeats[column]),
            ceiling_lower=compared.ceiling.lower,
            ceiling_upper=compared.ceiling.upper,
            n_images=n_images,
            n_permutations=n_permutations,
            null=compared.null[:, column].copy(),
        )
        for column, layer in enumerate(layer_rdms)
        for roi, compared in by_roi.items()
    ]


def rows_to_arrays(rows: Sequence[RsaRow]) -> dict[str, np.ndarray]:
    """The rows as column arrays ready for HDF5 datasets (e.g. ``write_result``'s ``curves``).

    Names are UTF-8 byte strings (numpy ``S`` dtype) because h5py cannot store numpy's unicode (``U``) arrays;
    read them back with ``np.char.decode(array, "utf-8")``. ``null`` is (n_rows, n_permutations).
    """
    if not rows:
        raise ValueError("no RSA rows to store")
    if len({row.n_permutations for row in rows}) != 1:
        raise ValueError("rows with different permutation counts cannot share one null array")
    return {
        "layer": np.array([row.layer.encode("utf-8") for row in rows], dtype=np.bytes_),
        "roi": np.array([row.roi.encode("utf-8") for row in rows], dtype=np.bytes_),
        "rho": np.array([row.rho for row in rows], dtype=np.float64),
        "p_value": np.array([row.p_value for row in rows], dtype=np.float64),
        "rho_repeats": np.array([row.rho_repeats for row in rows], dtype=np.float64),
        "ceiling_lower": np.array([row.ceiling_lower for row in rows], dtype=np.float64),
        "ceiling_upper": np.array([row.ceiling_upper for row in rows], dtype=np.float64),
        "n_images": np.array([row.n_images for row in rows], dtype=np.int64),
        "n_permutations": np.array([row.n_permutations for row in rows], dtype=np.int64),
        "null": np.stack([row.null for row in rows]).astype(np.float64),
    }

"""Canonical neural-data files: one HDF5 file per subject holding the fMRI responses that guide training.

Both sources of neural data end in the same file: the simulated brain of the embedded default
(:mod:`sfhpc.data.simulated_nsd`) and the real Natural Scenes Dataset (:mod:`sfhpc.data.nsd`, made by
``sfhpc data nsd-prepare``). Stages read it with :func:`open_neural`; the preparation follows SCIENCE.md section 1
(repeat averages, split validation = shared images, z-score and PCA fitted on training images, NSD noise ceiling).

Layout (schema_version 1)::

    attrs         schema_version (1), kind ("simulated" | "nsd"), subject ("subj01"), n_images, n_trials,
                  variance_kept (0.95), rois (JSON list, hierarchy order), stimulus_file (path of
                  nsd_stimuli.hdf5 for NSD, "" when the pixels are inline), sfhpc_version, numpy_version, created
                  (ISO 8601, UTC), and the writer's provenance (nsd: nsd_root, atlas, sessions; simulated:
                  simulation, as JSON)
    images/ids      int64 (n_images,)            NSD 73k ids, 0-based (simulated: 0..n_images-1)
    images/pixels   uint8 (n_images, H, W, 3)    only when inline (simulated); NSD reads stimulus_file's imgBrick
    split/train     int64 (n_train,)             indices into the image list: images not shared
    split/val       int64 (n_val,)               indices into the image list: the shared images
    trials/image    int64 (n_trials,)            index into the image list of each trial
    trials/session  int64 (n_trials,)            session number of each trial (1-based, as in NSD file names)
    rois/<ROI>/     one group per ROI; attrs n_voxels, n_components, noise_ceiling_mean (%)
        trials                  float32 (n_trials, n_voxels)  single-trial responses, % signal change
        mean                    float32 (n_images, n_voxels)  repeat averages of each image
        zscore_mean, zscore_sd  float32 (n_voxels,)           per voxel, over the training images' averages
        pca_components          float32 (k, n_voxels)         PCA of the z-scored training averages, keeping
        pca_explained_variance  float32 (k,)                  >= variance_kept of their variance
        scores                  float32 (n_images, k)         PC scores of every image's z-scored average:
                                                              the predictor's targets
        noise_ceiling           float32 (n_voxels,)           % (NSD method, see noise_ceiling())
        voxel_index             int64 (n_voxels,)             NSD: flat C-order index into the betas' (Z, Y, X)
                                                              grid (root attr volume_shape_zyx); simulated: arange

Numpy, scipy and h5py only: the login node checks these files at `sweep expand` (:func:`check_neural`).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from sfhpc.config import REFERENCE_NOISE_CEILING, ROIS, SUBJECTS
from sfhpc.results import atomic_write, now_iso, package_version

if TYPE_CHECKING:
    from sfhpc.config import NeuralConfig

SCHEMA_VERSION = 1
VARIANCE_KEPT = 0.95
CEILING_REPEATS = 3  # the NSD noise ceiling uses images with exactly this many trials
KINDS = ("simulated", "nsd")
# Voxels processed at once in float64: temporaries stay near n_trials x 1024 x 8 bytes (245 MB for NSD's 30000
# trials) however large the ROI.
_VOXEL_BLOCK = 1024
_IMAGES_AT_ONCE = 256  # images read and resized together: 140 MB of NSD's 425 px images


class NeuralDataError(ValueError):
    """A neural-data file, input or setting that cannot be used; the message names the file or setting."""


class NeuralFileNotFound(NeuralDataError, FileNotFoundError):
    """A neural-data file (or an NSD input file) that does not exist."""


class NeuralSubjectMismatch(NeuralDataError):
    """A neural-data file that holds another subject than the one it is read for (its `subject` attribute)."""


# ------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class TrialDesign:
    """Which image each trial showed. ``image_ids`` int64 (n_images,) and ``shared`` bool (n_images,) describe the
    image list (shared images form the validation split); ``trial_image`` int64 (n_trials,) indexes that list and
    ``trial_session`` int64 (n_trials,) numbers each trial's session."""

    image_ids: np.ndarray
    shared: np.ndarray
    trial_image: np.ndarray
    trial_session: np.ndarray

    @property
    def n_images(self) -> int:
        return len(self.image_ids)

    @property
    def n_trials(self) -> int:
        return len(self.trial_image)

    def check(self) -> None:
        """Raise NeuralDataError unless every image has a trial and both splits have images."""
        n = self.n_images
        if self.shared.shape != (n,) or self.trial_session.shape != self.trial_image.shape:
            raise NeuralDataError(f"trial design: shapes differ (image_ids {self.image_ids.shape}, shared "
                                  f"{self.shared.shape}, trial_image {self.trial_image.shape}, trial_session "
                                  f"{self.trial_session.shape})")
        if self.n_trials == 0 or self.trial_image.min() < 0 or self.trial_image.max() >= n:
            raise NeuralDataError(f"trial design: trial_image must index the {n} images")
        unseen = np.flatnonzero(np.bincount(self.trial_image, minlength=n) == 0)
        if len(unseen):
            raise NeuralDataError(f"trial design: {len(unseen)} images have no trial (first: index {unseen[0]})")
        if self.shared.all() or not self.shared.any():
            raise NeuralDataError(f"trial design: need both shared (validation) and training images, got "
                                  f"{int(self.shared.sum())} shared of {n}")


@dataclass(frozen=True)
class RoiTrials:
    """One ROI's single-trial responses: ``trials`` float32 (n_trials, n_voxels) in % signal change, and each
    voxel's ``voxel_index`` int64 (n_voxels,)."""

    name: str
    trials: np.ndarray
    voxel_index: np.ndarray


# ----------------------------------------------------------------------------------- computations
def _voxel_blocks(n_voxels: int) -> Iterator[slice]:
    for start in range(0, n_voxels, _VOXEL_BLOCK):
        yield slice(start, min(start + _VOXEL_BLOCK, n_voxels))


def trials_of_images_with(trial_image: np.ndarray, repeats: int) -> np.ndarray:
    """(m, repeats) trial indices of the m images shown exactly `repeats` times, images in index order."""
    counts = np.bincount(trial_image)
    order = np.argsort(trial_image, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    images = np.flatnonzero(counts == repeats)
    return order[starts[images][:, None] + np.arange(repeats)]


def _zscore_per_session(block: np.ndarray, session_rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """z-score each column within each session (SD with ddof=0), in float64. Also returns which columns were
    constant in some session: such a voxel carries no signal."""
    z = block.astype(np.float64)
    constant = np.zeros(block.shape[1], dtype=bool)
    for rows in session_rows:
        values = z[rows]
        sd = values.std(axis=0)
        constant |= sd == 0
        z[rows] = (values - values.mean(axis=0)) / np.where(sd == 0, 1.0, sd)
    return z, constant


def noise_ceiling(trials: np.ndarray, trial_image: np.ndarray, trial_session: np.ndarray,
                  n_average: int = CEILING_REPEATS) -> np.ndarray:
    """Per-voxel noise ceiling (%) by the NSD method (SCIENCE.md section 1), float32 (n_voxels,).

    Responses are z-scored per voxel within each session; over the images with exactly 3 trials,
    sigma_noise^2 = mean of the across-repeat variance (ddof=1); ncsnr^2 = max(1 - sigma_noise^2, 0) / sigma_noise^2;
    NC = 100 * ncsnr^2 / (ncsnr^2 + 1/n_average), written as 100 * s / (s + sigma_noise^2 / n_average) with
    s = max(1 - sigma_noise^2, 0), which needs no division by a zero sigma. A voxel constant within a session
    gets 0.
    """
    repeated = trials_of_images_with(trial_image, CEILING_REPEATS)
    if not len(repeated):
        raise NeuralDataError(f"noise ceiling: no image has exactly {CEILING_REPEATS} trials")
    session_rows = [np.flatnonzero(trial_session == s) for s in np.unique(trial_session)]
    ceiling = np.empty(trials.shape[1], dtype=np.float32)
    for cols in _voxel_blocks(trials.shape[1]):
        z, constant = _zscore_per_session(trials[:, cols], session_rows)
        noise_var = z[repeated].var(axis=1, ddof=1).mean(axis=0)
        signal_var = np.maximum(1.0 - noise_var, 0.0)
        denominator = signal_var + noise_var / n_average
        nc = 100 * np.divide(signal_var, denominator, out=np.zeros_like(signal_var), where=denominator > 0)
        ceiling[cols] = np.where(constant, 0.0, nc)
    return ceiling


def repeat_averages(trials: np.ndarray, trial_image: np.ndarray, n_images: int) -> np.ndarray:
    """float32 (n_images, n_voxels): the mean of each image's trials (summed in float64)."""
    import scipy.sparse

    counts = np.bincount(trial_image, minlength=n_images)
    n_trials = len(trial_image)
    averaging = scipy.sparse.csr_matrix((1.0 / counts[trial_image], (trial_image, np.arange(n_trials))),
                                        shape=(n_images, n_trials))
    means = np.empty((n_images, trials.shape[1]), dtype=np.float32)
    for cols in _voxel_blocks(trials.shape[1]):
        means[:, cols] = averaging @ trials[:, cols].astype(np.float64)
    return means


@dataclass(frozen=True)
class Standardization:
    """Per-voxel mean and SD (ddof=0) of the training images' averages; a constant voxel gets SD 1."""

    mean: np.ndarray
    sd: np.ndarray

    @classmethod
    def fit(cls, train_means: np.ndarray) -> Standardization:
        values = train_means.astype(np.float64)
        sd = values.std(axis=0)
        return cls(values.mean(axis=0), np.where(sd == 0, 1.0, sd))

    def apply(self, means: np.ndarray) -> np.ndarray:
        return (means.astype(np.float64) - self.mean) / self.sd


@dataclass(frozen=True)
class Pca:
    """Principal components (k, n_voxels) and their variances (k,) of centred data, float64."""

    components: np.ndarray
    explained_variance: np.ndarray

    @classmethod
    def fit(cls, centred: np.ndarray, variance_kept: float = VARIANCE_KEPT) -> Pca:
        """Keep the fewest leading components whose variance reaches `variance_kept` of the total. Signs are
        fixed (largest loading positive) so that the same data always gives the same components.

        Computed by an eigendecomposition of the smaller of the covariance (voxels x voxels) and Gram (images x
        images) matrices, in float64: the same components as an SVD of the data, 5x faster at NSD sizes (9000
        training images x 2000 voxels: 2.3 s instead of 12 s on one core)."""
        n_images, n_voxels = centred.shape
        total = float((centred**2).sum())
        if total <= 0:
            raise NeuralDataError("PCA: the training responses have no variance")
        by_voxels = n_voxels <= n_images
        values, vectors = np.linalg.eigh(centred.T @ centred if by_voxels else centred @ centred.T)
        values, vectors = np.maximum(values[::-1], 0.0), vectors[:, ::-1]  # descending
        k = min(int(np.searchsorted(np.cumsum(values) / total, variance_kept - 1e-12)) + 1, int((values > 0).sum()))
        if by_voxels:
            components = vectors[:, :k].T
        else:  # a Gram eigenvector u with eigenvalue s^2 gives the component X^T u / s
            components = (vectors[:, :k].T @ centred) / np.sqrt(values[:k])[:, None]
        signs = np.sign(components[np.arange(k), np.abs(components).argmax(axis=1)])
        return cls(components * signs[:, None], values[:k] / max(n_images - 1, 1))


# -------------------------------------------------------------------------------------------- write
def hierarchy_order(names: Iterable[str]) -> list[str]:
    """ROI names in hierarchy order (config.ROIS); other names (e.g. NSD `streams` labels) after them, as given."""
    names = list(names)
    known = [name for name in ROIS if name in names]
    return known + [name for name in names if name not in ROIS]


def _attr_value(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, np.integer, np.floating)) else json.dumps(value)


def _write_roi(group: h5py.Group, roi: RoiTrials, design: TrialDesign, train: np.ndarray) -> float:
    """Write one ROI's group; returns its mean noise ceiling."""
    trials = np.asarray(roi.trials, dtype=np.float32)
    if trials.ndim != 2 or trials.shape[0] != design.n_trials or len(roi.voxel_index) != trials.shape[1]:
        raise NeuralDataError(f"ROI {roi.name}: trials {trials.shape} and voxel_index {len(roi.voxel_index)} do "
                              f"not match {design.n_trials} trials")
    if trials.shape[1] == 0:
        raise NeuralDataError(f"ROI {roi.name}: no voxels")
    means = repeat_averages(trials, design.trial_image, design.n_images)
    scaler = Standardization.fit(means[train])
    z = scaler.apply(means)
    pca = Pca.fit(z[train])
    ceiling = noise_ceiling(trials, design.trial_image, design.trial_session)
    group.create_dataset("trials", data=trials)
    group.create_dataset("mean", data=means)
    group.create_dataset("zscore_mean", data=scaler.mean.astype(np.float32))
    group.create_dataset("zscore_sd", data=scaler.sd.astype(np.float32))
    group.create_dataset("pca_components", data=pca.components.astype(np.float32))
    group.create_dataset("pca_explained_variance", data=pca.explained_variance.astype(np.float32))
    group.create_dataset("scores", data=(z @ pca.components.T).astype(np.float32))
    group.create_dataset("noise_ceiling", data=ceiling)
    group.create_dataset("voxel_index", data=np.asarray(roi.voxel_index, dtype=np.int64))
    mean_ceiling = float(ceiling.mean())
    group.attrs.update({"n_voxels": trials.shape[1], "n_components": len(pca.components),
                        "noise_ceiling_mean": mean_ceiling})
    return mean_ceiling


def write_canonical(path: Path | str, subject: str, kind: str, design: TrialDesign, rois: Iterable[RoiTrials], *,
                    images: np.ndarray | None = None, stimulus_file: str = "", provenance: dict[str, Any]) -> None:
    """Atomically write a subject's canonical neural-data file (layout in the module docstring).

    `rois` is consumed one ROI at a time, so a generator keeps only one ROI's trials in memory. `images` are the
    inline pixels, uint8 (n_images, H, W, 3); without them `stimulus_file` must name an HDF5 file whose `imgBrick`
    holds the images by id. `provenance` goes into the root attributes (non-scalars as JSON).
    """
    if kind not in KINDS:
        raise NeuralDataError(f"kind must be one of {KINDS}, got {kind!r}")
    design.check()
    if images is None and not stimulus_file:
        raise NeuralDataError("write_canonical needs inline images or a stimulus_file")
    if images is not None and (images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != design.n_images
                               or images.shape[3] != 3):
        raise NeuralDataError(f"images must be uint8 (n_images={design.n_images}, H, W, 3), got "
                              f"{images.dtype} {images.shape}")
    train, val = np.flatnonzero(~design.shared), np.flatnonzero(design.shared)

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs.update({"schema_version": SCHEMA_VERSION, "kind": kind, "subject": subject,
                            "n_images": design.n_images, "n_trials": design.n_trials,
                            "variance_kept": VARIANCE_KEPT, "stimulus_file": str(stimulus_file),
                            "sfhpc_version": package_version("sfhpc"), "numpy_version": np.__version__,
                            "host": socket.gethostname(), "created": now_iso()})
            f.attrs.update({key: _attr_value(value) for key, value in provenance.items()})
            f.create_dataset("images/ids", data=design.image_ids.astype(np.int64))
            if images is not None:
                f.create_dataset("images/pixels", data=images, chunks=(1, *images.shape[1:]))
            f.create_dataset("split/train", data=train.astype(np.int64))
            f.create_dataset("split/val", data=val.astype(np.int64))
            f.create_dataset("trials/image", data=design.trial_image.astype(np.int64))
            f.create_dataset("trials/session", data=design.trial_session.astype(np.int64))
            names: list[str] = []
            for roi in rois:
                if roi.name in names:
                    raise NeuralDataError(f"ROI {roi.name} given twice")
                _write_roi(f.create_group(f"rois/{roi.name}"), roi, design, train)
                names.append(roi.name)
            if not names:
                raise NeuralDataError("write_canonical: no ROIs")
            f.attrs["rois"] = json.dumps(hierarchy_order(names))

    atomic_write(Path(path), write, suffix=".h5")


# --------------------------------------------------------------------------------------------- read
@dataclass(frozen=True)
class RoiData:
    """One ROI of a neural-data file, ready for training and RSA. `mean` holds the z-scored repeat averages
    (n_images, n_voxels), `scores` their PC scores (n_images, n_components): the predictor's targets. `zscore_mean`
    and `zscore_sd` (n_voxels,) are the training images' statistics that z-scored them."""

    name: str
    scores: np.ndarray
    mean: np.ndarray
    noise_ceiling: np.ndarray
    explained_variance: np.ndarray
    components: np.ndarray
    voxel_index: np.ndarray
    zscore_mean: np.ndarray
    zscore_sd: np.ndarray

    @property
    def n_components(self) -> int:
        return self.scores.shape[1]

    @property
    def n_voxels(self) -> int:
        return self.mean.shape[1]

    def standardize(self, responses: np.ndarray) -> np.ndarray:
        """Responses (..., n_voxels) in % signal change (repeat averages or single trials), z-scored per voxel with
        the training images' statistics, as `mean` was."""
        return (responses - self.zscore_mean) / self.zscore_sd

    def pc_scores(self, standardized: np.ndarray) -> np.ndarray:
        """float64 (..., n_components): z-scored responses projected on the PCA components, as `scores` were (in
        float64, then stored as float32)."""
        return np.asarray(standardized, dtype=np.float64) @ self.components.astype(np.float64).T


@dataclass(frozen=True)
class NeuralData:
    """A subject's neural-data file, opened by :func:`open_neural`. Holds the small arrays; ROIs and images are
    read from the file when asked for, so the object is cheap to pickle into a job."""

    path: Path
    subject: str
    kind: str
    rois: tuple[str, ...]
    image_ids: np.ndarray
    train_index: np.ndarray
    val_index: np.ndarray
    stimulus_file: str

    @property
    def n_images(self) -> int:
        return len(self.image_ids)

    def roi(self, name: str) -> RoiData:
        """One ROI's scores, z-scored averages, noise ceiling and PCA; NeuralDataError for an ROI not in the file."""
        if name not in self.rois:
            raise NeuralDataError(f"{self.path}: no ROI {name!r}; this file has {', '.join(self.rois)}")
        with h5py.File(self.path, "r") as f:
            group = f["rois"][name]
            roi = RoiData(name=name, scores=group["scores"][()], mean=group["mean"][()],
                          noise_ceiling=group["noise_ceiling"][()],
                          explained_variance=group["pca_explained_variance"][()],
                          components=group["pca_components"][()], voxel_index=group["voxel_index"][()],
                          zscore_mean=group["zscore_mean"][()], zscore_sd=group["zscore_sd"][()])
        # z-scored by the very function that single trials go through (repeat_trials, for RSA's noise ceiling)
        return replace(roi, mean=roi.standardize(roi.mean).astype(np.float32))

    def images_with_repeats(self, index: Sequence[int] | np.ndarray, repeats: int = CEILING_REPEATS) -> np.ndarray:
        """int64: the images of `index` (positions in the image list, e.g. val_index) shown exactly `repeats` times,
        in the order given. NSD's shared images have 3 trials each in a subject who finished every session, fewer
        in one who did not (or in a file prepared from some sessions only)."""
        index = np.asarray(index, dtype=np.int64)
        counts = np.bincount(self._trial_image(), minlength=self.n_images)
        return index[counts[index] == repeats]

    def repeat_trials(self, name: str, images: Sequence[int] | np.ndarray,
                      repeats: int = CEILING_REPEATS) -> np.ndarray:
        """float32 (repeats, n_images, n_voxels): the single-trial responses (% signal change) of ROI `name` to
        `images` (positions in the image list), each shown exactly `repeats` times; [k] holds each image's (k+1)-th
        trial in the order of the file's trials (NSD: session by session, in the order shown). NeuralDataError for
        an ROI not in the file or an image with another number of trials."""
        if name not in self.rois:
            raise NeuralDataError(f"{self.path}: no ROI {name!r}; this file has {', '.join(self.rois)}")
        rows = _repeat_trial_rows(self._trial_image(), np.asarray(images, dtype=np.int64), repeats, self.path)
        with h5py.File(self.path, "r") as f:
            trials = _read_rows(f["rois"][name]["trials"], rows.ravel())
        return trials.reshape(*rows.shape, trials.shape[1])

    def _trial_image(self) -> np.ndarray:
        """int64 (n_trials,): the image (position in the image list) of each trial."""
        with h5py.File(self.path, "r") as f:
            return f["trials/image"][()]

    def images(self, index: Sequence[int] | np.ndarray, size: int) -> np.ndarray:
        """uint8 (n, 3, size, size): the images at `index` (positions in the image list), from the file's inline
        pixels or from the stimulus file's imgBrick by NSD id, resized with PIL's antialiasing bilinear filter."""
        index = np.asarray(index, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= self.n_images):
            raise NeuralDataError(f"{self.path}: image index out of range 0..{self.n_images - 1}")
        if self.stimulus_file:
            stimuli, name, rows = Path(self.stimulus_file), "imgBrick", self.image_ids[index]
            if not stimuli.exists():
                raise NeuralFileNotFound(f"{stimuli}: stimulus file not found (named by {self.path})")
        else:
            stimuli, name, rows = self.path, "images/pixels", index
        out = np.empty((len(index), 3, size, size), dtype=np.uint8)
        with h5py.File(stimuli, "r") as f:
            # In chunks: all 10,000 of an NSD subject's 425 px images would take 5.4 GB before resizing.
            for start in range(0, len(index), _IMAGES_AT_ONCE):
                chunk = slice(start, start + _IMAGES_AT_ONCE)
                out[chunk] = resize_images(_read_rows(f[name], rows[chunk]), size)
        return out


def _repeat_trial_rows(trial_image: np.ndarray, images: np.ndarray, repeats: int, path: Path) -> np.ndarray:
    """int64 (repeats, n_images): the trial indices of each image's `repeats` trials, in trial order."""
    counts = np.bincount(trial_image)
    known = (images >= 0) & (images < len(counts))
    wrong = images[~known | (counts[np.where(known, images, 0)] != repeats)]
    if len(wrong):
        raise NeuralDataError(f"{path}: {len(wrong)} of the {len(images)} images asked for do not have exactly "
                              f"{repeats} trials (first: image index {wrong[0]})")
    shown = np.flatnonzero(counts == repeats)
    return trials_of_images_with(trial_image, repeats)[np.searchsorted(shown, images)].T


def _plain(value: Any) -> Any:
    """A numpy scalar attribute as a Python value, for messages."""
    return value.item() if isinstance(value, np.generic) else value


def _read_rows(dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """dataset[rows] for any order and repeats (h5py wants increasing, unique indices)."""
    unique, inverse = np.unique(rows, return_inverse=True)
    return dataset[unique][inverse] if len(unique) else np.empty((0, *dataset.shape[1:]), dataset.dtype)


def resize_images(pixels: np.ndarray, size: int) -> np.ndarray:
    """uint8 (n, H, W, 3) -> uint8 (n, 3, size, size); PIL's bilinear resize antialiases when it shrinks."""
    from PIL import Image

    if pixels.shape[1:3] != (size, size):
        pixels = np.stack([np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
                           for image in pixels]) if len(pixels) else np.empty((0, size, size, 3), np.uint8)
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))


def open_neural(path: Path | str) -> NeuralData:
    """Open a canonical neural-data file. NeuralFileNotFound if it does not exist; NeuralDataError if it is not
    HDF5, has another schema_version or lacks the canonical groups."""
    path = Path(path)
    if not path.exists():
        raise NeuralFileNotFound(f"{path}: neural-data file not found")
    try:
        with h5py.File(path, "r") as f:
            version = _plain(f.attrs.get("schema_version"))
            if version != SCHEMA_VERSION:
                raise NeuralDataError(f"{path}: schema_version {version!r}, expected {SCHEMA_VERSION} (prepare the "
                                      f"file again with this version of sfhpc)")
            return NeuralData(path=path, subject=str(f.attrs["subject"]), kind=str(f.attrs["kind"]),
                              rois=tuple(json.loads(f.attrs["rois"])), image_ids=f["images/ids"][()],
                              train_index=f["split/train"][()], val_index=f["split/val"][()],
                              stimulus_file=str(f.attrs["stimulus_file"]))
    except NeuralDataError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise NeuralDataError(f"{path}: not a canonical neural-data file ({type(err).__name__}: {err})") from None


# ------------------------------------------------------------------------------------ configuration
def simulated_ceilings(config: NeuralConfig) -> dict[str, float]:
    """The simulated brain's target noise ceiling (%) per ROI: the config's values over the reference ones."""
    return {**REFERENCE_NOISE_CEILING, **config.noise_ceiling}


def check_simulated_settings(config: NeuralConfig) -> None:
    """The simulated brain's settings: noise ceilings of known ROIs, between 0 and 100 %, and training images."""
    unknown = sorted(set(config.noise_ceiling) - set(ROIS))
    if unknown:
        raise NeuralDataError(f"data.neural.noise_ceiling: unknown ROI {', '.join(unknown)}; ROIs: {', '.join(ROIS)}")
    bad = {roi: value for roi, value in config.noise_ceiling.items() if not 0 < value < 100}
    if bad:
        raise NeuralDataError(f"data.neural.noise_ceiling: must be between 0 and 100 (%), got {bad}")
    if config.n_shared >= config.n_images:
        raise NeuralDataError(f"data.neural.n_shared ({config.n_shared}) must be below n_images "
                              f"({config.n_images}): the other images are the training images")


def check_names(subjects: Iterable[str], rois: Iterable[str], kind: str) -> None:
    """Known subjects (config.SUBJECTS) and, for the simulated brain, known ROIs (config.ROIS); NeuralDataError
    otherwise."""
    unknown = [s for s in subjects if s not in SUBJECTS]
    if unknown:
        raise NeuralDataError(f"unknown subject {', '.join(map(repr, unknown))}; subjects: {', '.join(SUBJECTS)}")
    unknown = [r for r in rois if r not in ROIS]
    if unknown and kind == "simulated":
        raise NeuralDataError(f"unknown ROI {', '.join(map(repr, unknown))}; ROIs: {', '.join(ROIS)}")


def nsd_file(config: NeuralConfig, subject: str) -> Path:
    """Where a prepared NSD subject's file lives: <data.neural.dir>/<subject>.h5."""
    if not config.dir:
        raise NeuralDataError("data.neural.kind is nsd but data.neural.dir is not set: the folder of the files "
                              "`sfhpc data nsd-prepare` made (<dir>/subj01.h5, ...)")
    return Path(config.dir).expanduser() / f"{subject}.h5"


def _check_nsd_file(path: Path, subject: str, rois: Iterable[str]) -> None:
    """Cheap: attributes only. The file must hold `subject`: a file prepared for another subject (or renamed)
    would otherwise guide training with the wrong brain, without a word."""
    if not path.exists():
        raise NeuralFileNotFound(f"{path}: prepared NSD file not found (make it with `sfhpc data nsd-prepare "
                                 f"--subject {subject} --out {path} ...`)")
    try:
        with h5py.File(path, "r") as f:
            version = _plain(f.attrs.get("schema_version"))
            holds = _plain(f.attrs.get("subject"))
            available = json.loads(f.attrs.get("rois", "[]"))
    except (OSError, ValueError) as err:
        raise NeuralDataError(f"{path}: not a readable neural-data file ({err})") from None
    if version != SCHEMA_VERSION:
        raise NeuralDataError(f"{path}: schema_version {version!r}, expected {SCHEMA_VERSION}")
    if holds != subject:
        raise NeuralSubjectMismatch(f"{path}: holds subject {holds!r} (its `subject` attribute), but is read for "
                                    f"{subject!r}; prepare {subject}'s file with `sfhpc data nsd-prepare --subject "
                                    f"{subject} --out {path}`")
    missing = [r for r in rois if r not in available]
    if missing:
        raise NeuralDataError(f"{path}: no ROI {', '.join(missing)}; the file has {', '.join(available) or 'none'}")


def check_neural(config: NeuralConfig, subjects: Iterable[str], rois: Iterable[str]) -> None:
    """Login-node check of a sweep's neural data, at `sweep expand`: subject and ROI names (config.SUBJECTS,
    config.ROIS), the simulated brain's settings, and for NSD that `dir` is set and every subject's file exists,
    holds that subject (NeuralSubjectMismatch otherwise) and has every ROI (ROIs of other atlases are accepted when
    the file has them). Reads HDF5 attributes only. Raises NeuralDataError."""
    subjects, rois = list(subjects), list(rois)
    check_names(subjects, rois, config.kind)
    if config.kind == "simulated":
        check_simulated_settings(config)
        return
    for subject in subjects:
        _check_nsd_file(nsd_file(config, subject), subject, rois)


def checked_nsd_file(config: NeuralConfig, subject: str) -> Path:
    """A prepared NSD subject's file (nsd_file), checked to exist and to hold that subject: where a job opens it,
    since the file may have changed after `sweep expand` checked it."""
    check_names([subject], [], config.kind)
    path = nsd_file(config, subject)
    _check_nsd_file(path, subject, [])
    return path

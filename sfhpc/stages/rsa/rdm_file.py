"""The rsa stage's RDM files: every RDM one subject's comparison used (each model layer's and each ROI's), in
rsatoolbox's own HDF5 layout, written with h5py alone (rsatoolbox is a test extra, never a job's dependency).

rsatoolbox 0.3.2 saves an RDMs object (`RDMs.save(path, file_type="hdf5")`, rsatoolbox.io.hdf5) as
    attrs                  dissimilarity_measure, rsatoolbox_version
    dissimilarities        float64 (n_rdms, n_pairs): each RDM's upper triangle, row by row (scipy's squareform order)
    descriptors/           one attribute per text descriptor of the whole set
    rdm_descriptors/       one dataset per descriptor with a value per RDM (text as byte strings), and `index`
    pattern_descriptors/   one dataset per descriptor with a value per image, and `index`
and `rsatoolbox.rdm.load_rdm(path, file_type="hdf5")` reads any file of that layout back into an RDMs object.
A point writes one file per subject: one RDM per model layer, then one per ROI, over the same images, with the rdm
descriptors kind (model | roi), model (the train point), layer, roi and subject, the pattern descriptor image_id, and
the descriptors point, model, subject, dissimilarity, roi_patterns and images. Torch-free: the login node's
`sfhpc export rdms` uses it too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from sfhpc.evaluation.rsa import upper_triangle
from sfhpc.results import atomic_write

# rsatoolbox's name for 1 - Pearson r (its calc_rdm(method="correlation")), which sfhpc.evaluation.rsa.rdm computes
DISSIMILARITY_MEASURE = "correlation"
LAYOUT_VERSION = "0.3.2"  # the rsatoolbox whose layout the files follow; rsatoolbox writes its own version there
HASH_CHUNK = 1 << 20


def rdm_file_name(subject: str) -> str:
    """The name of a point's RDM file of one subject, beside its result."""
    return f"rdms-{subject}.h5"


@dataclass(frozen=True)
class SubjectRdms:
    """Every RDM of one subject's comparison, over the same images in the same order: one per model layer, one per
    ROI; each (n_images, n_images)."""

    subject: str
    model: str  # the compared model: its train point, "train/<point id>"
    image_ids: np.ndarray  # (n_images,) the images' ids in the neural file: NSD 73k ids, 0-based
    layers: dict[str, np.ndarray]
    rois: dict[str, np.ndarray]

    def vectors(self) -> np.ndarray:
        """(n_rdms, n_pairs) float64: the layers' upper triangles, then the ROIs'."""
        matrices = [*self.layers.values(), *self.rois.values()]
        shapes = {np.shape(matrix) for matrix in matrices}
        if shapes != {(len(self.image_ids),) * 2}:
            raise ValueError(f"RDMs of {self.subject} must all be over its {len(self.image_ids)} images, got shapes "
                             f"{sorted(shapes)}")
        return np.stack([upper_triangle(np.asarray(matrix, dtype=np.float64)) for matrix in matrices])

    def rdm_descriptors(self) -> dict[str, list[str]]:
        """A value per RDM, in the order of `vectors`: kind (model | roi), model, layer, roi, subject; "" where a
        descriptor does not apply (an ROI RDM has no model nor layer, a model RDM no ROI)."""
        model = [("model", self.model, layer, "") for layer in self.layers]
        roi = [("roi", "", "", name) for name in self.rois]
        kinds, models, layers, rois = (list(column) for column in zip(*model, *roi, strict=True))
        return {"kind": kinds, "model": models, "layer": layers, "roi": rois, "subject": [self.subject] * len(kinds)}


def write_rdm_file(path: Path, rdms: SubjectRdms, descriptors: dict[str, str]) -> None:
    """Atomically write `rdms` to `path` in rsatoolbox's HDF5 layout; `descriptors` (text) describe the whole set."""

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["dissimilarity_measure"] = DISSIMILARITY_MEASURE
            f.attrs["rsatoolbox_version"] = LAYOUT_VERSION
            f.create_dataset("dissimilarities", data=rdms.vectors())
            f.create_group("descriptors").attrs.update(descriptors)
            _write_descriptors(f.create_group("rdm_descriptors"), rdms.rdm_descriptors())
            _write_descriptors(f.create_group("pattern_descriptors"),
                               {"image_id": np.asarray(rdms.image_ids, dtype=np.int64)})

    atomic_write(path, write, suffix=".h5")


def _write_descriptors(group: h5py.Group, values: Mapping[str, list[str] | np.ndarray]) -> None:
    """One dataset per descriptor (text as ASCII bytes: rsatoolbox decodes them so) and rsatoolbox's `index`."""
    for name, column in values.items():
        group[name] = column if isinstance(column, np.ndarray) else np.array([_ascii(v) for v in column],
                                                                             dtype=np.bytes_)
    group["index"] = np.arange(len(next(iter(values.values()))), dtype=np.int64)


def _ascii(text: str) -> bytes:
    """`text` as ASCII bytes: rsatoolbox turns descriptor bytes into text with numpy's ASCII decoding, which fails on
    any other byte, so a non-ASCII character (a point id can hold one) is written as its Python escape (é: \\xe9)."""
    return text.encode("ascii", "backslashreplace")


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in chunks: what a result records of each RDM file it was written with."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()

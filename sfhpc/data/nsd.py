"""The real Natural Scenes Dataset -> a canonical neural-data file (`sfhpc data nsd-prepare`).

Reads the NSD release layout of SCIENCE.md section 1 under an NSD root folder:
    nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5      imgBrick (73000, 425, 425, 3) uint8: referenced, not copied
    nsddata/experiments/nsd/nsd_expdesign.mat         masterordering (1, 30000), subjectim (8, 10000),
                                                      sharedix (1, 1000); MATLAB indices, 1-based
    nsddata_betas/ppdata/subjNN/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_sessionSS.hdf5
                                                      betas int16 (trials, Z, Y, X); / 300 = % signal change
    nsddata/ppdata/subjNN/func1pt8mm/roi/<atlas>.nii.gz and nsdgeneral.nii.gz   (X, Y, Z) label volumes

Trial t (0-based over the sessions used) showed the 10k-index masterordering[t]; the subject's 73k id of 10k index
i is subjectim[subject - 1, i - 1], stored 0-based; images with 10k index <= len(sharedix) (1000) are the shared,
validation images. The trial count per session is read from the betas files (750 in NSD; the test fixtures use
fewer) and must be the same in every session and divide masterordering's length: sessions are laid out in
masterordering in blocks of that size. A ROI is its atlas labels intersected with nsdgeneral > 0. NIfTI volumes
are (X, Y, Z) and h5py betas (trials, Z, Y, X): masks are transposed to (Z, Y, X) before use, and voxel_index is the
flat C-order index into that (Z, Y, X) grid.

Memory: sessions are streamed one at a time, and of each only the bounding box of the ROIs is read. The peak is
about one session's betas plus all ROI trials (plus one ROI's float64 averaging and PCA temporaries while writing):
subj01 (grid 81 x 104 x 83): one whole session 750 x 83 x 104 x 81 int16 = 1049 MB (the ROI box is smaller);
ROI trials 30000 x n_voxels float32 = 0.12 MB per voxel (1.2 GB for 10,000 voxels). `plan.memory()` computes it
for the chosen ROIs, and the CLI prints it before reading. Measured on a synthetic tree of 4 sessions x 750 trials
on a 60 x 70 x 50 grid with 52,714 ROI voxels (far more than NSD's ROIs): estimate 315 MB + 633 MB, peak RSS 1.5 GB;
reading took 1.1 s per session, writing (averages, PCA, noise ceilings of 7 ROIs) 67 s on one core.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sfhpc.data.neural import (
    NeuralDataError,
    NeuralFileNotFound,
    RoiTrials,
    TrialDesign,
    hierarchy_order,
    write_canonical,
)

BETA_SCALE = 300.0  # int16 betas / 300 = percent signal change
SESSIONS_PER_SUBJECT: dict[int, int] = {1: 40, 2: 40, 3: 32, 4: 30, 5: 40, 6: 32, 7: 40, 8: 30}

_KASTNER_NAMES = ("V1v", "V1d", "V2v", "V2d", "V3v", "V3d", "hV4", "VO1", "VO2", "PHC1", "PHC2", "TO2", "TO1", "LO2",
                  "LO1", "V3B", "V3A", "IPS0", "IPS1", "IPS2", "IPS3", "IPS4", "IPS5", "SPL1", "FEF")
_STREAMS_NAMES = ("early", "midventral", "midlateral", "midparietal", "ventral", "lateral", "parietal")
_PRF_NAMES = ("V1v", "V1d", "V2v", "V2d", "V3v", "V3d", "hV4")


def _single_labels(names: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    return {name: (label,) for label, name in enumerate(names, start=1)}


# ROI name -> atlas labels, per atlas (SCIENCE.md section 1). Each atlas also accepts its own label names.
ATLASES: dict[str, dict[str, tuple[int, ...]]] = {
    "Kastner2015": {"V1": (1, 2), "V2": (3, 4), "V4": (7,), "VO": (8, 9), "PHC": (10, 11), "TO": (12, 13),
                    "LO": (14, 15), **_single_labels(_KASTNER_NAMES)},
    "streams": _single_labels(_STREAMS_NAMES),
    "prf-visualrois": {"V1": (1, 2), "V2": (3, 4), "V3": (5, 6), "V4": (7,), **_single_labels(_PRF_NAMES)},
}


# ---------------------------------------------------------------------------------------------- paths
def subject_number(text: str | int) -> int:
    """'1', '01', 'subj01' or 1 -> 1; NeuralDataError for anything but subjects 1..8."""
    match = re.fullmatch(r"(?:subj)?0*(\d+)", str(text).strip())
    number = int(match.group(1)) if match else 0
    if number not in SESSIONS_PER_SUBJECT:
        raise NeuralDataError(f"unknown NSD subject {text!r}: NSD has subjects 1..8 (subj01..subj08)")
    return number


def check_out_name(out: Path | str, subject: int) -> None:
    """NeuralDataError if the file name of `out` names another subject than `subject` (`subj02.h5` for subject 1):
    sweeps read <data.neural.dir>/<subject>.h5, so such a file would be read as the other subject's data."""
    named = {int(n) for n in re.findall(r"subj0*(\d+)", Path(out).name, flags=re.IGNORECASE)} - {subject}
    if named:
        others = ", ".join(f"subj{n:02d}" for n in sorted(named))
        raise NeuralDataError(f"--out {out}: the file name names {others}, but --subject is subj{subject:02d}; a "
                              f"sweep asking for {others} would read subj{subject:02d}'s data. Name it "
                              f"subj{subject:02d}.h5 (sweeps read <data.neural.dir>/<subject>.h5)")


@dataclass(frozen=True)
class NsdLayout:
    """Where the files of one subject are in an NSD root folder (the release layout)."""

    root: Path
    subject: int

    @property
    def stimuli(self) -> Path:
        return self.root / "nsddata_stimuli" / "stimuli" / "nsd" / "nsd_stimuli.hdf5"

    @property
    def expdesign(self) -> Path:
        return self.root / "nsddata" / "experiments" / "nsd" / "nsd_expdesign.mat"

    def betas(self, session: int) -> Path:
        return (self.root / "nsddata_betas" / "ppdata" / f"subj{self.subject:02d}" / "func1pt8mm"
                / "betas_fithrf_GLMdenoise_RR" / f"betas_session{session:02d}.hdf5")

    def roi_volume(self, name: str) -> Path:
        return self.root / "nsddata" / "ppdata" / f"subj{self.subject:02d}" / "func1pt8mm" / "roi" / f"{name}.nii.gz"


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise NeuralFileNotFound(f"{path}: {what} not found")
    return path


# --------------------------------------------------------------------------------------- experiment
@dataclass(frozen=True)
class ExpDesign:
    """nsd_expdesign.mat, flattened, still 1-based as MATLAB wrote it."""

    masterordering: np.ndarray  # (30000,) 10k index per trial
    subjectim: np.ndarray  # (8, 10000) 73k id per subject and 10k index
    sharedix: np.ndarray  # (1000,) 73k ids of the shared images


def read_expdesign(path: Path) -> ExpDesign:
    """Load and check nsd_expdesign.mat."""
    import scipy.io

    _require(path, "NSD experiment design")
    try:
        mat = scipy.io.loadmat(path)
    except (ValueError, OSError, NotImplementedError) as err:
        raise NeuralDataError(f"{path}: not a readable MATLAB file ({err})") from None
    missing = [key for key in ("masterordering", "subjectim", "sharedix") if key not in mat]
    if missing:
        raise NeuralDataError(f"{path}: lacks {', '.join(missing)}")
    design = ExpDesign(masterordering=np.asarray(mat["masterordering"]).ravel().astype(np.int64),
                       subjectim=np.asarray(mat["subjectim"]).astype(np.int64),
                       sharedix=np.asarray(mat["sharedix"]).ravel().astype(np.int64))
    n_10k = design.subjectim.shape[1] if design.subjectim.ndim == 2 else 0
    if design.subjectim.ndim != 2 or design.subjectim.shape[0] != len(SESSIONS_PER_SUBJECT):
        raise NeuralDataError(f"{path}: subjectim has shape {design.subjectim.shape}, expected (8, 10000)")
    if design.masterordering.min() < 1 or design.masterordering.max() > n_10k:
        raise NeuralDataError(f"{path}: masterordering values must be 10k indices 1..{n_10k}")
    if not 0 < len(design.sharedix) <= n_10k:
        raise NeuralDataError(f"{path}: sharedix has {len(design.sharedix)} images for {n_10k} columns of subjectim")
    return design


def trial_design(exp: ExpDesign, subject: int, sessions: tuple[int, ...], trials_per_session: int,
                 source: Path) -> TrialDesign:
    """The subject's trials in the given sessions: image list (sorted by 10k index, so the shared images come
    first), 0-based 73k ids, shared flags and each trial's image and session."""
    n_shared = len(exp.sharedix)
    shared_ids = exp.subjectim[subject - 1, :n_shared]
    if set(shared_ids.tolist()) != set(exp.sharedix.tolist()):
        raise NeuralDataError(f"{source}: the first {n_shared} columns of subjectim (subject {subject}) are not the "
                              "shared images of sharedix")
    positions = np.concatenate([np.arange((s - 1) * trials_per_session, s * trials_per_session) for s in sessions])
    ten_k = exp.masterordering[positions]
    images, trial_image = np.unique(ten_k, return_inverse=True)
    return TrialDesign(image_ids=exp.subjectim[subject - 1, images - 1] - 1, shared=images <= n_shared,
                       trial_image=trial_image.astype(np.int64),
                       trial_session=np.repeat(np.asarray(sessions, dtype=np.int64), trials_per_session))


# -------------------------------------------------------------------------------------------- masks
def read_volume(path: Path) -> np.ndarray:
    """A 3-D NIfTI label volume as int64 in the betas' (Z, Y, X) axis order (NIfTI stores X, Y, Z)."""
    import nibabel

    _require(path, "ROI volume")
    try:
        image = nibabel.load(path)
        if not isinstance(image, nibabel.dataobj_images.DataobjImage):  # GIFTI: surface data, no voxel array
            raise nibabel.filebasedimages.ImageFileError("not a voxel image")
        volume = np.asanyarray(image.dataobj)
    except (OSError, nibabel.filebasedimages.ImageFileError) as err:
        raise NeuralDataError(f"{path}: not a readable NIfTI file ({err})") from None
    if volume.ndim != 3:
        raise NeuralDataError(f"{path}: a ROI volume must be 3-D, got shape {volume.shape}")
    return np.rint(volume).astype(np.int64).transpose(2, 1, 0)


def roi_voxels(layout: NsdLayout, atlas: str, rois: list[str], grid_zyx: tuple[int, ...]) -> dict[str, np.ndarray]:
    """ROI name -> sorted flat (Z, Y, X) indices of its atlas labels inside nsdgeneral > 0."""
    labels = _atlas_labels(atlas, rois)
    volumes = {name: read_volume(layout.roi_volume(name)) for name in (atlas, "nsdgeneral")}
    for name, volume in volumes.items():
        if volume.shape != grid_zyx:
            raise NeuralDataError(f"{layout.roi_volume(name)}: grid (X, Y, Z) {volume.shape[::-1]} differs from the "
                                  f"betas' {grid_zyx[::-1]} (betas hold (trials, Z, Y, X))")
    inside = volumes["nsdgeneral"] > 0
    voxels = {}
    for roi in rois:
        voxels[roi] = np.flatnonzero(np.isin(volumes[atlas], labels[roi]) & inside)
        if not len(voxels[roi]):
            raise NeuralDataError(f"{layout.roi_volume(atlas)}: ROI {roi} (labels {list(labels[roi])}) has no voxel "
                                  "inside nsdgeneral")
    return voxels


def _atlas_labels(atlas: str, rois: list[str]) -> dict[str, tuple[int, ...]]:
    if atlas not in ATLASES:
        raise NeuralDataError(f"unknown atlas {atlas!r}; atlases: {', '.join(ATLASES)}")
    unknown = [roi for roi in rois if roi not in ATLASES[atlas]]
    if unknown:
        raise NeuralDataError(f"unknown ROI {', '.join(unknown)} for atlas {atlas}; known: "
                              f"{', '.join(ATLASES[atlas])}")
    if not rois or len(set(rois)) != len(rois):
        raise NeuralDataError(f"ROIs must be given once each, got {rois}")
    return {roi: ATLASES[atlas][roi] for roi in rois}


# --------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class NsdPlan:
    """Everything checked before reading any betas: files, grids, trial counts, ROI voxels and the trial design."""

    layout: NsdLayout
    atlas: str
    sessions: tuple[int, ...]
    trials_per_session: int
    grid_zyx: tuple[int, int, int]
    rois: dict[str, np.ndarray]  # name -> flat (Z, Y, X) voxel indices, hierarchy order
    design: TrialDesign

    @property
    def n_voxels(self) -> int:
        return sum(len(v) for v in self.rois.values())

    def box(self) -> tuple[slice, slice, slice]:
        """The (Z, Y, X) bounding box of every ROI voxel: the part of each session's betas that is read."""
        corners = np.unravel_index(np.concatenate(list(self.rois.values())), self.grid_zyx)
        return tuple(slice(int(axis.min()), int(axis.max()) + 1) for axis in corners)  # type: ignore[return-value]

    def memory(self) -> dict[str, int]:
        """Bytes: one whole session's int16 betas, the part of it read (the ROI box), and all ROI trials."""
        box_voxels = int(np.prod([s.stop - s.start for s in self.box()]))
        return {"session_betas": self.trials_per_session * int(np.prod(self.grid_zyx)) * 2,
                "session_box": self.trials_per_session * box_voxels * 2,
                "roi_trials": self.design.n_trials * self.n_voxels * 4}

    def describe_memory(self) -> str:
        m = self.memory()
        z, y, x = self.grid_zyx
        return (f"memory: one session {self.trials_per_session} x {z}x{y}x{x} int16 = {_size(m['session_betas'])} "
                f"(ROI box read: {_size(m['session_box'])}) + ROI trials {self.design.n_trials} x {self.n_voxels} "
                f"float32 = {_size(m['roi_trials'])}")


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.0f} MB" if n_bytes >= 1e6 else f"{n_bytes / 1e3:.0f} kB"


def _session_shapes(layout: NsdLayout, sessions: tuple[int, ...]) -> tuple[int, tuple[int, int, int]]:
    """(trials per session, (Z, Y, X)) shared by every session's betas file, or a NeuralDataError naming the file."""
    missing = [layout.betas(s) for s in sessions if not layout.betas(s).is_file()]
    if missing:
        raise NeuralFileNotFound(f"{missing[0]}: betas not found ({len(missing)} of {len(sessions)} sessions "
                                 f"missing; --sessions K uses sessions 1..K)")
    shapes: dict[Path, tuple[int, ...]] = {}
    for session in sessions:
        path = layout.betas(session)
        try:
            with h5py.File(path, "r") as f:
                betas = f["betas"]
                shape, dtype = betas.shape, betas.dtype
        except (OSError, KeyError) as err:
            raise NeuralDataError(f"{path}: no readable `betas` dataset ({err})") from None
        if len(shape) != 4 or dtype != np.int16:
            raise NeuralDataError(f"{path}: betas must be int16 (trials, Z, Y, X), got {dtype} {shape}")
        shapes[path] = shape
    first_path, first = next(iter(shapes.items()))
    for path, shape in shapes.items():
        if shape != first:
            raise NeuralDataError(f"{path}: betas {shape} differ from {first_path.name}'s {first}: every session "
                                  "needs the same trial count and grid")
    return first[0], (first[1], first[2], first[3])


def _check_stimuli(path: Path, image_ids: np.ndarray) -> None:
    _require(path, "NSD stimulus file")
    try:
        with h5py.File(path, "r") as f:
            shape = f["imgBrick"].shape
    except (OSError, KeyError) as err:
        raise NeuralDataError(f"{path}: no readable imgBrick dataset ({err})") from None
    if len(shape) != 4 or shape[3] != 3 or shape[0] <= image_ids.max():
        raise NeuralDataError(f"{path}: imgBrick {shape} must be (images, H, W, 3) with image {image_ids.max()}")


def plan_nsd(root: Path | str, subject: str | int, atlas: str, rois: list[str], sessions: int | None = None,
             out: Path | str | None = None) -> NsdPlan:
    """Check an NSD subject's files and settings without reading betas; NeuralDataError (NeuralFileNotFound for a
    missing file) with a message naming the file otherwise. `sessions` K uses sessions 1..K (default: all). `out`,
    when given, is the file to be written: its name must not name another subject (check_out_name), checked
    before any file is read."""
    number = subject_number(subject)
    if out is not None:
        check_out_name(out, number)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise NeuralFileNotFound(f"{root}: NSD root folder not found")
    _atlas_labels(atlas, rois)
    available = SESSIONS_PER_SUBJECT[number]
    count = available if sessions is None else sessions
    if not 1 <= count <= available:
        raise NeuralDataError(f"--sessions {sessions}: subject {number} has sessions 1..{available}")
    layout = NsdLayout(root, number)
    chosen = tuple(range(1, count + 1))
    exp = read_expdesign(layout.expdesign)
    trials_per_session, grid_zyx = _session_shapes(layout, chosen)
    if len(exp.masterordering) % trials_per_session or count * trials_per_session > len(exp.masterordering):
        raise NeuralDataError(f"{layout.betas(1)}: {trials_per_session} trials per session do not fit "
                              f"masterordering's {len(exp.masterordering)} trials ({layout.expdesign})")
    design = trial_design(exp, number, chosen, trials_per_session, layout.expdesign)
    _check_stimuli(layout.stimuli, design.image_ids)
    voxels = roi_voxels(layout, atlas, rois, grid_zyx)
    return NsdPlan(layout=layout, atlas=atlas, sessions=chosen, trials_per_session=trials_per_session,
                   grid_zyx=grid_zyx, rois={roi: voxels[roi] for roi in hierarchy_order(rois)}, design=design)


# ------------------------------------------------------------------------------------------ prepare
def read_roi_trials(plan: NsdPlan, progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """ROI name -> float32 (n_trials, n_voxels) in % signal change, streaming one session's ROI box at a time."""
    box = plan.box()
    box_shape = tuple(s.stop - s.start for s in box)
    columns = {}
    for roi, flat in plan.rois.items():
        z, y, x = np.unravel_index(flat, plan.grid_zyx)
        columns[roi] = np.ravel_multi_index((z - box[0].start, y - box[1].start, x - box[2].start), box_shape)
    trials = {roi: np.empty((plan.design.n_trials, len(flat)), dtype=np.float32) for roi, flat in plan.rois.items()}
    per_session = plan.trials_per_session
    for done, session in enumerate(plan.sessions):
        with h5py.File(plan.layout.betas(session), "r") as f:
            every_trial_in_box = (slice(None), *box)
            betas = f["betas"][every_trial_in_box].reshape(per_session, -1)
        rows = slice(done * per_session, (done + 1) * per_session)
        for roi, cols in columns.items():
            np.divide(betas[:, cols], np.float32(BETA_SCALE), out=trials[roi][rows], dtype=np.float32)
        del betas
        if progress:
            progress(done + 1, len(plan.sessions))
    return trials


def prepare_nsd(plan: NsdPlan, out: Path | str, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Read the planned sessions and write the canonical file at `out` (atomically); returns a summary. An `out`
    whose name names another subject is refused before any betas are read (check_out_name)."""
    check_out_name(out, plan.layout.subject)
    trials = read_roi_trials(plan, progress)

    def rois():  # hand each ROI over and drop it: memory falls as the file is written
        for roi in list(trials):
            yield RoiTrials(roi, trials.pop(roi), plan.rois[roi])

    z, y, x = plan.grid_zyx
    write_canonical(out, f"subj{plan.layout.subject:02d}", "nsd", plan.design, rois(),
                    stimulus_file=str(plan.layout.stimuli.resolve()),
                    provenance={"nsd_root": str(plan.layout.root.resolve()), "atlas": plan.atlas,
                                "sessions": list(plan.sessions), "trials_per_session": plan.trials_per_session,
                                "volume_shape_zyx": [z, y, x], "beta_scale": BETA_SCALE,
                                "roi_labels": {roi: list(ATLASES[plan.atlas][roi]) for roi in plan.rois}})
    return summarize(out)


def summarize(path: Path | str) -> dict[str, Any]:
    """What a prepared file holds: subject, counts and, per ROI, voxels, PCA components and mean noise ceiling."""
    with h5py.File(path, "r") as f:
        return {"path": str(path), "subject": str(f.attrs["subject"]), "atlas": str(f.attrs.get("atlas", "")),
                "n_images": int(f.attrs["n_images"]), "n_trials": int(f.attrs["n_trials"]),
                "n_val": len(f["split/val"]),
                "rois": {roi: {"voxels": int(group.attrs["n_voxels"]), "components": int(group.attrs["n_components"]),
                               "noise_ceiling": round(float(group.attrs["noise_ceiling_mean"]), 2)}
                         for roi, group in ((name, f["rois"][name]) for name in json.loads(f.attrs["rois"]))}}

"""Tiny fake NSD trees in the exact release layout (SCIENCE.md section 1), for the nsd-prepare tests.

What is smaller than the real dataset, and why the loader still reads it as NSD:
- 30 trials per session instead of 750: the loader takes the count from the betas files (it must be the same in
  every session and divide masterordering's length), so the fake's masterordering has 4 sessions x 30 trials.
- 40 images in the 10k design (8 shared) instead of 10,000 (1,000 shared); each shown 3 times over the 4 sessions,
  as NSD shows each image 3 times over 40 sessions. Only 3 sessions have betas files, so a run needs --sessions.
- A 7 x 6 x 5 (X, Y, Z) grid: every axis a different length, so a swapped axis order fails loudly.
- imgBrick of 120 images of 12 x 12 px instead of 73,000 of 425 x 425.
Betas are int16 = round(300 x (image signal + trial noise)), so the noise ceilings are neither 0 nor 100.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import nibabel
import numpy as np
import scipy.io

from sfhpc.data.nsd import NsdLayout

TRIALS_PER_SESSION = 30
DESIGN_SESSIONS = 4
BETA_SESSIONS = 3
N_10K = 40
N_SHARED = 8
N_73K = 120
GRID_XYZ = (7, 6, 5)


@dataclass(frozen=True)
class FakeNsd:
    """A fake NSD tree and the arrays written into it (1-based as in the files, betas as stored)."""

    layout: NsdLayout
    masterordering: np.ndarray  # (DESIGN_SESSIONS * TRIALS_PER_SESSION,) 10k index per trial, 1-based
    subjectim: np.ndarray  # (8, N_10K) 73k ids, 1-based
    sharedix: np.ndarray  # (N_SHARED,) 73k ids, 1-based
    betas: list[np.ndarray]  # per session: int16 (trials, Z, Y, X)
    volumes: dict[str, np.ndarray]  # atlas name -> (X, Y, Z) labels, as in the NIfTI files
    brick: np.ndarray  # imgBrick uint8 (N_73K, 12, 12, 3)


def _design(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    masterordering = rng.permutation(np.repeat(np.arange(1, N_10K + 1), 3))
    assert len(masterordering) == DESIGN_SESSIONS * TRIALS_PER_SESSION
    sharedix = rng.choice(np.arange(1, N_73K + 1), N_SHARED, replace=False)
    others = np.setdiff1d(np.arange(1, N_73K + 1), sharedix)
    # The shared images first, in the same order for every subject; the rest differ per subject.
    subjectim = np.stack([np.concatenate([sharedix, rng.choice(others, N_10K - N_SHARED, replace=False)])
                          for _ in range(8)])
    return masterordering, subjectim, sharedix


def _volumes(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random label volumes (X, Y, Z) in which every label of each atlas occurs; nsdgeneral 1 in about 80% of the
    voxels, with -1 (outside the brain) and 0 as well."""
    n = int(np.prod(GRID_XYZ))

    def labels(top: int) -> np.ndarray:
        values = np.concatenate([np.arange(1, top + 1), rng.integers(-1, top + 1, n - top)])
        return rng.permutation(values).reshape(GRID_XYZ)

    general = rng.choice([-1, 0, 1], n, p=[0.1, 0.1, 0.8]).reshape(GRID_XYZ)
    return {"Kastner2015": labels(25), "streams": labels(7), "prf-visualrois": labels(7), "nsdgeneral": general}


def _save_nifti(path: Path, volume: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(volume.astype(np.int16), affine=np.eye(4)), str(path))


def make_fake_nsd(root: Path, subject: int = 1, seed: int = 0) -> FakeNsd:
    """Write a fake NSD tree for `subject` under `root` and return what it holds."""
    rng = np.random.default_rng(seed)
    layout = NsdLayout(root, subject)
    masterordering, subjectim, sharedix = _design(rng)
    layout.expdesign.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(layout.expdesign, {"masterordering": masterordering[None, :], "subjectim": subjectim,
                                        "sharedix": sharedix[None, :]})
    brick = rng.integers(0, 256, (N_73K, 12, 12, 3), dtype=np.uint8)
    layout.stimuli.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(layout.stimuli, "w") as f:
        f["imgBrick"] = brick
    volumes = _volumes(rng)
    for name, volume in volumes.items():
        _save_nifti(layout.roi_volume(name), volume)
    grid_zyx = GRID_XYZ[::-1]
    signal = rng.normal(0, 1.0, (N_10K + 1, *grid_zyx))  # row i: 10k image i (1-based)
    betas = []
    for session in range(1, BETA_SESSIONS + 1):
        shown = masterordering[(session - 1) * TRIALS_PER_SESSION:session * TRIALS_PER_SESSION]
        values = signal[shown] + rng.normal(0, 1.5, (TRIALS_PER_SESSION, *grid_zyx)) + 0.3 * session
        betas.append(np.rint(300 * values).astype(np.int16))
        layout.betas(session).parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(layout.betas(session), "w") as f:
            f["betas"] = betas[-1]
    return FakeNsd(layout, masterordering, subjectim, sharedix, betas, volumes, brick)

"""`sfhpc data nsd-prepare` on fake NSD trees: prepared values against a direct numpy computation, and every error."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import h5py
import nibabel
import numpy as np
import pytest
from fake_nsd import BETA_SESSIONS, N_SHARED, TRIALS_PER_SESSION, FakeNsd, make_fake_nsd
from test_neural_data import reference_noise_ceiling
from typer.testing import CliRunner

from sfhpc.cli import app
from sfhpc.data.neural import NeuralDataError, NeuralFileNotFound, open_neural
from sfhpc.data.nsd import ATLASES, NsdPlan, plan_nsd, prepare_nsd, subject_number

runner = CliRunner()


@pytest.fixture
def fake(tmp_path) -> FakeNsd:
    return make_fake_nsd(tmp_path / "lab's NSD data", subject=2)


def expected_trials(fake: FakeNsd, atlas: str, roi: str) -> tuple[np.ndarray, np.ndarray]:
    """(trials, flat (Z, Y, X) voxel indices) computed directly from what the fake wrote."""
    mask_xyz = np.isin(fake.volumes[atlas], ATLASES[atlas][roi]) & (fake.volumes["nsdgeneral"] > 0)
    mask_zyx = mask_xyz.transpose(2, 1, 0)
    betas = np.concatenate(fake.betas).astype(np.float64) / 300
    return betas[:, mask_zyx], np.flatnonzero(mask_zyx)


def test_prepared_values_match_a_direct_computation(fake, tmp_path):
    out = tmp_path / "out" / "subj02.h5"
    plan = plan_nsd(fake.layout.root, "subj02", "Kastner2015", ["TO", "V1", "LO"], sessions=BETA_SESSIONS)
    summary = prepare_nsd(plan, out)
    n_trials = BETA_SESSIONS * TRIALS_PER_SESSION
    ten_k = fake.masterordering[:n_trials]
    images = np.unique(ten_k)
    ids = fake.subjectim[1, images - 1] - 1
    shared = images <= N_SHARED
    assert summary["subject"] == "subj02" and list(summary["rois"]) == ["V1", "LO", "TO"]
    assert summary["n_trials"] == n_trials and summary["n_images"] == len(images)
    with h5py.File(out, "r") as f:
        assert f.attrs["kind"] == "nsd" and f.attrs["atlas"] == "Kastner2015"
        assert f.attrs["stimulus_file"] == str(fake.layout.stimuli.resolve())
        assert json.loads(f.attrs["sessions"]) == [1, 2, 3] and json.loads(f.attrs["volume_shape_zyx"]) == [5, 6, 7]
        np.testing.assert_array_equal(f["images/ids"], ids)
        np.testing.assert_array_equal(f["split/val"], np.flatnonzero(shared))
        np.testing.assert_array_equal(f["split/train"], np.flatnonzero(~shared))
        np.testing.assert_array_equal(images[f["trials/image"][()]], ten_k)
        np.testing.assert_array_equal(f["trials/session"], np.repeat([1, 2, 3], TRIALS_PER_SESSION))
        for roi in ("V1", "LO", "TO"):
            group = f["rois"][roi]
            trials, voxels = expected_trials(fake, "Kastner2015", roi)
            np.testing.assert_array_equal(group["voxel_index"], voxels)
            np.testing.assert_allclose(group["trials"], trials, rtol=1e-6)
            means = np.stack([trials[ten_k == image].mean(axis=0) for image in images])
            np.testing.assert_allclose(group["mean"], means, rtol=1e-5, atol=1e-6)
            train = means[~shared]
            np.testing.assert_allclose(group["zscore_mean"], train.mean(axis=0), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(group["zscore_sd"], train.std(axis=0), rtol=1e-5)
            z = (means - train.mean(axis=0)) / train.std(axis=0)
            components, scores = group["pca_components"][()], group["scores"][()]
            np.testing.assert_allclose(scores, z @ components.T, atol=1e-4)
            residual = z[~shared] - scores[~shared] @ components  # the kept PCs reconstruct >= 95% of the variance
            assert (residual**2).sum() <= 0.05 * (z[~shared] ** 2).sum() + 1e-6
            ceiling = reference_noise_ceiling(trials, np.searchsorted(images, ten_k), f["trials/session"][()])
            np.testing.assert_allclose(group["noise_ceiling"], ceiling, atol=1e-3)
            assert summary["rois"][roi] == {"voxels": len(voxels), "components": len(components),
                                            "noise_ceiling": round(float(ceiling.mean()), 2)}


def test_volume_axes_are_matched_voxel_by_voxel(fake, tmp_path):
    # One voxel followed by hand from its NIfTI (x, y, z) to the h5py betas [trial, z, y, x].
    plan = plan_nsd(fake.layout.root, 2, "Kastner2015", ["V1"], sessions=1)
    prepare_nsd(plan, tmp_path / "s.h5")
    x, y, z = np.argwhere(np.isin(fake.volumes["Kastner2015"], (1, 2)) & (fake.volumes["nsdgeneral"] > 0))[0]
    with h5py.File(tmp_path / "s.h5", "r") as f:
        column = list(f["rois/V1/voxel_index"][()]).index(np.ravel_multi_index((z, y, x), (5, 6, 7)))
        np.testing.assert_allclose(f["rois/V1/trials"][:, column], fake.betas[0][:, z, y, x] / 300, rtol=1e-6)


def test_images_come_from_the_stimulus_file(fake, tmp_path):
    prepare_nsd(plan_nsd(fake.layout.root, 2, "Kastner2015", ["V1"], sessions=2), tmp_path / "s.h5")
    data = open_neural(tmp_path / "s.h5")
    np.testing.assert_array_equal(data.images([1, 0], 12), fake.brick[data.image_ids[[1, 0]]].transpose(0, 3, 1, 2))
    assert data.images([0], 6).shape == (1, 3, 6, 6)


@pytest.mark.parametrize(("atlas", "roi"), [("streams", "ventral"), ("prf-visualrois", "V1"),
                                            ("prf-visualrois", "hV4"), ("Kastner2015", "IPS0")])
def test_other_atlases_and_label_names(fake, tmp_path, atlas, roi):
    prepare_nsd(plan_nsd(fake.layout.root, 2, atlas, [roi], sessions=3), tmp_path / "s.h5")
    trials, _ = expected_trials(fake, atlas, roi)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        np.testing.assert_allclose(f["rois"][roi]["trials"], trials, rtol=1e-6)


def test_memory_figure_of_a_real_subject():
    plan = NsdPlan(layout=None, atlas="Kastner2015", sessions=tuple(range(1, 41)), trials_per_session=750,
                   grid_zyx=(83, 104, 81), rois={"V1": np.array([0, 83 * 104 * 81 - 1])},
                   design=SimpleNamespace(n_trials=30000))
    memory = plan.memory()
    assert memory["session_betas"] == 750 * 83 * 104 * 81 * 2 == 1_048_788_000
    assert memory["session_box"] == memory["session_betas"] and memory["roi_trials"] == 30000 * 2 * 4
    assert "one session 750 x 83x104x81 int16 = 1049 MB" in plan.describe_memory()


@pytest.mark.parametrize(("text", "number"), [("1", 1), ("subj08", 8), ("03", 3), (5, 5)])
def test_subject_names(text, number):
    assert subject_number(text) == number


# ------------------------------------------------------------------------------------------- errors
def _plan(fake: FakeNsd, **changes):
    args = {"root": fake.layout.root, "subject": 2, "atlas": "Kastner2015", "rois": ["V1"], "sessions": 3} | changes
    return plan_nsd(**args)


@pytest.mark.parametrize(("changes", "message"), [
    ({"subject": 9}, r"unknown NSD subject 9: NSD has subjects 1..8"),
    ({"subject": "subj00"}, "unknown NSD subject 'subj00'"),
    ({"atlas": "Glasser"}, "unknown atlas 'Glasser'; atlases: Kastner2015, streams, prf-visualrois"),
    ({"rois": ["early"]}, "unknown ROI early for atlas Kastner2015; known: V1, V2"),
    ({"rois": ["V1", "V1"]}, "ROIs must be given once each"),
    ({"sessions": 41}, "--sessions 41: subject 2 has sessions 1..40"),
    ({"sessions": None}, r"betas_session04.hdf5: betas not found \(37 of 40 sessions missing"),
])
def test_setting_errors(fake, changes, message):
    with pytest.raises(NeuralDataError, match=message):
        _plan(fake, **changes)


def test_missing_files_are_named(fake):
    with pytest.raises(NeuralFileNotFound, match="nowhere: NSD root folder not found"):
        _plan(fake, root=fake.layout.root / "nowhere")
    for path, what in [(fake.layout.stimuli, "NSD stimulus file"), (fake.layout.roi_volume("nsdgeneral"), "ROI volume"),
                       (fake.layout.expdesign, "NSD experiment design")]:
        path.rename(path.with_suffix(".away"))
        with pytest.raises(NeuralFileNotFound, match=f"{path.name}: {what} not found"):
            _plan(fake)
        path.with_suffix(".away").rename(path)
    _plan(fake)


def test_a_mask_on_another_grid_is_refused(fake):
    path = fake.layout.roi_volume("nsdgeneral")
    nibabel.save(nibabel.Nifti1Image(np.ones((5, 6, 7), np.int16), np.eye(4)), str(path))  # axes reversed
    with pytest.raises(NeuralDataError, match=r"nsdgeneral.nii.gz: grid \(X, Y, Z\) \(5, 6, 7\) differs from the "
                                              r"betas' \(7, 6, 5\)"):
        _plan(fake)


def test_an_empty_roi_is_refused(fake):
    outside = nibabel.Nifti1Image(np.zeros((7, 6, 5), np.int16), np.eye(4))
    nibabel.save(outside, str(fake.layout.roi_volume("nsdgeneral")))
    with pytest.raises(NeuralDataError, match=r"Kastner2015.nii.gz: ROI V1 \(labels \[1, 2\]\) has no voxel"):
        _plan(fake)


def _rewrite_betas(fake: FakeNsd, session: int, betas: np.ndarray) -> None:
    with h5py.File(fake.layout.betas(session), "w") as f:
        f["betas"] = betas


def test_sessions_with_other_shapes_are_refused(fake):
    _rewrite_betas(fake, 2, fake.betas[1][:-1])
    with pytest.raises(NeuralDataError, match=r"betas_session02.hdf5: betas \(29, 5, 6, 7\) differ from "
                                              r"betas_session01.hdf5's \(30, 5, 6, 7\)"):
        _plan(fake)


def test_a_trial_count_that_does_not_fit_the_design_is_refused(fake):
    for session in range(1, BETA_SESSIONS + 1):
        _rewrite_betas(fake, session, fake.betas[session - 1][:-4])  # 26 trials: 120 is not a multiple
    with pytest.raises(NeuralDataError, match="26 trials per session do not fit masterordering's 120 trials"):
        _plan(fake)


def test_betas_of_another_type_are_refused(fake):
    _rewrite_betas(fake, 1, fake.betas[0].astype(np.float32))
    with pytest.raises(NeuralDataError, match=r"betas_session01.hdf5: betas must be int16 \(trials, Z, Y, X\)"):
        _plan(fake)


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_prepares_and_prints_a_json_summary(fake, tmp_path):
    out = tmp_path / "prepared data" / "subj02.h5"
    result = runner.invoke(app, ["data", "nsd-prepare", "--nsd-root", str(fake.layout.root), "--subject", "2",
                                 "--rois", "V1,TO", "--out", str(out), "--sessions", "3", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["path"] == str(out) and summary["subject"] == "subj02" and list(summary["rois"]) == ["V1", "TO"]
    assert set(summary["rois"]["TO"]) == {"voxels", "components", "noise_ceiling"}
    assert summary["memory"]["roi_trials"] > 0
    assert open_neural(out).rois == ("V1", "TO")


def test_cli_prints_a_table(fake, tmp_path):
    result = runner.invoke(app, ["data", "nsd-prepare", "--nsd-root", str(fake.layout.root), "--subject", "subj02",
                                 "--out", str(tmp_path / "s.h5"), "--sessions", "2"])
    assert result.exit_code == 0, result.output
    assert "memory: one session 30 x 5x6x7 int16" in result.output
    assert "PHC" in result.output and str(tmp_path / "s.h5") in result.output.replace("\n", "")


@pytest.mark.parametrize("env", [{}, {"FORCE_COLOR": "1", "TTY_COMPATIBLE": "1"}])
def test_piped_cli_shows_no_progress(fake, tmp_path, env):
    """The sessions' progress is a terminal's only: a pipe, a file or a CI log (FORCE_COLOR) gets none of it."""
    result = runner.invoke(app, ["data", "nsd-prepare", "--nsd-root", str(fake.layout.root), "--subject", "2",
                                 "--out", str(tmp_path / "s.h5"), "--sessions", "2"], env=env)
    assert result.exit_code == 0, result.output
    assert "sessions" not in result.stderr and "\x1b[?25l" not in result.output, result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--subject", "9"], "unknown NSD subject '9'"),
    (["--subject", "2", "--atlas", "Glasser"], "unknown atlas 'Glasser'"),
    (["--subject", "2"], "betas_session04.hdf5: betas not found"),
])
def test_cli_errors_exit_2_with_a_message(fake, tmp_path, args, message):
    result = runner.invoke(app, ["data", "nsd-prepare", "--nsd-root", str(fake.layout.root), "--out",
                                 str(tmp_path / "s.h5"), *args])
    assert result.exit_code == 2 and message in result.output.replace("\n", ""), result.output
    assert not (tmp_path / "s.h5").exists()


def test_nsd_prepare_does_not_import_torch(fake, tmp_path):
    # The login-node path (DESIGN.md convention 3): the command and everything it imports stay torch-free.
    probe = ("import sys\nfrom sfhpc.cli import app\ntry:\n    app(sys.argv[1:], standalone_mode=False)\n"
             "except SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'\nprint('OK')")
    args = ["data", "nsd-prepare", "--nsd-root", str(fake.layout.root), "--subject", "2", "--rois", "V1",
            "--out", str(tmp_path / "s.h5"), "--sessions", "1", "--json"]
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().endswith("OK"), done.stderr
    assert (tmp_path / "s.h5").exists()


# ------------------------------------------------------------------------------------- wrong subject
def test_an_out_name_that_names_another_subject_is_refused_before_reading(fake, tmp_path, monkeypatch):
    """subj02's data written as subj03.h5 would be read by every sweep asking for subj03."""
    with pytest.raises(NeuralDataError, match=r"--out .*subj03.h5: the file name names subj03, but --subject is "
                                              r"subj02; a sweep asking for subj03 would read subj02's data"):
        _plan(fake, out=tmp_path / "subj03.h5", root=tmp_path / "no NSD here")  # checked before any file is read
    plan = _plan(fake, out=tmp_path / "SUBJ02-v2.h5")  # its own subject, in any case, is fine
    monkeypatch.setattr("sfhpc.data.nsd.read_roi_trials", lambda *args: pytest.fail("read betas"))
    with pytest.raises(NeuralDataError, match="the file name names subj01, subj03, but"):
        prepare_nsd(plan, tmp_path / "subj01-from-subj3.h5")
    assert not list(tmp_path.glob("*.h5"))


def test_cli_refuses_an_out_naming_another_subject(fake, tmp_path):
    out = tmp_path / "subj01.h5"
    result = runner.invoke(app, ["data", "nsd-prepare", "--nsd-root", str(fake.layout.root), "--subject", "2",
                                 "--out", str(out), "--sessions", "1"])
    assert result.exit_code == 2 and "the file name names subj01" in result.output.replace("\n", ""), result.output
    assert not out.exists()

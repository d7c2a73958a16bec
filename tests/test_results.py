"""Result files are atomic and self-describing; a damaged one is reported, never used."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest

from sfhpc.results import Provenance, atomic_write, check_result, read_metrics, write_result


def write(path: Path, point: str = "p-1") -> None:
    write_result(path, stage="train", point_id=point, config={"params": {"band": "lsf"}},
                 provenance=Provenance("abc123", "2026-01-01T00:00:00+00:00", "2026-01-01T00:01:00+00:00"),
                 metrics={"test_accuracy": 0.75, "epochs": 3}, curves={"train_loss": [2.0, 1.0, 0.5]})


def test_result_is_self_describing(tmp_path: Path):
    path = tmp_path / "result.h5"
    write(path)
    metrics, attrs = read_metrics(path)
    assert metrics == {"test_accuracy": 0.75, "epochs": 3}
    for key in ("schema_version", "point_id", "config", "git_sha", "sfhpc_version", "torch_version",
                "numpy_version", "host", "started", "ended"):
        assert key in attrs, key
    assert attrs["config"].startswith("params:")
    with h5py.File(path) as f:
        assert f["curves/train_loss"][()].tolist() == [2.0, 1.0, 0.5]
    assert check_result(path, "p-1").state == "ok"
    assert [p.name for p in tmp_path.iterdir()] == ["result.h5"]  # no temporary file left behind


def test_array_attributes_read_back_as_lists(tmp_path: Path):
    """The attack stage records its model's per-channel SDs as an array attribute."""
    path = tmp_path / "result.h5"
    write_result(path, stage="attack", point_id="p-1", config={}, provenance=Provenance("abc", "t0", "t1"),
                 metrics={"images": 4}, curves={}, extra_attrs={"normalization_std": [0.229, 0.224, 0.225]})
    _, attrs = read_metrics(path)
    assert attrs["normalization_std"] == [0.229, 0.224, 0.225] and attrs["schema_version"] == 1


@pytest.mark.parametrize("damage, reason", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "unreadable HDF5"),
    (lambda p: p.write_text("garbage"), "unreadable HDF5"),
    (lambda p: h5py.File(p, "a").attrs.__setitem__("schema_version", 99), "schema_version 99"),
])
def test_damaged_results_are_corrupt(tmp_path: Path, damage, reason):
    path = tmp_path / "result.h5"
    write(path)
    damage(path)
    check = check_result(path, "p-1")
    assert check.state == "corrupt" and reason in check.reason


def test_result_of_another_point_is_corrupt(tmp_path: Path):
    write(tmp_path / "result.h5", point="other")
    assert "made for point 'other'" in check_result(tmp_path / "result.h5", "p-1").reason
    assert check_result(tmp_path / "missing.h5", "p-1").state == "missing"


def test_failed_atomic_write_keeps_the_old_file(tmp_path: Path):
    target = tmp_path / "file.txt"
    target.write_text("old")

    def crash(tmp: Path) -> None:
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_result_index_opens_files_in_worker_processes_with_the_same_verdicts(tmp_path: Path, monkeypatch):
    from sfhpc import results
    from sfhpc.results import ResultIndex

    provenance = Provenance("abc123", "2026-01-01T00:00:00+00:00", "2026-01-01T00:01:00+00:00")

    items = []
    for i in range(6):
        path = tmp_path / f"p{i}" / "result.h5"
        path.parent.mkdir()
        write_result(path, stage="train", point_id=f"p{i}", config={}, provenance=provenance,
                     metrics={"acc": i / 10}, curves={})
        items.append((path, f"p{i}"))
    items[2] = (items[2][0], "someone-else")  # a corrupt verdict
    items.append((tmp_path / "missing" / "result.h5", "p9"))
    parallel = ResultIndex(tmp_path / "a.json").check_many(items, parallel_from=1)
    sequential = [ResultIndex(tmp_path / "b.json").check(path, point) for path, point in items]
    assert parallel == sequential
    assert [c.state for c in parallel] == ["ok", "ok", "corrupt", "ok", "ok", "ok", "missing"]

    index = ResultIndex(tmp_path / "a.json")
    index.check_many(items, parallel_from=1)
    index.save()
    reloaded = ResultIndex(tmp_path / "a.json")  # a later aggregate: metrics from the index, no file opened
    monkeypatch.setattr(results, "inspect_result", None)
    monkeypatch.setattr(results, "_metrics", None)
    assert reloaded.check(*items[3]).state == "ok" and reloaded.metrics(items[3][0]) == {"acc": 0.3}

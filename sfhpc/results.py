"""Result files: one self-describing HDF5 file per point and stage, written atomically.

Layout of a result file:
    attrs      schema_version, stage, point_id, config (resolved, YAML), git_sha, versions (sfhpc, torch, numpy),
               host, started, ended (ISO 8601, UTC)
    metrics/   scalar datasets: the numbers a summary table shows (e.g. test_accuracy); the same numbers are in the
               attributes metric_values (JSON, in the order written) and their names in metric_order
    curves/    1-D datasets: per-epoch histories and per-sample outcomes
A file is valid only when it opens, has this schema version and names the expected point; anything else is
reported as corrupt and never used.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import socket
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, TypeVar

SCHEMA_VERSION = 1
T = TypeVar("T")
RESULT_NAME = "result.h5"


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def git_sha(repo: Path) -> str:
    """The commit of the code that runs, with '+dirty' for uncommitted changes, or 'unknown' outside git."""
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}+dirty" if dirty else sha


def atomic_write(path: Path, write: Callable[[Path], object], suffix: str = ".tmp") -> None:
    """Call write(tmp_path) on a temporary file in the same folder, then os.replace it onto `path`: readers see
    the old file or the complete new one, never a partial one. The temporary file is created with mode 0666, which
    the kernel narrows by the umask as for any `open` (mkstemp's 0600 would lock the user's group out of `status`
    and `aggregate`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}{suffix}"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Provenance:
    """Who made a result: written into every result file."""

    git_sha: str
    started: str
    ended: str

    def attrs(self) -> dict[str, str]:
        return {
            "git_sha": self.git_sha,
            "sfhpc_version": package_version("sfhpc"),
            "torch_version": package_version("torch"),
            "numpy_version": package_version("numpy"),
            "sfhpc_source": str(Path(__file__).resolve().parent),  # the run's copy of the code (sfhpc.snapshot)
            "host": socket.gethostname(),
            "started": self.started,
            "ended": self.ended,
        }


def write_result(path: Path, *, stage: str, point_id: str, config: dict[str, Any], provenance: Provenance,
                 metrics: dict[str, float], curves: dict[str, Any], extra_attrs: dict[str, Any] | None = None) -> None:
    """Atomically write a point's result file."""
    import h5py
    import numpy as np
    import yaml

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs.update({"schema_version": SCHEMA_VERSION, "stage": stage, "point_id": point_id,
                            "config": yaml.safe_dump(config, sort_keys=False)})
            f.attrs.update(provenance.attrs())
            f.attrs.update(extra_attrs or {})
            f.attrs["metric_order"] = json.dumps(list(metrics))  # HDF5 lists members alphabetically
            # The same numbers in one attribute: reading 8 datasets costs 8 times reading one attribute.
            f.attrs["metric_values"] = json.dumps({name: np.asarray(value).item() for name, value in metrics.items()})
            group = f.create_group("metrics")
            for name, value in metrics.items():
                group.create_dataset(name, data=value)
            group = f.create_group("curves")
            for name, values in curves.items():
                group.create_dataset(name, data=np.asarray(values))

    atomic_write(path, write, suffix=".h5")


@dataclass(frozen=True)
class ResultCheck:
    state: Literal["ok", "missing", "corrupt"]
    reason: str = ""


def check_result(path: Path, point_id: str) -> ResultCheck:
    """Is `path` a complete result of `point_id`? Never raises for a bad file: says why it is bad."""
    return inspect_result(path, point_id)[0]


def inspect_result(path: Path, point_id: str) -> tuple[ResultCheck, dict[str, Any] | None]:
    """`check_result` and, for a valid file, its metrics, in one opening of the file (aggregating 10,000 results
    opens each once)."""
    if not path.exists():
        return ResultCheck("missing"), None
    import h5py

    try:
        with h5py.File(path, "r") as f:
            version = _attr(f, "schema_version")
            if version != SCHEMA_VERSION:
                return ResultCheck("corrupt", f"schema_version {_plain(version)!r}, expected {SCHEMA_VERSION}"), None
            if _attr(f, "point_id") != point_id:
                return ResultCheck("corrupt", f"made for point {_attr(f, 'point_id')!r}, not {point_id!r}"), None
            if "metrics" not in f:
                return ResultCheck("corrupt", "no metrics group"), None
            return ResultCheck("ok"), _metrics(f)
    except Exception as err:  # h5py raises OSError, KeyError, ValueError... for damaged files
        return ResultCheck("corrupt", f"unreadable HDF5 ({type(err).__name__}: {err})"), None


def read_metrics(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, attrs) of a valid result file; metrics as Python scalars."""
    import h5py

    with h5py.File(path, "r") as f:
        return _metrics(f), {key: _plain(value) for key, value in f.attrs.items()}


def _metrics(f: Any) -> dict[str, Any]:
    """The metrics of an open result file, in the order written: from the `metric_values` attribute (one read),
    or, in files written before it existed, from the datasets."""
    values = _attr(f, "metric_values")
    if values is not None:
        return json.loads(values)
    group = f["metrics"]
    names = json.loads(_attr(f, "metric_order") or "[]")
    names += [name for name in group if name not in names]
    return {name: group[name][()].item() for name in names}


def _attr(f: Any, name: str) -> Any:
    """Attribute `name` of an open file (None when absent) as a Python value, through h5py's low-level calls:
    a fifth of the cost of `f.attrs.get(name)`, which adds up over 10,000 files."""
    import h5py
    import numpy as np

    key = name.encode()
    if not h5py.h5a.exists(f.id, key):
        return None
    attr = h5py.h5a.open(f.id, key)
    value = np.empty(attr.shape, dtype=attr.dtype)
    attr.read(value)
    value = value.item() if value.ndim == 0 else value
    return value.decode() if isinstance(value, bytes) else value


def _plain(value: Any) -> Any:
    """An attribute as a Python value: a numpy scalar as its number, an array (the attack stage's
    normalization_std) as a list."""
    return value.tolist() if hasattr(value, "tolist") else value


SIGNATURE_FIELDS = 5  # an index entry: size, mtime, inode, ctime, point id; then verdict, reason, metrics
PARALLEL_FROM_FILES = 2000  # below this, starting worker processes costs more than it saves
MAX_WORKERS = 8


def _reported(items: Iterable[T], total: int, progress: Callable[[int, int], None] | None) -> list[T]:
    """The items as a list, with `progress(done, total)` called after each hundredth of them (and the last)."""
    if progress is None:
        return list(items)
    step = max(1, total // 100)
    done = []
    for item in items:
        done.append(item)
        if len(done) % step == 0 or len(done) == total:
            progress(len(done), total)
    return done


def _inspect_pair(pair: tuple[Path, str]) -> tuple[ResultCheck, dict[str, Any] | None]:
    return inspect_result(*pair)


class ResultIndex:
    """Remembers the verdict on each result file with its stat signature (size, modification time, inode and
    change time), so that a status refresh opens only new or changed files (and needs no h5py at all when none
    changed). Results are replaced atomically, which gives them a new inode; a file damaged in place and its
    mtime set back (`touch -d`) keeps size and mtime, but its ctime moves, and nobody can set that back."""

    def __init__(self, path: Path):
        self.path = path
        self.dirty = False
        try:
            self.entries: dict[str, list] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def check(self, result: Path, point_id: str) -> ResultCheck:
        return self.check_many([(result, point_id)])[0]

    def check_many(self, results: list[tuple[Path, str]], parallel_from: int = PARALLEL_FROM_FILES,
                   progress: Callable[[int, int], None] | None = None) -> list[ResultCheck]:
        """The verdict on every (result file, point id), in order: remembered for an unchanged file, else read.
        When at least `parallel_from` files must be opened (a first aggregate of a large run), one worker process
        per CPU opens them: opening and reading an HDF5 file is CPU-bound, and h5py serialises threads.
        `progress(opened, to_open)` is called as files are opened (about a hundred times at most), when any is."""
        known = [self._known(path, point_id) for path, point_id in results]
        verdicts = {i: entry for i, entry in enumerate(known) if isinstance(entry, ResultCheck)}
        stale = {i: entry for i, entry in enumerate(known) if not isinstance(entry, ResultCheck)}
        pairs = [results[i] for i in stale]
        workers = min(os.cpu_count() or 1, MAX_WORKERS)
        if len(stale) >= parallel_from and workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # fork: the workers need nothing but this module; no HDF5 file is open in this process here
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                chunk = max(1, len(pairs) // (4 * workers))
                inspected = _reported(pool.map(_inspect_pair, pairs, chunksize=chunk), len(pairs), progress)
        else:
            inspected = _reported(map(_inspect_pair, pairs), len(pairs), progress)
        for (i, (key, signature)), (verdict, metrics) in zip(stale.items(), inspected, strict=True):
            # The metrics are kept too: a later aggregate of an unchanged run opens no result file at all.
            self.entries[key] = [*signature, verdict.state, verdict.reason, metrics]
            self.dirty = True
            verdicts[i] = verdict
        return [verdicts[i] for i in range(len(results))]

    def _known(self, result: Path, point_id: str) -> ResultCheck | tuple[str, list[Any]]:
        """The remembered verdict (or "missing"), else, when the file must be read, its index key and signature."""
        try:
            stat = result.stat()
        except FileNotFoundError:
            return ResultCheck("missing")
        key = os.path.relpath(result, self.path.parent)  # relative: a copied run folder keeps its index
        signature = [stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns, point_id]
        entry = self.entries.get(key)
        if entry and entry[:SIGNATURE_FIELDS] == signature:
            return ResultCheck(*entry[SIGNATURE_FIELDS:SIGNATURE_FIELDS + 2])
        return key, signature

    def metrics(self, result: Path) -> dict[str, Any]:
        """The metrics of a result file that `check` found valid: those it read (now or when the index was
        written), else read now."""
        entry = self.entries.get(os.path.relpath(result, self.path.parent))
        metrics = entry[SIGNATURE_FIELDS + 2] if entry and len(entry) > SIGNATURE_FIELDS + 2 else None
        if metrics is None:
            import h5py

            with h5py.File(result, "r") as f:
                metrics = _metrics(f)
        return metrics

    def save(self) -> None:
        """Write the index if it learnt something; losing it only costs a re-check."""
        if self.dirty and self.path.parent.exists():
            try:
                atomic_write(self.path, lambda tmp: tmp.write_text(json.dumps(self.entries)))
            except OSError:
                pass
            self.dirty = False

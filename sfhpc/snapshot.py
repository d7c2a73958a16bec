"""A frozen copy of the code a run's jobs run: editing the working tree after a launch changes no queued, running or
requeued job of it.

A launch copies the package source (`sfhpc/`) and `jobs/*.yaml` into `RUN/code/<digest>/`, named by a hash of
their contents and of the uncommitted diff (the same code gives the same folder, so relaunching unchanged code copies
nothing), and records beside them what the code was and ran with: `git.txt` (commit, and `git diff HEAD` when the
project is a git repository with changes), `requirements.txt` (the installed distributions, as `pip freeze` writes
them) and `versions.json` (Python, torch, CUDA). The jobs import sfhpc from that copy: SLURM jobs through two lines
of their sbatch script (PYTHONPATH first, and PYTHONSAFEPATH so that the job's working directory, which may be the
project itself, cannot come before it); local points through the same environment of the process they fork from.

Login-node code: no torch (its version and CUDA build are read from its metadata and version file).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sfhpc.config import PROJECT_ROOT

CODE_DIR = "code"
PACKAGE = "sfhpc"
SKIPPED = ("__pycache__",)


@dataclass(frozen=True)
class CodeSnapshot:
    folder: Path  # RUN/code/<digest>: import sfhpc from here
    digest: str
    git_sha: str | None
    diff: str  # the uncommitted changes (git diff HEAD) the copy includes; "" when none or no git

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment variables that make a Python import sfhpc from the snapshot (`base` extended, default
        os.environ)."""
        base = dict(os.environ if base is None else base)
        rest = base.get("PYTHONPATH")
        return {**base, "PYTHONSAFEPATH": "1",
                "PYTHONPATH": str(self.folder) + (os.pathsep + rest if rest else "")}

    def setup_lines(self) -> list[str]:
        """The sbatch script lines that do the same for a SLURM job (after the profile's own setup lines)."""
        return ["export PYTHONSAFEPATH=1",
                f"export PYTHONPATH={shlex.quote(str(self.folder))}${{PYTHONPATH:+:$PYTHONPATH}}"]


def source_files(root: Path = PROJECT_ROOT) -> list[Path]:
    """What a snapshot copies, relative to `root`: the package's files and the job files, sorted."""
    package = [path for path in (root / PACKAGE).rglob("*") if path.is_file()
               and not any(part in SKIPPED for part in path.parts) and path.suffix != ".pyc"]
    return sorted(path.relative_to(root) for path in [*package, *(root / "jobs").glob("*.yaml")])


def git_state(root: Path = PROJECT_ROOT) -> tuple[str | None, str]:
    """(commit, `git diff HEAD`) of the repository at `root`; (None, "") when it is not one or git is missing."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    if sha is None:
        return None, ""
    return sha.strip(), git("diff", "HEAD", "--", PACKAGE, "jobs") or ""


def plan_snapshot(run_path: Path, root: Path = PROJECT_ROOT) -> tuple[CodeSnapshot, list[Path]]:
    """Where the code of `root` goes in run folder `run_path`, without copying anything (a dry run shows it)."""
    files = source_files(root)
    sha, diff = git_state(root)
    digest = hashlib.sha256()
    for relative in files:
        digest.update(str(relative).encode() + b"\0" + (root / relative).read_bytes() + b"\0")
    name = digest.hexdigest()[:12]
    return CodeSnapshot(run_path.absolute() / CODE_DIR / name, name, sha, diff), files


def freeze_code(run_path: Path, root: Path = PROJECT_ROOT) -> CodeSnapshot:
    """Copy the code of `root` into the run folder (once per distinct code) and return where it is."""
    snapshot, files = plan_snapshot(run_path, root)
    if (snapshot.folder / "versions.json").exists():  # written last: a complete copy of this very code
        return snapshot
    partial = snapshot.folder.with_name(snapshot.folder.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    for relative in files:
        target = partial / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / relative, target)
    (partial / "git.txt").write_text(f"commit {snapshot.git_sha or '(not a git repository)'}\n"
                                     + (f"uncommitted changes (git diff HEAD), included in this copy:\n{snapshot.diff}"
                                        if snapshot.diff else "no uncommitted changes to sfhpc/ or jobs/\n"))
    (partial / "requirements.txt").write_text(installed_distributions())
    (partial / "versions.json").write_text(json.dumps(runtime_versions(), indent=1) + "\n")
    try:
        partial.rename(snapshot.folder)
    except OSError:  # another launch of the same code made it first
        shutil.rmtree(partial, ignore_errors=True)
    return snapshot


def installed_distributions() -> str:
    """`name==version` of every installed distribution, sorted (what `pip freeze` lists, without running pip)."""
    seen = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}=={dist.version}"
    return "".join(line + "\n" for _, line in sorted(seen.items()))


def runtime_versions() -> dict[str, str | None]:
    """Python, torch and the CUDA torch was built for, read without importing torch."""
    try:
        torch_version: str | None = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = None
    return {"python": sys.version.split()[0], "implementation": platform.python_implementation(),
            "platform": platform.platform(), "torch": torch_version, "cuda": _torch_cuda_build()}


def _torch_cuda_build() -> str | None:
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        text = (Path(next(iter(spec.submodule_search_locations))) / "version.py").read_text()
    except OSError:
        return None
    match = re.search(r"^cuda\s*[:=].*?['\"]([^'\"]+)['\"]", text, re.M)
    return match.group(1) if match else None

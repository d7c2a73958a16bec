"""The real SLURM test cluster for pytest: started once per session by ``slurm_templates/testcluster.sh``.

Use from ``tests/conftest.py``::

    from slurm_cluster import slurm_cluster  # noqa: F401

and in a test::

    @pytest.mark.slurm
    def test_submit(slurm_cluster):  # slurm_cluster == {"SLURM_CONF": ..., "PATH": ...}
        subprocess.run(["sinfo"], env={**os.environ, **slurm_cluster}, check=True)

The fixture also sets ``os.environ["SLURM_CONF"]`` for the whole session, so submitit and plain ``subprocess``
calls reach the test cluster. When the cluster cannot start, tests are skipped with the script's last output
lines as the reason; with ``CI=true`` they fail instead.
"""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTCLUSTER_SCRIPT = REPO_ROOT / "slurm_templates" / "testcluster.sh"
# A cold start installs slurm, munge and MariaDB with apt; a warm start takes well under a second.
START_TIMEOUT_S = 900
REASON_LINES = 20


class ClusterUnavailable(RuntimeError):
    """The test cluster could not be started; the message holds the script's last output lines."""


def _tail(text: str) -> str:
    return "\n".join(text.strip().splitlines()[-REASON_LINES:])


def _run_script(action: str) -> str:
    """Run ``testcluster.sh ACTION``; return its stdout+stderr or raise ClusterUnavailable."""
    try:
        proc = subprocess.run(
            ["bash", str(TESTCLUSTER_SCRIPT), action],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=START_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ClusterUnavailable(f"testcluster.sh {action} did not finish: {exc}") from exc
    if proc.returncode != 0:
        raise ClusterUnavailable(f"testcluster.sh {action} exited {proc.returncode}:\n{_tail(proc.stdout)}")
    return proc.stdout


@functools.cache
def _start_once() -> tuple[dict[str, str] | None, str]:
    """Start (or reuse) the cluster; cached so that a session runs the script at most once, even on failure."""
    try:
        _run_script("start")
        env_line = _run_script("env").strip().splitlines()[-1]
    except ClusterUnavailable as exc:
        return None, str(exc)
    key, _, value = env_line.partition("=")
    if key != "SLURM_CONF" or not value:
        return None, f"testcluster.sh env printed {env_line!r}, expected SLURM_CONF=..."
    # Jobs inherit the submitter's environment; the venv first makes a bare `python` in jobs the venv's.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")])
    return {"SLURM_CONF": shlex.split(value)[0], "PATH": path}, ""


def ensure_cluster() -> dict[str, str]:
    """Return ``{"SLURM_CONF": ..., "PATH": ...}`` for the running test cluster, starting it on first use.

    Raises ClusterUnavailable (with the script's last output lines) when the cluster cannot start.
    """
    env, reason = _start_once()
    if env is None:
        raise ClusterUnavailable(reason)
    return dict(env)


def slurm_env() -> dict[str, str]:
    """Like ensure_cluster, but skips the calling test when the cluster is unavailable (fails when CI=true)."""
    try:
        return ensure_cluster()
    except ClusterUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"SLURM test cluster unavailable: {exc}", pytrace=False)
        pytest.skip(f"SLURM test cluster unavailable: {exc}")


@pytest.fixture(scope="session", name="slurm_cluster")
def slurm_cluster() -> Iterator[dict[str, str]]:
    """Session fixture: the running test cluster's env vars; also exports SLURM_CONF for the session."""
    env = slurm_env()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", env["SLURM_CONF"])
        yield env

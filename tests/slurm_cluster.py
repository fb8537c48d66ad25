"""A real one-node Slurm cluster for the tests, and a way to run Snakemake through it.

Use the session fixture in a test module (or in conftest.py, to share it between modules)::

    from tests.slurm_cluster import slurm_cluster  # noqa: F401  (the fixture)

    @pytest.mark.slurm
    def test_something(slurm_cluster, tmp_path):
        profile = slurm_cluster.make_test_profile(tmp_path / "profile")
        result = slurm_cluster.run_snakemake(tmp_path / "run", SNAKEFILE, CONFIG, profile, ["--forceall"])
        assert result.returncode == 0, slurm_cluster.describe(result)
        ids = slurm_cluster.job_ids(result.stdout + result.stderr)
        assert ids and slurm_cluster.allocated_job_ids() >= set(ids)

The cluster is started by tests/slurm/cluster.sh (munged, slurmctld and slurmd as root, on
127.0.0.1, without cgroups or accounting) and stopped in the fixture's finalizer. It needs
root and the Debian packages that .ci/install-slurm.sh installs; without them the tests are
skipped, except under CI (CI=true), where that is an error.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SH = REPO / "tests" / "slurm" / "cluster.sh"
TOY_WORKFLOW = REPO / "tests" / "slurm" / "toy"
SLURM_PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")

SLURM_PACKAGES = ("munge", "slurmctld", "slurmd", "slurm-client")
SLURM_TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel")
# One cluster per machine at a time: it uses fixed ports, /run/munge and /etc/slurm/slurm.conf.
LOCK_FILE = Path(os.environ.get("RARE_OBJECTS_SLURM_LOCK", "/tmp/rare-objects-slurm-test.lock"))
LOCK_TIMEOUT_S = int(os.environ.get("RARE_OBJECTS_SLURM_LOCK_TIMEOUT", "1200"))
UP_TIMEOUT_S = 300
SNAKEMAKE_TIMEOUT_S = 900

# Keys of the real profile that a one-node test cluster cannot honour.
CLUSTER_ONLY_RESOURCES = (
    "gpu",
    "gpus",
    "gpu_model",
    "gres",
    "cpus_per_gpu",
    "tasks_per_gpu",
    "slurm_partition",
    "slurm_account",
    "constraint",
    "qos",
    "slurm_extra",
    "clusters",
    "cluster",
    "slurm_cluster",
)
CLUSTER_ONLY_OPTIONS = (
    "software-deployment-method",
    "use-conda",
    "conda-prefix",
    "slurm-qos",
    "slurm-reservation",
    "slurm-logdir",
    "slurm-partition-config",
    "slurm-requeue",
    "slurm-array-jobs",
)

_SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+)")
_SUBMITTED_ARRAY = re.compile(
    r"Submitted array job with Snakemake IDs ([\d,]+) and SLURM job ID (\d+)"
)
# slurmctld's log line when it starts a job: by the main scheduler, or by backfill.
_ALLOCATED = re.compile(
    r"sched: Allocate JobId=(\d+)|sched/backfill: _start_job: Started JobId=(\d+)"
)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing_requirements() -> list[str]:
    """Why a Slurm cluster cannot be started here (empty: it can)."""
    reasons = []
    if os.geteuid() != 0:
        reasons.append("not root")
    if shutil.which("dpkg-query"):
        missing = []
        for package in SLURM_PACKAGES:
            status = subprocess.run(
                ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
            ).stdout
            if "install ok installed" not in status:
                missing.append(package)
        if missing:
            reasons.append(
                f"Debian packages not installed: {' '.join(missing)} (run .ci/install-slurm.sh)"
            )
    missing_tools = [tool for tool in SLURM_TOOLS if not shutil.which(tool)]
    if missing_tools:
        reasons.append(f"not on PATH: {' '.join(missing_tools)}")
    return reasons


def require_slurm() -> None:
    """Skip the test when no cluster can be started here; under CI (CI=true), fail instead."""
    reasons = missing_requirements()
    if reasons:
        message = "no Slurm test cluster: " + "; ".join(reasons)
        if in_ci():
            pytest.fail(
                message + " (CI=true: .ci/install-slurm.sh must have installed it)", pytrace=False
            )
        pytest.skip(message)


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for Slurm clients: none of a surrounding Slurm job's variables."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass
class SlurmCluster:
    """A running one-node cluster, with helpers to run Snakemake on it and read its records."""

    state_dir: Path
    snakemake: Path = SNAKEMAKE
    runs: list[subprocess.CompletedProcess] = field(default_factory=list)

    # --- the cluster ------------------------------------------------------------------
    @property
    def conf(self) -> Path:
        return self.state_dir / "slurm.conf"

    @property
    def node(self) -> str:
        return (self.state_dir / "node").read_text().strip()

    @property
    def cpus(self) -> int:
        """CPUs of the node (as configured in slurm.conf)."""
        match = re.search(r"^NodeName=.*\bCPUs=(\d+)", self.conf.read_text(), re.MULTILINE)
        return int(match.group(1)) if match else 1

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return _clean_env({"SLURM_CONF": str(self.conf), **(extra or {})})

    def up(self) -> None:
        self._cluster_sh("up", UP_TIMEOUT_S)

    def down(self) -> None:
        self._cluster_sh("down", 180)

    def _cluster_sh(self, action: str, timeout: int) -> None:
        result = subprocess.run(
            ["bash", str(CLUSTER_SH), action, str(self.state_dir)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_clean_env(),
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"cluster.sh {action} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n"
                + self.daemon_logs()
            )

    def daemon_logs(self, lines: int = 40) -> str:
        """The last lines of each daemon's log, for failure messages."""
        parts = []
        for path in sorted((self.state_dir / "logs").glob("*")):
            with contextlib.suppress(OSError):
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def command(self, *args: str, timeout: int = 60) -> str:
        """Run a Slurm client command (squeue, scontrol, ...) against this cluster."""
        result = subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, env=self.env()
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result.stdout

    # --- running Snakemake --------------------------------------------------------------
    def make_test_profile(
        self,
        dest: Path,
        base: Path = SLURM_PROFILE,
        *,
        mem_mb: int = 1000,
        cpus: int | None = None,
        gpus: bool = False,
        overrides: dict | None = None,
    ) -> Path:
        """A profile folder derived from the real Slurm profile that fits this one-node cluster.

        Keeps the real profile's rules, runtimes and threads, but asks for `mem_mb` per job,
        no partition, account or conda, at most `cpus` (default: the node's) CPUs, a GPU only
        when `gpus` (the node has one pretend GPU), and queries job states with squeue (no
        accounting here). `overrides` replaces top-level keys. See make_test_profile().
        """
        return make_test_profile(
            dest, base, mem_mb=mem_mb, cpus=cpus or self.cpus, gpus=gpus, overrides=overrides
        )

    def run_snakemake(
        self,
        workdir: Path,
        snakefile: Path,
        configfile: Path | None = None,
        profile: Path | None = None,
        extra_args: Sequence[str] = (),
        timeout: int = SNAKEMAKE_TIMEOUT_S,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """Run Snakemake in `workdir` with the Slurm executor (via `profile`); never raises on failure.

        Without a profile, Snakemake runs with only `extra_args` (e.g. a local `--cores 2` run
        for comparison). On timeout, Snakemake is interrupted (it cancels its Slurm jobs) and the
        returned process has returncode -9 and the output so far.
        """
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        command = [str(self.snakemake), "--snakefile", str(snakefile), "--directory", str(workdir)]
        if configfile is not None:
            command += ["--configfile", str(configfile)]
        if profile is not None:
            # As the workflow profile, so that it replaces profiles/default (which would
            # otherwise be applied on top and win, key by key) -- as users are told to run it.
            command += ["--executor", "slurm", "--workflow-profile", str(profile)]
        command += list(extra_args)
        result = run_bounded(command, cwd=workdir, env=self.env(env), timeout=timeout)
        self.runs.append(result)
        return result

    # --- what Slurm did ------------------------------------------------------------------
    @staticmethod
    def job_ids(log_text: str) -> list[str]:
        """Slurm job ids of the jobs a Snakemake run submitted (from its log), in order."""
        return list(SlurmCluster.submissions(log_text).values())

    @staticmethod
    def submissions(log_text: str) -> dict[str, str]:
        """Snakemake job id -> Slurm job id, from the Slurm plugin's log lines."""
        found: dict[str, str] = {}
        for match in _SUBMITTED.finditer(log_text):
            found[match.group(1)] = match.group(2)
        for match in _SUBMITTED_ARRAY.finditer(log_text):
            for index, job in enumerate(match.group(1).split(","), start=1):
                found[job] = f"{match.group(2)}_{index}"
        return found

    def allocated_job_ids(self) -> set[str]:
        """Job ids slurmctld gave resources to and started: "sched: Allocate JobId=N" or
        "sched/backfill: _start_job: Started JobId=N" in its log."""
        log = self.state_dir / "logs" / "slurmctld.log"
        if not log.exists():
            return set()
        return {a or b for a, b in _ALLOCATED.findall(log.read_text(errors="replace"))}

    def job_states(self) -> dict[str, str]:
        """Job id -> state (COMPLETED, FAILED, ...) of every job slurmctld still remembers."""
        out = self.command("squeue", "--noheader", "--states=all", "--format=%i|%T")
        return dict(line.split("|", 1) for line in out.split() if "|" in line)

    def job_record(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` of one job, as a mapping (JobState, ExitCode, Command, ...)."""
        out = self.command("scontrol", "show", "job", "--oneliner", str(job_id))
        return dict(item.split("=", 1) for item in out.split() if "=" in item)

    def finished_jobs(self) -> dict[str, dict[str, str]]:
        """Job id -> its record in the job completion log (JobState, ExitCode, NodeList, ...)."""
        log = self.state_dir / "logs" / "jobcomp.log"
        records = {}
        if log.exists():
            for line in log.read_text(errors="replace").splitlines():
                fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
                if "JobId" in fields:
                    records[fields["JobId"]] = fields
        return records

    def wait_finished(
        self, job_ids: Iterable[str], timeout: float = 60
    ) -> dict[str, dict[str, str]]:
        """Wait (bounded) until every job is in the completion log; returns the log's records."""
        wanted = {str(job).split("_")[0] for job in job_ids}
        deadline = time.monotonic() + timeout
        while True:
            records = self.finished_jobs()
            if wanted <= set(records) or time.monotonic() > deadline:
                return records
            time.sleep(0.5)

    def describe(self, result: subprocess.CompletedProcess, chars: int = 6000) -> str:
        """A failure message: the command, its output's end, the queue and the daemons' logs."""
        queue = "?"
        with contextlib.suppress(Exception):
            queue = self.command("squeue", "--states=all")
        return (
            f"$ {' '.join(map(str, result.args))}\nexit {result.returncode}\n"
            f"--- stdout\n{result.stdout[-chars:]}\n--- stderr\n{result.stderr[-chars:]}\n"
            f"--- squeue\n{queue}\n{self.daemon_logs()}"
        )


def run_bounded(
    command: list[str], cwd: Path, env: dict[str, str], timeout: int
) -> subprocess.CompletedProcess:
    """Run `command` in its own process group; on timeout interrupt it (then kill it), never hang."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
        return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    except subprocess.TimeoutExpired:
        stdout, stderr = _interrupt(process)
        note = f"\n[tests/slurm_cluster.py: timed out after {timeout}s and was interrupted]\n"
        return subprocess.CompletedProcess(command, -9, stdout, (stderr or "") + note)
    except BaseException:
        # The test itself was interrupted (Ctrl-C, SIGTERM): stop Snakemake too.
        _interrupt(process)
        raise


def _interrupt(process: subprocess.Popen) -> tuple[str, str]:
    """SIGINT lets Snakemake cancel its Slurm jobs; kill the group if it does not stop in 60 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        return process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return process.communicate()


def make_test_profile(
    dest: Path,
    base: Path = SLURM_PROFILE,
    *,
    mem_mb: int = 1000,
    cpus: int = 1,
    gpus: bool = False,
    overrides: dict | None = None,
) -> Path:
    """Write `dest/config.yaml`: the profile `base` adapted to a small one-node cluster.

    Every rule keeps its entry (runtime, threads capped to `cpus`); memory becomes `mem_mb`;
    partition, account, constraints and conda go. GPU rules keep their GPU request
    (`gpu`, `cpus_per_gpu` capped to `cpus`) when `gpus` is true (the test node has one
    pretend GPU), else they ask for none. `overrides` replaces top-level keys last.
    """
    profile = copy.deepcopy(yaml.safe_load(Path(base).read_text()) or {})
    for key in CLUSTER_ONLY_OPTIONS:
        profile.pop(key, None)
    per_task = f"min(max(threads, 1), {cpus})"

    def fit(resources: dict) -> dict:
        fitted = {
            key: value for key, value in resources.items() if key not in CLUSTER_ONLY_RESOURCES
        }
        if "mem_mb" in fitted:
            fitted["mem_mb"] = mem_mb
        gpu = resources.get("gpu") or resources.get("gpus")
        if gpus and gpu:
            fitted["gpu"] = 1
            if resources.get("cpus_per_gpu"):
                fitted["cpus_per_gpu"] = min(int(resources["cpus_per_gpu"]), cpus)
                fitted["cpus_per_task"] = 0
            else:
                fitted["cpus_per_task"] = per_task
        else:
            fitted["gpu"] = 0
            fitted["cpus_per_task"] = per_task
        return fitted

    default_resources = fit(profile.get("default-resources") or {})
    default_resources.pop("gpu", None)
    default_resources["mem_mb"] = mem_mb
    profile["default-resources"] = default_resources
    profile["set-resources"] = {
        rule: fit(resources or {})
        for rule, resources in (profile.get("set-resources") or {}).items()
    }
    profile["set-threads"] = {
        rule: min(int(n), cpus) for rule, n in (profile.get("set-threads") or {}).items()
    }
    profile.update(
        {
            "executor": "slurm",
            "jobs": 4,
            "retries": 0,
            "latency-wait": 5,
            # No accounting on the test cluster: sacct fails, and the plugin would wait forever.
            "slurm-status-command": "squeue",
            "slurm-init-seconds-before-status-checks": 2,
            "slurm-no-account": True,
            "slurm-keep-successful-logs": True,
        }
    )
    profile.update(overrides or {})
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(
        f"# Generated by tests/slurm_cluster.py from {base} for the one-node test cluster.\n"
        + yaml.safe_dump(profile, sort_keys=False)
    )
    return dest


# --- the session fixture --------------------------------------------------------------------
_lock = threading.Lock()
_shared: dict = {"cluster": None, "users": 0, "lock_fd": None}


def _acquire_machine_lock() -> int:
    """Wait (bounded) until no other test session on this machine runs a test cluster."""
    fd = os.open(LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o644)
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise RuntimeError(
                    f"another test session held {LOCK_FILE} (its Slurm test cluster) for {LOCK_TIMEOUT_S}s"
                ) from None
            time.sleep(1)


def _start(state_dir: Path) -> SlurmCluster:
    with _lock:
        if _shared["cluster"] is None:
            fd = _acquire_machine_lock()
            cluster = SlurmCluster(state_dir)
            try:
                cluster.up()
            except BaseException:
                with contextlib.suppress(Exception):
                    cluster.down()
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise
            _shared.update(cluster=cluster, lock_fd=fd)
        _shared["users"] += 1
        return _shared["cluster"]


def _stop() -> None:
    with _lock:
        _shared["users"] -= 1
        if _shared["users"] > 0 or _shared["cluster"] is None:
            return
        cluster, fd = _shared["cluster"], _shared["lock_fd"]
        _shared.update(cluster=None, lock_fd=None, users=0)
        try:
            cluster.down()
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


@pytest.fixture(scope="session")
def slurm_cluster(request, tmp_path_factory) -> SlurmCluster:
    """A running one-node Slurm cluster (shared by every test of the session)."""
    require_slurm()
    cluster = _start(tmp_path_factory.mktemp("slurm"))
    request.addfinalizer(_stop)
    # A SIGTERM (e.g. a CI time limit) ends the session like Ctrl-C, so the finalizer stops the cluster.
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGTERM)
        if previous in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _terminate_as_interrupt)
            request.addfinalizer(lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    return cluster


def _terminate_as_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")

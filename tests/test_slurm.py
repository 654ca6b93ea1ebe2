"""The demo workflow through ``--profile profiles/slurm`` on a real single-node SLURM cluster.

A module fixture starts the cluster with ``scripts/slurm-local/start.sh`` (munge, MariaDB, slurmdbd,
slurmctld, slurmd with fake GPUs) and always stops it with ``stop.sh --purge``. One Snakemake run
of target ``submission`` through the SLURM profile, on the demo with two of its models (every kind of
job it has, see ``demo_with_two_models``), is checked against the controller's records (``sacct``),
against its own log, and against a local run of the same config (profiles/default) that runs at the
same time:

(a) every non-local job went through sbatch: one completed SLURM job per job, named by its comment;
(b) every job whose resources say ``gpu=N`` asked for and got N GPUs (ReqTRES/AllocTRES), no other;
(c) a job cancelled from the outside (``scancel``) once is resubmitted and the run still completes;
(d) the outputs equal the local run's (preprocess stores' arrays; submission.csv and metrics.tsv byte
    for byte).

Two quick checks run first, before the cluster exists: a start that fails halfway leaves nothing
running, and ``stop.sh --purge`` deletes only its own state directories. The fixture also leaves the
symlink of a killed cluster in place before the start (when the machine has none), as a test run
killed with its machine session does; the start must clear it and go on.

Needs root and Debian (apt-get installs the Slurm packages when missing); skipped otherwise. The
``segment`` rule only asks for a GPU with the hpacellseg backend, so the run forces it with
``--set-resources segment:gpu=1``; rules that declare ``gpu`` themselves are covered as they are.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from workflow_helpers import REPO, copy_workflow, small_config

# The timeout is a backstop only: every command below has its own time limit.
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(2400)]

SCRIPTS = REPO / "scripts" / "slurm-local"
CPUS = 8  # CPUs the node declares (more than the machine may have: SLURM only books them)
GPUS = 2
PARTITION = "hpatest"
ACCOUNT = "hpaci"
CANCEL_RULE = "segment"  # the rule of the job cancelled once from the outside
CANCEL_AFTER_S = 3  # ... once it has run this long
BIN = Path(sys.executable).parent


MARKER = ".hpa-slurm-local"  # start.sh's mark on its state directories
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")
LINK = Path("/etc/slurm/slurm.conf")


def dead_cluster_link() -> bool:
    """The config symlink belongs to a cluster of start.sh none of whose daemons runs any more."""
    if not LINK.is_symlink():
        return False
    target = Path(os.readlink(LINK))
    state = target.parent.parent
    if target.name != "slurm.conf" or not (state / MARKER).is_file():
        return False
    for name in DAEMONS:
        try:
            pid = (state / "pids" / name).read_text().strip()
            if Path(f"/proc/{pid}/comm").read_text().strip() == name[:15]:
                return False
        except OSError:
            continue
    return True


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: starts Slurm daemons and may apt-get install their Debian packages"
    if (
        not Path("/etc/debian_version").exists()
        or shutil.which("apt-get") is None
        or shutil.which("dpkg-query") is None
    ):
        return "needs Debian with apt-get (the local cluster uses Debian's Slurm 22.05 packages)"
    if (LINK.exists() or LINK.is_symlink()) and not dead_cluster_link():
        return f"{LINK} exists: this machine has its own Slurm configuration (or another test cluster runs)"
    return None


def leave_a_dead_cluster_link() -> Path | None:
    """What a test cluster killed without stop.sh leaves: its state directory and the config symlink."""
    if LINK.exists() or LINK.is_symlink():
        return None
    state = Path(tempfile.mkdtemp(prefix="hpa-slurm-dead-", dir="/tmp"))
    (state / MARKER).touch()
    for folder in ("etc", "pids", "run"):
        (state / folder).mkdir()
    (state / "etc" / "slurm.conf").write_text("# the config of a cluster that was killed\n")
    ended = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    (state / "pids" / "slurmctld").write_text(ended.stdout)  # a pid that no longer runs slurmctld
    if not LINK.parent.exists():
        LINK.parent.mkdir()
        (state / "run" / "made-etc-dir").write_text(f"{LINK.parent}\n")
    LINK.symlink_to(state / "etc" / "slurm.conf")
    return state


@dataclass
class Cluster:
    state: Path
    env: dict[str, str]
    start_output: str
    dead_state: Path

    def run(self, *command: str, timeout: float = 30) -> str:
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr}")
        return result.stdout


@pytest.fixture(scope="module")
def cluster():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    # Short path under /tmp (pytest's own tmp dirs are 0700: munge and mysql could not reach them).
    state = Path(tempfile.mkdtemp(prefix="hpa-slurm-", dir="/tmp"))
    env = dict(os.environ)
    env.update(
        SLURM_LOCAL_DIR=str(state),
        SLURM_LOCAL_CPUS=str(CPUS),
        SLURM_LOCAL_GPUS=str(GPUS),
        SLURM_LOCAL_PARTITION=PARTITION,
        SLURM_LOCAL_ACCOUNT=ACCOUNT,
        SLURM_CONF=str(state / "etc" / "slurm.conf"),
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    planted = leave_a_dead_cluster_link()
    dead_state = planted or Path(os.readlink(LINK)).parent.parent  # skip_reason: an existing link is dead
    try:
        started = subprocess.run([str(SCRIPTS / "start.sh")], env=env, capture_output=True, text=True, timeout=600)
        if started.returncode == 3:
            pytest.skip(f"Slurm packages missing and not installable: {started.stderr[-1000:]}")
        assert started.returncode == 0, f"start.sh failed:\n{started.stdout[-3000:]}\n{started.stderr[-5000:]}"
        yield Cluster(state, env, started.stdout + started.stderr, dead_state)
    finally:
        if planted is not None:
            shutil.rmtree(planted, ignore_errors=True)
        stopped = subprocess.run(
            [str(SCRIPTS / "stop.sh"), "--purge"], env=env, capture_output=True, text=True, timeout=300
        )
        shutil.rmtree(state, ignore_errors=True)  # when start.sh failed before marking it as its own
        if stopped.returncode != 0:
            print(f"stop.sh failed ({stopped.returncode}):\n{stopped.stdout}\n{stopped.stderr}", file=sys.stderr)


# --------------------------------------------------------- start/stop (before the cluster starts)


def test_failed_start_leaves_nothing_running(tmp_path):
    """start.sh stops what it started when a later step fails; stop.sh can run again afterwards."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "slurmd").write_text("#!/bin/sh\necho 'fake slurmd fails' >&2\nexit 1\n")
    (fake / "slurmd").chmod(0o755)
    state = Path(tempfile.mkdtemp(prefix="hpa-slurm-fail-", dir="/tmp"))
    env = dict(os.environ, SLURM_LOCAL_DIR=str(state), PATH=f"{fake}{os.pathsep}{os.environ['PATH']}")
    try:
        started = subprocess.run([str(SCRIPTS / "start.sh")], env=env, capture_output=True, text=True, timeout=600)
        if started.returncode == 3:
            pytest.skip(f"Slurm packages missing and not installable: {started.stderr[-1000:]}")
        assert started.returncode == 1, started.stdout + started.stderr
        assert "slurmd exited" in started.stderr
        stopped = dict(re.findall(r"stopped (\w+) \((\d+)\)", started.stdout + started.stderr))
        assert set(stopped) == {"munged", "mariadbd", "slurmdbd", "slurmctld"}, started.stderr
        for name, pid in stopped.items():
            comm = Path(f"/proc/{pid}/comm")
            assert not comm.exists() or comm.read_text().strip() != name, f"{name} ({pid}) still runs"
        assert not list((state / "pids").iterdir())
        link = Path("/etc/slurm/slurm.conf")
        assert not link.exists() and not link.is_symlink()
        again = subprocess.run(
            [str(SCRIPTS / "stop.sh"), "--purge"], env=env, capture_output=True, text=True, timeout=120
        )
        assert again.returncode == 0 and not state.exists()
    finally:
        subprocess.run([str(SCRIPTS / "stop.sh"), "--purge"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


def test_stop_refuses_to_purge_a_foreign_directory(tmp_path):
    foreign = tmp_path / "not-a-cluster"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    result = subprocess.run(
        [str(SCRIPTS / "stop.sh"), "--purge"], env=dict(os.environ, SLURM_LOCAL_DIR=str(foreign)),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1 and (foreign / "keep.txt").exists()


def test_start_clears_the_link_of_a_dead_cluster(cluster):
    """A cluster killed without stop.sh does not block the next start (its symlink is replaced)."""
    assert f"no longer runs ({cluster.dead_state})" in cluster.start_output
    assert Path(os.readlink(LINK)) == cluster.state / "etc" / "slurm.conf"


# ------------------------------------------------------------------------------- the SLURM run


@dataclass
class SnakemakeJob:
    jobid: int
    rule: str
    local: bool
    wildcards: str = ""
    resources: dict[str, str] = field(default_factory=dict)


@dataclass
class Accounting:
    jobid: int
    comment: str
    state: str
    req_tres: str
    alloc_tres: str

    @property
    def rule(self) -> str:
        return self.comment.removeprefix("rule_").split("_wildcards_")[0]

    @property
    def wildcard_values(self) -> str:
        return self.comment.split("_wildcards_", 1)[1] if "_wildcards_" in self.comment else ""


@dataclass
class SlurmDemo:
    target: str
    slurm_dir: Path
    local_dir: Path
    log: str
    jobs: dict[int, SnakemakeJob]
    submissions: list[tuple[int, int]]  # (Snakemake jobid, SLURM jobid) in submission order
    records: dict[int, Accounting]  # SLURM jobid -> sacct record
    cancelled: tuple[int, str] | None  # (SLURM jobid, comment) cancelled from the outside
    squeue_lines: list[str]
    wall_s: float


def demo_with_two_models(workdir: Path) -> str:
    """The demo's data and stages with one image model in stage 1 and one cell model trained on its
    pseudo labels as the submission: every kind of job of the demo, written to
    ``configs/slurm_demo.yaml``; returns that path relative to ``workdir``. The full demo through SLURM
    and a local reference beside it took 19 minutes of CI's 90."""
    config = yaml.safe_load((workdir / "configs/demo.yaml").read_text())
    kept = ("cam_effnet_192", "cell_resnet_192_stage2")
    config["models"] = {name: config["models"][name] for name in kept}
    # its init_from start is a third model; without it the stage-2 model trains from scratch
    config["models"]["cell_resnet_192_stage2"].pop("init_from")
    config["ensembles"] = {"stage1": ["cam_effnet_192"]}
    config["submission"]["members"] = ["cell_resnet_192_stage2"]
    (workdir / "configs/slurm_demo.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return "configs/slurm_demo.yaml"


def resource_args(option: str, entries: list[str]) -> list[str]:
    return [option, *entries] if entries else []


def slurm_command(workdir: Path, target: str, config: str) -> list[str]:
    """The run through profiles/slurm, with the local cluster's partition/account and short polling.

    A command-line --default-resources/--set-resources replaces the profile's whole mapping, so the
    profile's own values are passed on with only the test's changes merged in.
    """
    profile = yaml.safe_load((workdir / "profiles" / "slurm" / "config.yaml").read_text())
    defaults = dict(profile.get("default-resources") or {})
    defaults.update(slurm_partition=PARTITION, slurm_account=ACCOUNT)
    per_rule = copy.deepcopy(profile.get("set-resources") or {})
    per_rule.setdefault("segment", {})["gpu"] = 1
    return [
        str(BIN / "snakemake"),
        target,
        "--configfile",
        config,
        "--profile",
        "profiles/slurm",
        *resource_args("--default-resources", [f"{key}={value}" for key, value in defaults.items()]),
        *resource_args(
            "--set-resources",
            [f"{rule}:{key}={value}" for rule, values in per_rule.items() for key, value in values.items()],
        ),
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--latency-wait",
        "5",
    ]


def parse_log(log: str) -> tuple[dict[int, SnakemakeJob], list[tuple[int, int]]]:
    """Snakemake's job blocks (``rule x:``/``localrule x:`` + indented fields) and submit lines."""
    jobs: dict[int, SnakemakeJob] = {}
    block: dict[str, str] | None = None
    header: tuple[str, str] | None = None

    def close() -> None:
        if header and block and "jobid" in block:
            kind, rule = header
            resources = {}
            for item in block.get("resources", "").split(", "):
                if "=" in item:
                    key, value = item.split("=", 1)
                    resources[key.strip()] = value.strip()
            jobid = int(block["jobid"])
            jobs[jobid] = SnakemakeJob(jobid, rule, kind == "localrule", block.get("wildcards", ""), resources)

    for line in log.splitlines():
        match = re.fullmatch(r"(localrule|rule) (\w+):", line.strip()) if not line.startswith(" ") else None
        if match:
            close()
            header, block = (match.group(1), match.group(2)), {}
        elif block is not None and line.startswith("    ") and ": " in line:
            key, value = line.strip().split(": ", 1)
            block[key] = value
        elif block is not None and not line.startswith(" "):
            close()
            header, block = None, None
    close()
    submissions = [
        (int(m.group(1)), int(m.group(2)))
        for m in re.finditer(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log)
    ]
    return jobs, submissions


def sacct_records(cluster: Cluster, run_id: str, expected: int) -> dict[int, Accounting]:
    """The controller's records of this run's jobs (all SLURM jobs of one run share its UUID as name)."""
    deadline = time.monotonic() + 60
    while True:
        out = cluster.run(
            "sacct", "-X", "-P", "-n", "-a", "-S", "now-1days", "--name", run_id,
            "-o", "JobIDRaw,Comment,State,ReqTRES,AllocTRES",
        )  # fmt: skip
        records = {}
        for line in out.splitlines():
            jobid, comment, state, req, alloc = line.split("|")
            records[int(jobid)] = Accounting(int(jobid), comment, state.split()[0], req, alloc)
        settled = all(record.state not in ("PENDING", "RUNNING", "COMPLETING") for record in records.values())
        if (len(records) >= expected and settled) or time.monotonic() > deadline:
            return records
        time.sleep(1)  # slurmctld sends job records to slurmdbd asynchronously


def seconds(elapsed: str) -> int:
    """squeue's TimeUsed ([days-][hours:]minutes:seconds) in seconds."""
    days, _, clock = elapsed.rpartition("-")
    total = 0
    for part in clock.split(":"):
        total = total * 60 + int(part)
    return total + int(days or 0) * 86400


@pytest.fixture(scope="module")
def slurm_demo(cluster, tmp_path_factory) -> SlurmDemo:
    slurm_dir = copy_workflow(tmp_path_factory.mktemp("slurm-run"))
    local_dir = copy_workflow(tmp_path_factory.mktemp("local-run"))
    target, limit_s = "submission", 1500
    config = demo_with_two_models(slurm_dir)
    assert demo_with_two_models(local_dir) == config
    env = dict(cluster.env)
    env.pop("SNAKEMAKE_PROFILE", None)

    # The local reference runs at the same time (the SLURM run mostly waits for status polls), with
    # profiles/default's `cores: all`. Results depend on a job's thread count (torch's CPU reductions),
    # and inside a SLURM job Snakemake runs with `--cores all` too: this node has no CPU binding, so
    # both cap a rule's threads at this machine's CPU count and every job gets the same threads.
    local_log = open(local_dir / "snakemake.log", "w")  # noqa: SIM115 (closed after both runs end)
    local = subprocess.Popen(
        ["timeout", "-s", "INT", "-k", "60", str(limit_s), str(BIN / "snakemake"), target,
         "--configfile", config],
        cwd=local_dir, env=env, stdout=local_log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    # SIGINT on timeout: Snakemake then scancels its SLURM jobs and exits (SIGTERM would wait for them).
    slurm_log = open(slurm_dir / "snakemake.log", "w")  # noqa: SIM115 (closed after both runs end)
    started = time.monotonic()
    run = subprocess.Popen(
        ["timeout", "-s", "INT", "-k", "60", str(limit_s), *slurm_command(slurm_dir, target, config)],
        cwd=slurm_dir, env=env, stdout=slurm_log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    cancelled = None
    squeue_lines: dict[str, str] = {}
    try:
        while run.poll() is None:
            out = subprocess.run(
                ["squeue", "-h", "-O", "JobID:12,State:12,TimeUsed:12,tres-per-job:24,tres-alloc:80,Comment:200"],
                env=env, capture_output=True, text=True, timeout=30,
            ).stdout  # fmt: skip
            for line in out.splitlines():
                fields = line.split()
                if len(fields) != 6:
                    continue
                jobid, state, used, _, _, comment = fields
                squeue_lines[f"{jobid} {state}"] = " ".join(fields)
                if (
                    cancelled is None
                    and state == "RUNNING"
                    and comment.startswith(f"rule_{CANCEL_RULE}_")
                    and seconds(used) >= CANCEL_AFTER_S
                ):
                    subprocess.run(["scancel", jobid], env=env, check=True, timeout=30)
                    cancelled = (int(jobid), comment)
            time.sleep(0.5)
    finally:
        if run.poll() is None:  # the test itself failed: interrupt Snakemake so that it scancels
            os.killpg(run.pid, signal.SIGINT)
        run.wait(timeout=120)
        local.wait(timeout=limit_s + 120)
        slurm_log.close()
        local_log.close()
    wall_s = time.monotonic() - started
    log = (slurm_dir / "snakemake.log").read_text()
    local_text = (local_dir / "snakemake.log").read_text()
    assert run.returncode == 0, f"SLURM run failed ({run.returncode}):\n{log[-6000:]}"
    assert local.returncode == 0, f"local run failed ({local.returncode}):\n{local_text[-6000:]}"
    run_id = re.search(r"SLURM run ID: (\S+)", log)
    assert run_id, "no SLURM run ID in the log: did the run use the slurm executor?"
    jobs, submissions = parse_log(log)
    records = sacct_records(cluster, run_id.group(1), expected=len(submissions))
    print(f"\nSLURM run of '{target}': {wall_s:.0f} s wall, {len(submissions)} submissions")
    for record in records.values():
        print(f"  sacct {record.jobid}|{record.comment}|{record.state}|{record.req_tres}|{record.alloc_tres}")
    for line in squeue_lines.values():
        print(f"  squeue {line}")
    return SlurmDemo(
        target, slurm_dir, local_dir, log, jobs, submissions, records, cancelled, list(squeue_lines.values()), wall_s
    )


# ------------------------------------------------------------------------------------ the checks


def test_every_job_went_through_sbatch(slurm_demo):
    jobs, records = slurm_demo.jobs, slurm_demo.records
    remote = {jobid: job for jobid, job in jobs.items() if not job.local}
    table = slurm_demo.log.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    planned = sum(int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", table, re.M) if rule != "total")
    assert len(jobs) == planned, "every job of the plan ran (as a rule or localrule block)"
    assert remote, "no job was submitted to SLURM"
    # Rules without a body (the target) and localrules run on the submit host, never a GPU job.
    assert not [job.rule for job in jobs.values() if job.local and int(job.resources.get("gpu", 0))]
    submitted_jobids = {jobid for jobid, _ in slurm_demo.submissions}
    assert submitted_jobids == set(remote), "each non-local Snakemake job was submitted with sbatch"
    assert {slurm_id for _, slurm_id in slurm_demo.submissions} == set(records), "sacct knows exactly these jobs"
    completed = [record for record in records.values() if record.state == "COMPLETED"]
    assert len(completed) == len(remote), "one completed SLURM job per non-local Snakemake job"
    for jobid, slurm_id in slurm_demo.submissions:
        job, record = remote[jobid], records[slurm_id]
        assert record.rule == job.rule, f"SLURM job {slurm_id}: comment {record.comment} names rule {job.rule}"
        values = "_".join(item.split("=", 1)[1] for item in job.wildcards.split(", ")) if job.wildcards else ""
        assert record.wildcard_values == values
    for rule in {job.rule for job in remote.values()}:
        done = sorted(r.comment for r in completed if r.rule == rule)
        assert len(done) == len(set(done)) == sum(job.rule == rule for job in remote.values())


def test_gpu_jobs_asked_for_and_got_a_gpu(slurm_demo):
    by_slurm_id = {slurm_id: slurm_demo.jobs[jobid] for jobid, slurm_id in slurm_demo.submissions}
    gpu_rules = set()
    for slurm_id, record in slurm_demo.records.items():
        job = by_slurm_id[slurm_id]
        gpus = int(job.resources.get("gpu", 0))
        if gpus:
            gpu_rules.add(job.rule)
            assert f"gres/gpu={gpus}" in record.req_tres.split(","), f"{record.comment} requested {record.req_tres}"
            if record.state == "COMPLETED":
                assert f"gres/gpu={gpus}" in record.alloc_tres.split(","), f"{record.comment} got {record.alloc_tres}"
        else:
            assert "gres/gpu" not in record.req_tres + record.alloc_tres, f"CPU job {record.comment} holds a GPU"
    assert "segment" in gpu_rules, "segment was forced to gpu=1"
    declared = {job.rule for job in slurm_demo.jobs.values() if not job.local and int(job.resources.get("gpu", 0))}
    assert declared == gpu_rules


def test_a_cancelled_job_is_retried(slurm_demo):
    assert slurm_demo.cancelled, f"no {CANCEL_RULE} job was seen running for {CANCEL_AFTER_S} s to cancel"
    slurm_id, comment = slurm_demo.cancelled
    assert slurm_demo.records[slurm_id].state == "CANCELLED"
    jobid = next(job for job, slurm in slurm_demo.submissions if slurm == slurm_id)
    attempts = [slurm for job, slurm in slurm_demo.submissions if job == jobid]
    assert len(attempts) == 2 and attempts[0] == slurm_id, "submitted again after the cancellation"
    retry = slurm_demo.records[attempts[1]]
    assert retry.comment == comment and retry.state == "COMPLETED"
    assert f"Trying to restart job {jobid}." in slurm_demo.log
    assert sum(record.state == "CANCELLED" for record in slurm_demo.records.values()) == 1
    assert len(slurm_demo.submissions) == sum(not job.local for job in slurm_demo.jobs.values()) + 1


def zarr_arrays(store: Path) -> dict[str, np.ndarray]:
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Snakemake's .snakemake_timestamp file in the store
        group = zarr.open_group(str(store), mode="r")
        arrays = {name: obj[...] for name, obj in group.members(max_depth=None) if isinstance(obj, zarr.Array)}
        arrays[".attrs"] = np.array(repr(sorted(dict(group.attrs).items())))
    return arrays


def test_outputs_equal_a_local_run(slurm_demo):
    stores = sorted(
        p.relative_to(slurm_demo.local_dir) for p in (slurm_demo.local_dir / "results").glob("*/*/shard-*.zarr")
    )
    assert stores, "the local run wrote no preprocess stores"
    for relative in stores:
        expected, actual = zarr_arrays(slurm_demo.local_dir / relative), zarr_arrays(slurm_demo.slurm_dir / relative)
        assert expected.keys() == actual.keys(), relative
        for name, array in expected.items():
            assert actual[name].dtype == array.dtype and np.array_equal(actual[name], array), f"{relative}: {name}"
    for index in ("results/train/index.csv", "results/test/index.csv"):
        assert (slurm_demo.slurm_dir / index).read_bytes() == (slurm_demo.local_dir / index).read_bytes()
    for result in ("results/submission.csv", "results/metrics.tsv"):
        assert (slurm_demo.slurm_dir / result).read_bytes() == (slurm_demo.local_dir / result).read_bytes(), result


# ------------------------------------------------------------- a failed job's message (issue 14)


def test_a_failed_jobs_message_reaches_the_terminal(cluster, tiny_dataset, tmp_path):
    """The corrupt PNG of tests/test_bad_input.py through profiles/slurm: the job's one-line reason is
    printed by Snakemake on the submit node (show-failed-logs), not only left in logs/."""
    workdir = copy_workflow(tmp_path / "work")
    config = small_config(workdir, tiny_dataset)
    broken = tiny_dataset / "train" / "img1_green.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    command = slurm_command(workdir, "results/train/images_96/shard-0.zarr", config)
    env = dict(cluster.env)
    env.pop("SNAKEMAKE_PROFILE", None)
    result = subprocess.run(
        ["timeout", "-s", "INT", "-k", "60", "420", *command, "--retries", "0"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "SLURM run ID" in output, output[-4000:]
    assert f"cannot decode image file {broken} (corrupt or not an image)" in output, output[-4000:]

"""The Snakemake profiles: profiles/slurm (``--profile``) and profiles/default (loaded by itself).

Snakemake 9 loads profiles/default/ on every run, also next to ``--profile profiles/slurm``, and its
keys then replace the same keys of that profile. These tests pin down what each run really gets:
with Snakemake's own argument parsing (as the ``snakemake`` command does it) and with dry runs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import blob_image, write_random_bundle, write_rgby
from snakemake.utils import available_cpu_count
from workflow_helpers import REPO, copy_workflow

BIN = Path(sys.executable).parent
SLURM = REPO / "profiles" / "slurm" / "config.yaml"
DEFAULT = REPO / "profiles" / "default" / "config.yaml"

# Prints the settings Snakemake derives from a command line (and the profiles it loads) as JSON.
# sys.argv is set first: profiles/default reads it, as it does in a real `snakemake` process.
RESOLVE = """
import json, sys
sys.argv = ["snakemake", *sys.argv[1:]]
from snakemake.cli import parse_args
_, args = parse_args(sys.argv[1:])
resources = args.resources or {}
print(json.dumps({
    "executor": args.executor,
    "jobs": args.jobs,
    "cores": args.cores,
    "resources": {name: resource.value for name, resource in resources.items()},
    "default_resources": list(getattr(args.default_resources, "args", None) or []),
    "retries": args.retries,
    "latency_wait": args.latency_wait,
    "status_command": getattr(args, "slurm_status_command", None),
}, default=str))
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("profiles"))


def environment(**changes: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("SNAKEMAKE_PROFILE", None)
    env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU unless a test says otherwise
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def resolve(workdir: Path, *argv: str, **env: str | None) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", RESOLVE, *argv], cwd=workdir, env=environment(**env),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def dry_run(workdir: Path, *argv: str, **env: str | None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(BIN / "snakemake"), *argv, "-n"], cwd=workdir, env=environment(**env),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def job_blocks(log: str) -> list[dict[str, str]]:
    """The job blocks of a Snakemake log: rule name plus its indented ``key: value`` fields."""
    jobs, current = [], None
    for line in log.splitlines():
        header = re.fullmatch(r"(?:local)?rule (\w+):", line)
        if header:
            current = {"rule": header.group(1)}
            jobs.append(current)
        elif current is not None and line.startswith("    ") and ": " in line:
            key, value = line.strip().split(": ", 1)
            current[key] = value
        elif not line.startswith(" "):
            current = None
    return jobs


def resources(job: dict[str, str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in job.get("resources", "").split(", ") if "=" in item)


def gpu_rules(workdir: Path) -> set[str]:
    """Rules whose own definition (rules/*.smk) asks for a GPU, as Snakemake sees them: from a dry
    run of the default target without any profile."""
    result = dry_run(workdir, "--configfile", "configs/demo.yaml", "--workflow-profile", "none")
    return {job["rule"] for job in job_blocks(result.stdout + result.stderr) if int(resources(job).get("gpu", 0))}


# ---------------------------------------------------------------------------------- the files


def test_each_profile_is_one_config_yaml():
    # With both profile.yaml and config.yaml in one directory Snakemake picks either; config.yaml is
    # read by every Snakemake 9 (profile.yaml only since 9.19), as the Snakefile's min_version.
    for directory in (SLURM.parent, DEFAULT.parent):
        names = sorted(
            path.name for path in directory.iterdir() if re.fullmatch(r"(profile|config)(\.v\d+\+)?\.yaml", path.name)
        )
        assert names == ["config.yaml"], directory


def test_slurm_profile_settings():
    profile = yaml.safe_load(SLURM.read_text())
    assert profile["executor"] == "slurm"
    assert isinstance(profile["jobs"], int) and profile["jobs"] >= 1
    assert set(profile["resources"]) == {"gpu"} and profile["resources"]["gpu"] >= 1
    defaults = profile["default-resources"]
    assert {"slurm_partition", "slurm_account", "runtime", "mem_mb"} <= set(defaults)
    # gpu_model in default-resources would give every job a GPU (plugin 2.8.0 counts 1 by default),
    # and a default gpu would do the same: GPU requests come from the rules.
    assert not {"gpu", "gpu_model", "gres"} & set(defaults)
    assert profile["retries"] >= 1
    assert profile["latency-wait"] >= 30
    assert profile["slurm-status-command"] == "squeue"
    assert "cores" not in profile, "--cores would cap every SLURM job's threads"


def test_every_slurm_profile_key_is_explained():
    lines = SLURM.read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"[a-z][\w-]*:", line):  # a top-level key
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#"), f"line {number + 1} ({line}) has no comment above it"


def test_set_resources_name_rules_of_the_workflow(workdir, tmp_path):
    profile = yaml.safe_load(SLURM.read_text())
    bundle = write_random_bundle(tmp_path / "run")
    write_rgby(workdir / "new", "img0", blob_image(64, 64, [(32, 32)], radius=12)[0])
    annotate = {"annotate": {"bundle": str(bundle), "input_dir": "new"}}
    (workdir / "configs/annotate_profile.yaml").write_text(yaml.safe_dump(annotate))
    known = set()
    for config in ("configs/demo.yaml", "workflow_config.yaml", "configs/annotate_profile.yaml"):
        result = subprocess.run(
            [str(BIN / "snakemake"), "--list-rules", "--configfile", config], cwd=workdir,
            env=environment(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        known |= {line.strip() for line in result.stdout.splitlines() if line.strip()}
    unknown = set(profile["set-resources"]) - known
    assert not unknown, f"set-resources for rules that do not exist (renamed?): {unknown}"


# ------------------------------------------------------------------ what a run really gets


def test_bare_run_uses_the_workstation_defaults(workdir):
    settings = resolve(workdir, "preprocess", "--configfile", "configs/demo.yaml")
    assert settings["executor"] in (None, "local")
    assert settings["cores"] == available_cpu_count(), "cores: all"
    # no GPU: model jobs run on the CPU, as many at a time as the cores allow (each takes model_threads)
    assert settings["resources"] == {"gpu": available_cpu_count()}


@pytest.mark.parametrize(
    ("visible", "gpus"),
    [("0,1,2", 3), ("1,3", 2), ("0,-1,2", 1), ("", 0), (None, None)],
)
def test_gpu_cap_follows_the_machines_gpus(workdir, visible, gpus):
    settings = resolve(workdir, "preprocess", CUDA_VISIBLE_DEVICES=visible)
    if gpus is None:  # unset: NVIDIA's device files decide
        gpus = sum(1 for name in os.listdir("/dev") if re.fullmatch(r"nvidia\d+", name))
    assert settings["resources"] == {"gpu": gpus or available_cpu_count()}, "no GPU: one model job per core"


def test_command_line_wins_over_the_default_profile(workdir):
    settings = resolve(workdir, "preprocess", "--cores", "3", "--resources", "gpu=2")
    assert settings["cores"] == 3 and settings["resources"] == {"gpu": 2}


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (("--profile", "profiles/slurm", "preprocess"), {}),
        (("preprocess", "--profile=profiles/slurm"), {}),
        (("preprocess",), {"SNAKEMAKE_PROFILE": "profiles/slurm"}),
    ],
)
def test_slurm_profile_is_not_overridden_by_the_default_profile(workdir, argv, env):
    settings = resolve(workdir, *argv, **env)
    profile = yaml.safe_load(SLURM.read_text())
    assert settings["executor"] == "slurm"
    assert settings["cores"] is None, "no --cores from profiles/default: it would cap the jobs' threads"
    assert settings["resources"] == profile["resources"], "the cluster's GPU cap, not the workstation's"
    assert settings["jobs"] == profile["jobs"]
    assert settings["retries"] == profile["retries"]
    assert settings["latency_wait"] == profile["latency-wait"]
    assert settings["status_command"] == "squeue"
    assert any(item.startswith("slurm_account=") for item in settings["default_resources"])


def test_executor_without_profile_gets_no_workstation_defaults(workdir):
    settings = resolve(workdir, "preprocess", "--executor", "slurm")
    assert settings["cores"] is None and settings["resources"] == {}


def test_workflow_profile_none_switches_the_defaults_off(workdir):
    settings = resolve(workdir, "preprocess", "--workflow-profile", "none")
    assert settings["cores"] is None and settings["resources"] == {}


@pytest.mark.parametrize(("argv", "threads"), [((), 1), (("--config", "model_threads=3"), 3)])
def test_model_jobs_get_model_threads_capped_at_the_cores(workdir, argv, threads):
    def model_commands(cores: str, *extra: str) -> list[str]:
        result = dry_run(workdir, "results/models/cam_effnet_192/fold0/valid.zarr", "-p", "--cores", cores,
                         "--configfile", "configs/demo.yaml", *extra)  # fmt: skip
        log = result.stdout + result.stderr
        return re.findall(r"^(?:Shell command: )?(hpa-pipeline (?:train|predict) .*)$", log, re.MULTILINE)

    commands = model_commands("4", *argv)
    assert len(commands) == 2 and all(f" --threads {threads} " in command for command in commands)
    assert all(" --threads 2 " in command for command in model_commands("2", "--config", "model_threads=8"))


# ------------------------------------------------------------------------------- dry runs


def test_plain_dry_run_picks_up_the_default_profile(workdir):
    result = dry_run(workdir, "preprocess", "--configfile", "configs/demo.yaml", "--set-resources", "segment:gpu=5")
    log = result.stdout + result.stderr
    assert "Using workflow specific profile profiles/default for setting default command line arguments." in log
    segment = [job for job in job_blocks(log) if job["rule"] == "segment"]
    assert segment, "segment jobs in the plan"
    # The default profile's cap (the cores without GPUs) lowers every job's gpu to it.
    assert all(resources(job)["gpu"] == str(min(5, available_cpu_count())) for job in segment)
    assert "slurm_partition" not in log


def test_slurm_dry_run_gives_every_job_cluster_resources(workdir):
    result = dry_run(workdir, "--configfile", "configs/demo.yaml", "--profile", "profiles/slurm")
    log = result.stdout + result.stderr
    assert "Using profiles profiles/slurm and workflow specific profile profiles/default" in log
    profile = yaml.safe_load(SLURM.read_text())
    jobs = job_blocks(log)
    assert jobs
    declared = gpu_rules(workdir)
    for job in jobs:
        job_resources = resources(job)
        assert job_resources["slurm_partition"] == profile["default-resources"]["slurm_partition"]
        assert job_resources["slurm_account"] == profile["default-resources"]["slurm_account"]
        per_rule = profile["set-resources"].get(job["rule"], {})
        if "runtime" in per_rule:
            assert job_resources["runtime"] == str(eval(str(per_rule["runtime"]), {"attempt": 1}))
        # Exactly the rules that declare a GPU ask for one (sbatch --gpus=1), nothing else does.
        assert job_resources.get("gpu", "0") == ("1" if job["rule"] in declared else "0"), job["rule"]


def test_slurm_dry_run_forcing_a_gpu_on_segment(workdir):
    result = dry_run(
        workdir, "preprocess", "--configfile", "configs/demo.yaml", "--profile", "profiles/slurm",
        "--set-resources", "segment:gpu=1",
    )  # fmt: skip
    jobs = job_blocks(result.stdout + result.stderr)
    assert {job["rule"] for job in jobs if resources(job).get("gpu") == "1"} == {"segment"}


@pytest.mark.parametrize(
    ("argv", "gpus"),
    [
        (["--configfile", "jobs4.yaml"], 8),
        (["--configfile", "configs/demo.yaml", "jobs4.yaml"], 8),
        (["--configfile", "jobs4.yaml", "--config", "jobs_per_gpu=3"], 6),
        (["--configfile", "configs/demo.yaml"], 2),
    ],
)
def test_gpu_cap_counts_jobs_per_gpu(workdir, argv, gpus):
    (workdir / "jobs4.yaml").write_text("jobs_per_gpu: 4\n")
    settings = resolve(workdir, "preprocess", *argv, CUDA_VISIBLE_DEVICES="0,1")
    assert settings["resources"] == {"gpu": gpus}
    assert resolve(workdir, "preprocess", *argv, CUDA_VISIBLE_DEVICES="")["resources"] == {"gpu": available_cpu_count()}

"""Fault tolerance: the demo killed with SIGKILL at several points, rerun with the documented
commands, ends with the same submission and metrics, byte for byte, as an uninterrupted run (so two
runs of one seed agree as well); no store ever looks complete while half-written; a killed training
resumes from its last epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from workflow_helpers import copy_workflow, snakemake

from hpa_pipeline.io.stores import open_store

pytestmark = pytest.mark.slow

DEMO = ("--configfile", "configs/demo.yaml", "--cores", "2")


def run_and_kill(workdir: Path, when: Callable[[Path], bool], timeout: float = 900) -> None:
    """Run the demo and SIGKILL Snakemake and all its jobs as soon as ``when(workdir)`` holds."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "snakemake"), "submission", *DEMO],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while not when(workdir):
            assert process.poll() is None, "the workflow finished before the kill point"
            assert time.monotonic() < deadline, "the kill point was never reached"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def stores_look_complete_only_when_complete(workdir: Path) -> None:
    """Every store under its final name opens and all its arrays read; partial stores are hidden."""
    for store in (workdir / "results").rglob("*.zarr"):
        if any(part.startswith(".") for part in store.relative_to(workdir).parts):
            continue
        kind = json.loads((store / "zarr.json").read_text())["attributes"]["kind"]
        for _, array in open_store(store, kind).arrays():
            array[...]


def unlock(workdir: Path) -> None:
    """The README's first recovery step after a crash: release the killed run's lock."""
    snakemake(workdir, "--unlock", *DEMO)


def segment_running(workdir: Path) -> bool:
    return any((workdir / "logs").glob("segment/*.log"))


def unfinished_trainings(workdir: Path) -> list[tuple[str, str]]:
    return [
        (checkpoint.parent.parent.name, checkpoint.parent.name)
        for checkpoint in (workdir / "results").glob("checkpoints/*/fold*/last.pt")
        if not (
            workdir / "results/models" / checkpoint.parent.parent.name / checkpoint.parent.name / "final.pt"
        ).exists()
    ]


def training_after_an_epoch(workdir: Path) -> bool:
    return bool(unfinished_trainings(workdir))


def submission_running(workdir: Path) -> bool:
    return (workdir / "logs/make_submission/make_submission.log").exists()


def test_killed_runs_resume_to_the_same_submission(demo_run, tmp_path):
    workdir = copy_workflow(tmp_path / "faults")
    run_and_kill(workdir, segment_running)
    stores_look_complete_only_when_complete(workdir)

    unlock(workdir)
    run_and_kill(workdir, training_after_an_epoch)
    stores_look_complete_only_when_complete(workdir)
    model, fold = unfinished_trainings(workdir)[0]
    unlock(workdir)
    snakemake(workdir, f"results/models/{model}/{fold}/final.pt", *DEMO)
    log = (workdir / f"logs/train_model/{model}-{fold}.log").read_text()
    assert "resuming from" in log, "the killed training started over"

    unlock(workdir)
    run_and_kill(workdir, submission_running)
    stores_look_complete_only_when_complete(workdir)
    assert not (workdir / "results/submission.csv").exists()

    unlock(workdir)
    snakemake(workdir, "submission", *DEMO)
    # a second run of the same seed in another directory, killed three times: the same bytes
    for result in ("results/submission.csv", "results/metrics.tsv"):
        assert (workdir / result).read_bytes() == (demo_run / result).read_bytes(), result

"""Running the real workflow in a scratch copy, for the end-to-end tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = (
    "Snakefile",
    "workflow_config.yaml",
    "workflow_2018.yaml",
    "rules",
    "schemas",
    "envs",
    "configs",
    "profiles",
    "report",
)


def copy_workflow(destination: Path) -> Path:
    """Copy the workflow definition (not results) into ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name)
        elif source.exists():
            shutil.copy2(source, destination / name)
    return destination


def _snakemake_command(args: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """The test interpreter's snakemake with ``args``, and an environment with that interpreter on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return [str(Path(sys.executable).parent / "snakemake"), *args], env


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run snakemake in ``workdir`` with the test interpreter's environment on PATH."""
    command, env = _snakemake_command(args)
    result = subprocess.run(
        command,
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
        )
    return result


class BackgroundRun:
    """A Snakemake run started in ``workdir`` that goes on while the caller does other work; its output goes
    to ``workdir/snakemake.out`` and ``workdir/snakemake.err``."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.workdir, self.args = workdir, args
        command, env = _snakemake_command(args)
        with open(workdir / "snakemake.out", "w") as out, open(workdir / "snakemake.err", "w") as err:
            # its own session, so that stop() reaches the jobs it started too
            self.process = subprocess.Popen(
                command,
                cwd=workdir, env=env, stdout=out, stderr=err, start_new_session=True,
            )  # fmt: skip

    def wait(self, timeout: float = 1800) -> Path:
        """Wait for the run to end; its ``workdir``, or AssertionError with the ends of its output."""
        try:
            returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"snakemake {' '.join(self.args)} ran past {timeout} s") from None
        if returncode != 0:
            out = (self.workdir / "snakemake.out").read_text()[-4000:]
            err = (self.workdir / "snakemake.err").read_text()[-8000:]
            raise AssertionError(f"snakemake {' '.join(self.args)} failed ({returncode}):\n{out}\n{err}")
        return self.workdir

    def stop(self) -> None:
        """Stop the run and its jobs if it is still going."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def small_config(workdir: Path, data: Path, name: str = "small.yaml") -> str:
    """The demo's models on ``data`` at 96 px, without the demo's synthetic public set, written to
    ``configs/{name}``; returns that path relative to ``workdir``."""
    config = yaml.safe_load((workdir / "configs/demo.yaml").read_text())
    for key in ("demo_data", "truth_dir", "extra_train_sets", "duplicates"):
        config.pop(key)
    config["input_dir"] = str(data)
    config["shards"] = {"train": 1, "test": 1}
    config["preprocess"].update(image_sizes=[96], crop_image_sizes=[96], crop_size=24)
    config["segment"]["inputs"] = {
        "train": {"source": 96, "scale_factor": 0.125},
        "test": {"source": "original", "scale_factor": 0.125},
    }
    for model in config["models"].values():
        model["image_size"] = 96
        model.pop("crop_size", None)
    config["model_defaults"]["image"]["crop_size"] = 64
    (workdir / "configs" / name).write_text(yaml.safe_dump(config))
    return f"configs/{name}"

"""The conda environment files of the rules (envs/*.yaml) against pyproject.toml and rules/*.smk.

Conda itself is not installable on the development machine, so these tests check what can be
checked without it: the files parse, pin exactly pyproject's dependencies, install the project from
the right relative path (by running pip the way conda does for Snakemake), and every ``conda:``
directive of the rules names an existing file.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENVS = REPO / "envs"
PROJECT_PATH = "../.."  # the project's path in the pip sections, relative to .snakemake/conda/


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(requirements: list[str]) -> dict[str, str]:
    """name -> version of every ``name==version`` requirement."""
    pins = {}
    for requirement in requirements:
        match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;]+)\s*", requirement)
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def env(name: str) -> dict:
    return yaml.safe_load((ENVS / name).read_text())


def pip_section(environment: dict) -> list[str]:
    sections = [item["pip"] for item in environment["dependencies"] if isinstance(item, dict) and "pip" in item]
    assert len(sections) == 1, "one pip section"
    return [str(entry) for entry in sections[0]]


def conda_packages(environment: dict) -> list[str]:
    return [item for item in environment["dependencies"] if isinstance(item, str)]


ENV_FILES = sorted(path.name for path in ENVS.glob("*.y*ml"))


def test_expected_env_files_exist():
    assert {"pipeline.yaml", "segment.yaml"} <= set(ENV_FILES)


@pytest.mark.parametrize("name", ENV_FILES)
def test_env_file_parses(name):
    environment = env(name)
    assert set(environment) <= {"name", "channels", "dependencies"}, "only keys conda env files know"
    assert environment["channels"][0] == "conda-forge" and "defaults" not in environment["channels"]
    packages = conda_packages(environment)
    python = [package for package in packages if re.fullmatch(r"python\s*[=<>].*", package)]
    assert python == ["python=3.11"], "the Python of .venv and of pyproject's requires-python"
    assert "pip" in packages, "pip must be a conda dependency for the pip section to be used"
    assert pyproject()["project"]["requires-python"] == ">=3.11"


@pytest.mark.parametrize("name", ENV_FILES)
def test_env_pins_pyprojects_dependencies(name):
    expected = pinned(pyproject()["project"]["dependencies"])
    assert len(expected) == len(pyproject()["project"]["dependencies"]), "pyproject pins every dependency"
    requirements = pip_section(env(name))
    actual = pinned(requirements)
    # Same packages at the same versions; envs may not add pinned PyPI packages of their own.
    assert actual == expected
    assert len([r for r in requirements if "==" in r]) == len(expected), "no package listed twice"


@pytest.mark.parametrize("name", ENV_FILES)
def test_env_installs_the_project_editable(name):
    requirements = pip_section(env(name))
    assert f"-e {PROJECT_PATH}" in requirements
    unknown = [r for r in requirements if "==" not in r and r != f"-e {PROJECT_PATH}"]
    assert not unknown, f"unexpected pip entries {unknown}"


def test_project_path_resolves_where_conda_runs_pip(tmp_path):
    """Snakemake copies an env file to <workdir>/.snakemake/conda/<hash>.yaml and runs
    ``conda env create --file`` on the copy; conda writes the pip section to a requirements file in
    that directory and runs pip there. The same is done here with pip itself (dry run, no deps)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy2(REPO / "pyproject.toml", repo)
    shutil.copytree(REPO / "hpa_pipeline", repo / "hpa_pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    if (REPO / "README.md").exists():
        shutil.copy2(REPO / "README.md", repo)
    conda_dir = repo / ".snakemake" / "conda"
    conda_dir.mkdir(parents=True)
    (conda_dir / "condaenv.test.requirements.txt").write_text(f"-e {PROJECT_PATH}\n")
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-build-isolation", "--quiet",
         "--report", str(report), "-r", "condaenv.test.requirements.txt"],
        cwd=conda_dir, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    installs = json.loads(report.read_text())["install"]
    assert [item["metadata"]["name"] for item in installs] == [pyproject()["project"]["name"]]
    assert installs[0]["download_info"]["url"] == repo.as_uri()
    assert installs[0]["download_info"]["dir_info"].get("editable") is True


def conda_directives() -> list[tuple[Path, str]]:
    """(rule file, env path) for every env file named in the rule files: in a ``conda:`` directive
    (also both branches of a conditional one) or in a string such as ``"../envs/x.yaml"`` that a
    directive may use through a variable."""
    found = []
    for smk in sorted((REPO / "rules").glob("*.smk")):
        text = smk.read_text()
        lines = text.splitlines()
        for number, line in enumerate(lines):
            if re.fullmatch(r"\s*conda:\s*(#.*)?", line):
                value = lines[number + 1]
            elif re.match(r"\s*conda:\s*\S", line):
                value = line.split(":", 1)[1]
            else:
                continue
            found += [(smk, path) for path in re.findall(r"""["']([^"']+\.ya?ml)["']""", value)]
        found += [(smk, path) for path in re.findall(r"""["'](\.\./envs/[^"']+)["']""", text)]
    return sorted(set(found))


def test_every_conda_directive_names_an_existing_env_file():
    directives = conda_directives()
    assert directives, "the rules declare conda environments"
    for smk, path in directives:
        target = (smk.parent / path).resolve()  # Snakemake resolves them relative to the rule file
        assert target.is_file(), f"{smk.name}: conda env {path} does not exist"
        assert target.parent == ENVS


def test_segment_env_post_deploy_script():
    """hpacellseg and pytorch_zoo come from envs/segment.post-deploy.sh (see envs/segment.yaml)."""
    script = ENVS / "segment.post-deploy.sh"
    if not script.exists():
        pytest.skip("envs/segment.post-deploy.sh is not in the repository yet (its text is in docs/cluster.md)")
    text = script.read_text()
    assert text.startswith("#!")
    assert "https://github.com/CellProfiling/HPA-Cell-Segmentation/archive/" in text
    assert "https://github.com/haoxusci/pytorch_zoo/archive/" in text
    assert "--no-deps" in text
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0

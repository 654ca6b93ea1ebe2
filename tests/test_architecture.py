"""The package's rooms and what each may import (docs/architecture.md explains them).

Stage rooms mirror the rule files one to one and never import each other; the shared rooms below them
hold what several stages use, and import only rooms further down.
"""

import ast
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "hpa_pipeline"

#: One room per rule file (rules/common.smk pairs with config.py).
STAGES = {"data", "preprocess", "train", "predict", "ensemble", "submit", "report", "bundle"}
#: Shared rooms and the rooms each may import (itself included where it has several modules).
SHARED = {
    "errors": set(),
    "labels": {"errors"},
    "progress": set(),
    "scores": set(),
    "settings": {"errors", "labels", "io"},
    "config": {"errors", "labels", "settings", "io"},
    "io": {"errors", "labels", "progress", "io"},
    "nets": {"errors", "labels", "progress", "settings", "io", "nets"},
    "kaggle": {"errors", "labels", "io", "kaggle"},
    "zoo": {"errors", "labels", "settings", "io", "nets", "zoo"},
}
#: What every stage may use besides its own room.
STAGE_MAY_IMPORT = set(SHARED)
#: Rooms above the stages: an application runs the stages' functions on new data (annotate: a trained
#: bundle applied to a folder of images), so it may import every stage.
APPLICATIONS = {"annotate": STAGES | set(SHARED) | {"annotate"}}


def _room(module: str) -> str:
    """``hpa_pipeline.io.cells`` -> ``io``; the package itself (``__version__``) -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _package_imports() -> list[tuple[str, str, int]]:
    """(importing module, imported module, line) of every import of the package inside it."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hpa_pipeline"):
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names if alias.name.startswith("hpa_pipeline")]
            found += [(module, name, node.lineno) for name in names]
    return found


def test_every_module_belongs_to_a_room():
    modules = [".".join(path.relative_to(REPO).with_suffix("").parts) for path in PACKAGE.rglob("*.py")]
    rooms = {_room(module.removesuffix(".__init__")) for module in modules}
    assert rooms - {"", "cli"} <= STAGES | set(SHARED) | set(APPLICATIONS), rooms - STAGES - set(SHARED)


def test_stage_rooms_match_the_rule_files():
    rule_files = {path.stem for path in (REPO / "rules").glob("*.smk")}
    # an application's rule file (its workflow mode) wires the stage rules; it may have none
    assert STAGES | {"common"} <= rule_files <= STAGES | set(APPLICATIONS) | {"common"}


def test_imports_follow_the_rooms():
    imports = _package_imports()
    assert len(imports) > 100  # the walk found the package's imports
    wrong = []
    for importer, imported, line in imports:
        source, target = _room(importer), _room(imported)
        if source in ("", "cli") or target == "":
            continue
        if source in SHARED:
            allowed = SHARED[source]
        elif source in APPLICATIONS:
            allowed = APPLICATIONS[source]
        else:
            allowed = STAGE_MAY_IMPORT | {source}
        if target not in allowed:
            wrong.append(f"{importer} (line {line}) imports {imported}: room {source} may not import {target}")
    assert not wrong, "\n".join(wrong)


def test_the_rules_catch_a_stage_importing_another(monkeypatch):
    fake = [("hpa_pipeline.submit.submission", "hpa_pipeline.preprocess.masks", 3)]
    monkeypatch.setattr(__import__(__name__), "_package_imports", lambda: fake + _real_imports())
    with pytest.raises(AssertionError, match="room submit may not import preprocess"):
        test_imports_follow_the_rooms()


_real_imports = _package_imports


def test_the_package_never_imports_snakemake():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert not any(alias.name.startswith("snakemake") for alias in node.names), path
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("snakemake"), path


#: Public names that only the tests and users call, with the reason they stay.
USED_OUTSIDE_THE_WORKFLOW = {
    "read_submission": "the reader of the submission format that write_submission writes",
    "decode_binary_mask": "the inverse of encode_binary_mask: how a user reads a submitted mask",
    "model_settings_schema": "generates the schema's $defs.model_settings, whose copy test_settings checks",
}
#: Where the workflow calls the package from, besides the package itself.
CALLERS = ("Snakefile", "pyproject.toml", "rules/*.smk", "benchmarks/**/*.py", "scripts/**/*.py")


def _unused_public_names(modules: dict[str, str], callers: str) -> list[str]:
    """``module: name`` of every public top-level function or class of ``modules`` (name -> source)
    that no module refers to and whose name does not occur in ``callers``."""
    trees = {module: ast.parse(source) for module, source in modules.items()}
    referred = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                referred.add(node.id)
            elif isinstance(node, ast.Attribute):
                referred.add(node.attr)
            elif isinstance(node, ast.ImportFrom):
                referred.update(alias.name for alias in node.names)
    called = set(re.findall(r"\w+", callers))
    return [
        f"{module}: {node.name}"
        for module, tree in trees.items()
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef))
        and not node.name.startswith("_")
        and node.name not in referred | called | set(USED_OUTSIDE_THE_WORKFLOW)
    ]


def test_every_public_function_is_used_by_the_workflow():
    modules = {str(path.relative_to(REPO)): path.read_text() for path in sorted(PACKAGE.rglob("*.py"))}
    callers = "\n".join(path.read_text() for pattern in CALLERS for path in sorted(REPO.glob(pattern)))
    assert len(modules) > 50 and "hpa-pipeline" in callers  # the walk found the package and the rules
    assert _unused_public_names(modules, callers) == []


def test_the_check_finds_a_function_only_tests_call():
    modules = {
        "a.py": "def used():\n    pass\n\n\ndef only_tested():\n    pass\n\n\ndef _private():\n    pass\n",
        "b.py": "from a import used\n\nused()\n",
    }
    assert _unused_public_names(modules, "") == ["a.py: only_tested"]
    assert _unused_public_names(modules, "hpa-pipeline only_tested --flag") == []


def test_no_run_output_is_tracked():
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert [name for name in tracked.splitlines() if name.endswith(".log")] == []

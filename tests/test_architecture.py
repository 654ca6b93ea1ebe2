"""The package's rooms and what each may import (docs/architecture.md explains them).

Stage rooms mirror the rule files one to one and never import each other; the shared rooms below them
hold what several stages use, and import only rooms further down.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "hpa_pipeline"

#: One room per rule file (rules/common.smk pairs with config.py).
STAGES = {"data", "preprocess", "train", "predict", "ensemble", "submit", "report"}
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
}
#: What every stage may use besides its own room.
STAGE_MAY_IMPORT = set(SHARED)


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
    assert rooms - {"", "cli"} <= STAGES | set(SHARED), rooms - STAGES - set(SHARED)


def test_stage_rooms_match_the_rule_files():
    rule_files = {path.stem for path in (REPO / "rules").glob("*.smk")}
    assert rule_files == STAGES | {"common"}


def test_imports_follow_the_rooms():
    imports = _package_imports()
    assert len(imports) > 100  # the walk found the package's imports
    wrong = []
    for importer, imported, line in imports:
        source, target = _room(importer), _room(imported)
        if source in ("", "cli") or target == "":
            continue
        allowed = SHARED[source] if source in SHARED else STAGE_MAY_IMPORT | {source}
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

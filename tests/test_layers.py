"""
Import rules of the operation and fact modules (the layers refactor):

- a fact module runs its command on the node and parses the output: it imports pyinfra, the
  standard library and other fact modules, never controller-side code (homecloud.*) or
  operations;
- an operation module uses its own topic's facts, the generic ones (facts.system) and the
  generic operations and helpers (operations.system); never another topic's module.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GENERIC = "system"


def _imports(path: Path) -> list[str]:
    modules = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module in ("facts", "operations"):
                modules += [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                modules.append(node.module)
    return modules


def _project_modules(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).glob("*.py") if p.name != "__init__.py")


def _bad_fact_imports(path: Path) -> list[str]:
    return [m for m in _imports(path) if m.split(".")[0] in ("homecloud", "operations", "deploys", "lab", "bench")]


def _bad_operation_imports(path: Path) -> list[str]:
    topic = path.stem
    allowed = {f"facts.{topic}", f"facts.{GENERIC}", f"operations.{GENERIC}"} - {f"operations.{topic}"}
    return [
        m
        for m in _imports(path)
        if m.split(".")[0] in ("facts", "operations") and ".".join(m.split(".")[:2]) not in allowed
    ]


@pytest.mark.parametrize("path", _project_modules("facts"), ids=lambda p: p.stem)
def test_facts_import_no_controller_code(path):
    bad = _bad_fact_imports(path)
    assert not bad, f"facts/{path.name} imports {bad}: facts run node-side logic only"


@pytest.mark.parametrize("path", _project_modules("operations"), ids=lambda p: p.stem)
def test_operations_import_only_their_topic_and_system(path):
    bad = _bad_operation_imports(path)
    assert not bad, f"operations/{path.name} imports {bad}: only facts.{path.stem}, facts.system and operations.system"


def test_the_rules_catch_bad_imports(tmp_path):
    (tmp_path / "samba.py").write_text(
        "from operations.nfs import render_ganesha\nfrom operations import storage\n"
        "from facts.samba import SambaUsers\nfrom facts.system import FileStates\nfrom operations.system import account\n"
    )
    assert _bad_operation_imports(tmp_path / "samba.py") == ["operations.nfs", "operations.storage"]
    (tmp_path / "k3s.py").write_text("import shlex\nfrom homecloud.k3s_binary import arch_from_machine\n")
    assert _bad_fact_imports(tmp_path / "k3s.py") == ["homecloud.k3s_binary"]

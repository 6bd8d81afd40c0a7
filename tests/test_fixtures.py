"""
Operation and fact fixtures, the way pyinfra tests its own (pyinfra-testing):

- tests/operations/<module>.<operation>/<case>.yaml: args/kwargs + facts -> commands (and the
  noop description when nothing is to do);
- tests/facts/<module>.<Fact>/<case>.yaml: command output -> fact value.

Every operation in operations/ and every fact in facts/ must have a fixture folder with at
least the cases create, already-correct (no commands), change and remove (test_coverage).
"""

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest
from pyinfra.api import FactBase
from pyinfra_testing.facts import make_fact_tests
from pyinfra_testing.operations import make_operation_tests

import facts as facts_pkg
import operations as operations_pkg

HERE = Path(__file__).resolve().parent
OPERATION_FIXTURES = HERE / "operations"
FACT_FIXTURES = HERE / "facts"


def _folders(root: Path):
    return sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob("*.y*ml")))


for _folder in _folders(OPERATION_FIXTURES):
    _cls = make_operation_tests("operations", _folder.name, _folder)
    _cls.__name__ = "TestOp_" + _folder.name.replace(".", "_")
    globals()[_cls.__name__] = _cls

for _folder in _folders(FACT_FIXTURES):
    _cls = make_fact_tests("facts", _folder.name, _folder)
    _cls.__name__ = "TestFact_" + _folder.name.replace(".", "_")
    globals()[_cls.__name__] = _cls


def _modules(package):
    for info in pkgutil.iter_modules(package.__path__):
        yield info.name, importlib.import_module(f"{package.__name__}.{info.name}")


def all_operations():
    found = []
    for name, module in _modules(operations_pkg):
        for attr, value in vars(module).items():
            # pyinfra's @operation wraps the generator and keeps it as `_inner`.
            if callable(value) and hasattr(value, "_inner") and getattr(value, "__module__", "") == module.__name__:
                found.append(f"{name}.{attr}")
    return sorted(found)


def all_facts():
    found = []
    for name, module in _modules(facts_pkg):
        for attr, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, FactBase)
                and value.__module__ == module.__name__
                and not attr.startswith("_")
            ):
                found.append(f"{name}.{attr}")
    return sorted(found)


@pytest.mark.parametrize("path", all_operations() or ["<none>"])
def test_every_operation_has_fixtures(path):
    if path == "<none>":
        pytest.skip("no operations yet")
    folder = OPERATION_FIXTURES / path
    cases = sorted(p.stem for p in folder.glob("*.y*ml")) if folder.is_dir() else []
    assert len(cases) >= 4, f"{path}: needs fixtures for create, already correct, change and remove in {folder} (has {cases})"


@pytest.mark.parametrize("path", all_facts() or ["<none>"])
def test_every_fact_has_fixtures(path):
    if path == "<none>":
        pytest.skip("no facts yet")
    folder = FACT_FIXTURES / path
    cases = sorted(p.stem for p in folder.glob("*.y*ml")) if folder.is_dir() else []
    assert len(cases) >= 2, f"{path}: needs fixtures (command output -> fact) in {folder} (has {cases})"

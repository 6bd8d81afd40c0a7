"""homecloud/oporder.py: the same operation order as pyinfra's, from the frames alone."""

from __future__ import annotations

import importlib
import os
import textwrap
from types import SimpleNamespace

import pyinfra
import pytest
from pyinfra.api.util import PYINFRA_INSTALL_DIR, get_operation_order_from_stack

from homecloud import oporder

# The probe stands where pyinfra's operation decorator calls the function (a frame of pyinfra's
# own code), so both implementations see the stack an operation call has.
PROBE = compile(
    "def probe(state, results, theirs, ours):\n    results.append((theirs(state), ours(state)))\n",
    os.path.join(PYINFRA_INSTALL_DIR, "api", "_homecloud_test_probe.py"),
    "exec",
)

DEPLOY = textwrap.dedent(
    """
    def helper(state, results):
        probe(state, results, theirs, ours)


    def layer(state, results):
        for _ in range(2):
            helper(
                state,
                results,
            )
        probe(
            state, results,
            theirs,
            ours,
        )


    layer(state, results)
    probe(state, results, theirs, ours)
    [helper(state, results) for _ in range(1)]
    """
)


def run_deploy(tmp_path, deploy_filename_is: str, is_cli: bool, monkeypatch):
    monkeypatch.setattr(pyinfra, "is_cli", is_cli)
    path = tmp_path / "deploy.py"
    path.write_text(DEPLOY, encoding="utf-8")
    filenames = {"this": str(path), "other": str(tmp_path / "other.py"), "none": None}
    state = SimpleNamespace(current_deploy_filename=filenames[deploy_filename_is], current_op_file_number=7)
    scope: dict = {"state": state, "results": [], "theirs": get_operation_order_from_stack, "ours": oporder.operation_order}
    exec(PROBE, scope)
    exec(compile(DEPLOY, str(path), "exec"), scope)
    return scope["results"]


@pytest.mark.parametrize("deploy_filename_is", ["this", "other", "none"])
@pytest.mark.parametrize("is_cli", [True, False])
def test_same_order_as_pyinfra(tmp_path, monkeypatch, deploy_filename_is, is_cli):
    results = run_deploy(tmp_path, deploy_filename_is, is_cli, monkeypatch)
    assert len(results) == 5
    for theirs, ours in results:
        assert ours == theirs
    if deploy_filename_is == "this" and is_cli:
        # Lines of the deploy file only, outermost first; a call over several lines counts by its
        # first line; the loop's two calls tie (pyinfra numbers duplicates itself).
        assert [ours for _, ours in results] == [
            [7, 19, 8, 3],
            [7, 19, 8, 3],
            [7, 19, 12],
            [7, 20],
            [7, 21, 21, 3],
        ]
    if deploy_filename_is == "other":
        assert all(ours == ([7] if is_cli else []) for _, ours in results)


def test_pyinfra_function_is_the_one_checked():
    # A pyinfra upgrade that changes the function fails here: compare the new one with
    # operation_order, then record its hash.
    assert oporder.source_sha256(get_operation_order_from_stack) == oporder.PYINFRA_FUNCTION_SHA256


def test_put_in_place_only_over_the_checked_function(monkeypatch):
    operation_module = importlib.import_module("pyinfra.api.operation")
    monkeypatch.setattr(operation_module, "get_operation_order_from_stack", get_operation_order_from_stack)
    assert oporder.fast_op_order() is True
    assert operation_module.get_operation_order_from_stack is oporder.operation_order
    assert oporder.fast_op_order() is True  # again: no change

    def changed(state):
        return [0]

    monkeypatch.setattr(operation_module, "get_operation_order_from_stack", changed)
    assert oporder.fast_op_order() is False
    assert operation_module.get_operation_order_from_stack is changed

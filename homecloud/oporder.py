"""
pyinfra's operation order from the call stack, computed from the frames alone (no source reads).

    from homecloud.oporder import fast_op_order
    fast_op_order()   # second line of every deploy file, after tcp_nodelay(state)

Why: in CLI mode pyinfra orders operations by the line numbers of the calls that queued them
(`pyinfra.api.util.get_operation_order_from_stack`). It gets them with `inspect.stack()` and
then `inspect.getframeinfo()` on every frame again; each of those opens the frame's source
(`findsource`: a stat, the module lookup, the lines) only to return one line of context that is
thrown away. With ~10 frames per call that is ~3 ms per operation call: 173 calls on the 4-node
lab, ~0.5 s of controller CPU in every run, a tenth of a no-op re-run (profiled 2026-12-04).

`operation_order(state)` returns the same list from each frame's `f_code.co_filename` and
`f_lineno`: the outermost frame of the deploy file being loaded and every frame after it that
is not pyinfra's own, with `state.current_op_file_number` first in CLI mode. That is what
`getframeinfo` reports for a frame of a .py file (its filename is `co_filename`; its line is the
start of the instruction being run, which is `f_lineno`). `fast_op_order()` puts it in place of
pyinfra's function where the operation decorator looks it up, only when that is still the
function of the pyinfra version it was checked against (`PYINFRA_FUNCTION_SHA256`: the hash of
its code); otherwise it leaves pyinfra alone and the run is only slower.
`tests/test_oporder.py` runs both on real call stacks (nested deploys, multi-line calls, loops,
a file that is not the deploy file) and requires the same answers.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from typing import Any

import pyinfra
from pyinfra.api.util import PYINFRA_INSTALL_DIR

# sha256 of the source of pyinfra.api.util.get_operation_order_from_stack in pyinfra 3.10.0.
PYINFRA_FUNCTION_SHA256 = "f4807f61585570e091fd453c7552d9e2b49329555f07f395a8e8f1d2a398a0b2"


def operation_order(state: Any) -> list[int]:
    """The line numbers pyinfra orders an operation by, for the operation being queued now."""
    frames = []
    frame = sys._getframe(1)
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    frames.reverse()  # outermost first, as pyinfra reads them

    start = 0
    if state.current_deploy_filename:
        # The first (outermost) frame of the deploy file; none: only the innermost frame is kept.
        for start, frame in enumerate(frames):
            if frame.f_code.co_filename == state.current_deploy_filename:
                break

    line_numbers = [state.current_op_file_number] if pyinfra.is_cli else []
    for frame in frames[start:]:
        if not frame.f_code.co_filename.startswith(PYINFRA_INSTALL_DIR):
            line_numbers.append(frame.f_lineno)
    return line_numbers


def source_sha256(function: Any) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()


def fast_op_order() -> bool:
    """Use `operation_order` for the operations queued from now on; True when it is in place.

    Safe to call again (each deploy file is exec'd once per host).
    """
    operation_module = importlib.import_module("pyinfra.api.operation")
    current = operation_module.get_operation_order_from_stack
    if current is operation_order:
        return True
    if source_sha256(current) != PYINFRA_FUNCTION_SHA256:
        return False
    operation_module.get_operation_order_from_stack = operation_order
    return True

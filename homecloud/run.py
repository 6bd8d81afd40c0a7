"""
Per-run state: what homecloud remembers for the length of one pyinfra run (one `State`), kept
here rather than as attributes on pyinfra's objects. Deploy files are exec'd once per host:
what must happen once per run (validation, a notice, a download) is recorded here.

    from homecloud.run import this_run
    if not this_run(state).validated: ...
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Run:
    validated: bool = False  # the inventory passed check_state()
    notices: set[str] = field(default_factory=set)  # notices already logged (once per run)
    k3s_releases: dict[Any, Any] = field(default_factory=dict)  # verified k3s binaries, per arch
    secrets_check: Any = None  # homecloud.fingerprints.check_secrets: its shared result

    def first_notice(self, key: str) -> bool:
        """True the first time `key` is asked for in this run: log that notice now."""
        if key in self.notices:
            return False
        self.notices.add(key)
        return True


_RUNS: "weakref.WeakKeyDictionary[Any, Run]" = weakref.WeakKeyDictionary()


def this_run(owner: Any) -> Run:
    """The record of the run `owner` belongs to: a pyinfra State, or the Inventory being loaded."""
    run = _RUNS.get(owner)
    if run is None:
        run = _RUNS[owner] = Run()
    return run

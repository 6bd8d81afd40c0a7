"""
The arm64 job of the local lab tier: Raspberry Pis are arm64, so every host layer is also
deployed onto arm64 userland (qemu-user) in each run of the lab tier, without making the whole
tier wait for emulation.

The job has its own small lab instance (`arm64_instance`: one amd64 and one arm64 node, both
dnas; `python -m lab up --nodes 1 --arm64`) and runs in the background from the start of the
session: it brings that lab up (the arm64 base is built once per machine, in parallel with the
amd64 one) and runs the first `deploys/all.py` on it while the other lab tests use the main lab.
`tests/lab/test_arm64.py` runs last, waits for it, and checks the result: no error, a second run
that changes nothing, the NAS services running arm64 binaries, a file synced to the arm64 node.

    HOMECLOUD_LAB_ARM64 unset   this job (the default of `--lab=local`)
    HOMECLOUD_LAB_ARM64=1       no job: the main lab has the arm64 node, every lab test runs on it
    HOMECLOUD_LAB_ARM64=0       no arm64 at all (the tests say so when they skip)

Everything runs in subprocesses (`python -m lab`, `pyinfra`) with HOMECLOUD_LAB set to the job's
instance; the thread only waits for them. Its lab is taken down at the end of the session
(HOMECLOUD_LAB_KEEP=1 keeps it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from lab import results

REPO_ROOT = Path(__file__).resolve().parents[2]
INVENTORY = REPO_ROOT / "inventories" / "lab.py"
DEPLOY = REPO_ROOT / "deploys" / "all.py"
# A first deploy onto a fresh arm64 node under qemu takes minutes (apt-get install samba alone
# took 4-5 min before the emulated base stopped byte-compiling); past this it is stuck.
FIRST_DEPLOY_TIMEOUT = 2400
LAB_UP_TIMEOUT = 3600


def mode() -> str:
    """`job`, `main-lab` or `off` (see the module docstring)."""
    value = os.environ.get("HOMECLOUD_LAB_ARM64", "")
    return {"1": "main-lab", "0": "off"}.get(value, "job")


def arm64_instance(main: str) -> str:
    """The job's lab instance: the main instance's name with a letter appended (8 at most)."""
    base = main[:7]
    letter = "a" if main[7:8] != "a" else "z"
    return base + letter


class Arm64Job:
    """The background part: lab up and the first deploy, each timed; `wait()` joins it."""

    def __init__(self, main_instance: str):
        self.instance = arm64_instance(main_instance)
        self.env = {"HOMECLOUD_LAB": self.instance}
        self.first: dict | None = None
        self.error: str | None = None
        self.seconds: dict[str, float] = {}
        self.lab_log = ""
        # The first deploy's whole log, kept after the job's lab is gone.
        self.log_file = Path(tempfile.gettempdir()) / f"homecloud-arm64-job-{self.instance}-first-deploy.log"
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"arm64-job-{self.instance}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            start = time.monotonic()
            up = subprocess.run(
                [sys.executable, "-m", "lab", "up", "--nodes", "1", "--arm64"],
                cwd=REPO_ROOT, capture_output=True, text=True, timeout=LAB_UP_TIMEOUT,
                env={**os.environ, **self.env}, stdin=subprocess.DEVNULL,
            )
            self.lab_log = (up.stdout + up.stderr)[-6000:]
            self.seconds["lab up"] = time.monotonic() - start
            if up.returncode != 0:
                self.error = f"`python -m lab up --nodes 1 --arm64` (instance {self.instance}) exited {up.returncode}:\n{self.lab_log}"
                return
            start = time.monotonic()
            self.first = results.run_pyinfra(INVENTORY, DEPLOY, env=self.env, timeout=FIRST_DEPLOY_TIMEOUT)
            self.seconds["first deploy"] = time.monotonic() - start
            self.log_file.write_text(self.first.get("stderr") or "")
        except BaseException:  # reported by the test that waits for the job
            self.error = traceback.format_exc()
        finally:
            self._done.set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    def down(self) -> None:
        subprocess.run(
            [sys.executable, "-m", "lab", "down"], cwd=REPO_ROOT, capture_output=True, text=True,
            timeout=600, env={**os.environ, **self.env}, stdin=subprocess.DEVNULL,
        )

"""`emosteer serve --engine vllm` stops its vLLM child when it is stopped (issue 28, item 9).

The launcher's `run_child` runs a stand-in for vLLM's API server here: a Python child that
starts a worker of its own (as vLLM starts its engine core), so no vLLM is needed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "killpg"), reason="POSIX process groups")

# The stand-in: writes its pid and its worker's, then serves until stopped. `on_term`: exit
# (exits 0 on SIGTERM/SIGINT, its worker ignoring SIGTERM: only the group's SIGKILL ends it),
# default (dies of the signal), or ignore (needs the SIGKILL after the grace).
CHILD = textwrap.dedent("""
    import signal, subprocess, sys, time
    folder, on_term = sys.argv[1], sys.argv[2]
    worker = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(600)"])
    if on_term == "exit":
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *a: sys.exit(0))
    elif on_term == "ignore":
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
    open(folder + "/pids.tmp", "w").write(f"{__import__('os').getpid()} {worker.pid}")
    __import__("os").replace(folder + "/pids.tmp", folder + "/pids")
    time.sleep(600)
""")


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in ("Z", "X")


def launch(tmp_path: Path, on_term: str, grace: float) -> tuple[subprocess.Popen, list[int]]:
    """The launcher (run_child in a process of its own) and the pids of its child and the
    child's worker, once both run."""
    (tmp_path / "child.py").write_text(CHILD)
    argv = [sys.executable, str(tmp_path / "child.py"), str(tmp_path), on_term]
    code = ("import sys; from emosteer.vllm.launcher import run_child; "
            f"sys.exit(run_child({argv!r}, grace={grace}))")
    launcher = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 60
    while not (tmp_path / "pids").exists():
        assert launcher.poll() is None, "the launcher exited early"
        assert time.monotonic() < deadline, "the child did not start"
        time.sleep(0.05)
    return launcher, [int(p) for p in (tmp_path / "pids").read_text().split()]


def gone(pids: list[int], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize(("on_term", "sig", "code"), [
    ("exit", signal.SIGTERM, 0),  # vLLM shuts down cleanly: its exit code is returned
    ("exit", signal.SIGINT, 0),   # Ctrl-C
    ("default", signal.SIGTERM, 128 + signal.SIGTERM),  # killed by the forwarded signal
])
def test_stopping_the_launcher_stops_vllm_and_its_workers(tmp_path, on_term, sig, code):
    launcher, pids = launch(tmp_path, on_term, grace=30)
    try:
        launcher.send_signal(sig)
        assert launcher.wait(timeout=30) == code
        assert gone(pids), [p for p in pids if alive(p)]
    finally:
        launcher.kill()
        for pid in pids:  # never leave the stand-ins behind, whatever failed
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_child_that_ignores_the_signal_is_killed_after_the_grace(tmp_path):
    launcher, pids = launch(tmp_path, "ignore", grace=1.0)
    try:
        start = time.monotonic()
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=30) == 128 + signal.SIGKILL
        assert 0.9 <= time.monotonic() - start < 15
        assert gone(pids), [p for p in pids if alive(p)]
    finally:
        launcher.kill()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_child_exit_code_is_returned_when_it_exits_alone():
    from emosteer.vllm.launcher import run_child

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    assert run_child([sys.executable, "-c", "import sys; sys.exit(3)"]) == 3
    assert run_child([sys.executable, "-c", "pass"]) == 0
    assert {sig: signal.getsignal(sig) for sig in before} == before  # handlers restored

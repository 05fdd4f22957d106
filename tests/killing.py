"""Kill a command with SIGKILL once it has written a number of lines: a crash at a known stage, never after
a fixed sleep."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def kill_after_lines(command: Sequence[str], path: Path, lines: int, env: Mapping[str, str]) -> int:
    """Run `command`, SIGKILL it as soon as `path` holds `lines` lines (or after 120 s), and return how
    many lines it had written."""
    process = subprocess.Popen(list(command), env=dict(env), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if path.exists() and len(path.read_bytes().splitlines()) >= lines:
            break
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return len(path.read_bytes().splitlines())

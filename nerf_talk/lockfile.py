"""A lock file that says who holds it: one writer per output folder (e.g. two `preprocess` runs into one dataset).

The file holds the holder's pid, host and start time as JSON. It is created with O_EXCL (atomic on local and NFSv3+
filesystems) and removed when the holder is done, on an exception or a signal the CLI turns into one. A lock left by
a process that died without cleaning up (SIGKILL, power loss) is taken over when its pid no longer runs on this host;
a lock from another host cannot be checked, so it is reported with the way to remove it by hand.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from nerf_talk.errors import UserError
from nerf_talk.media import pid_alive

log = logging.getLogger("nerf_talk")


def _holder(path: Path) -> dict | None:
    """The lock's content, or None when it vanished (released meanwhile). Unreadable content reads as {}."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        d = json.loads(text)
        return d if isinstance(d, dict) else {}
    except json.JSONDecodeError:  # a holder killed between creating and writing it
        return {}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # released meanwhile: not stale, the next try creates it
        return time.time()


def _stale(h: dict) -> bool:
    if h.get("host") != socket.gethostname() or not isinstance(h.get("pid"), int):
        return False
    return not pid_alive(h["pid"])


@contextlib.contextmanager
def hold(path: Path, what: str) -> Iterator[None]:
    """Hold the lock file `path` while the block runs; `what` names the guarded thing in the error message."""
    path = Path(path)
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": "nerf-talk"}
    for _ in range(3):  # a takeover races with other takers: whoever creates the file first wins
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            h = _holder(path)
            if h is None:
                continue
            if _stale(h) or (h == {} and time.time() - _mtime(path) > 60):
                log.warning("taking over the stale lock %s (pid %s on %s is gone)", path, h.get("pid"),
                            h.get("host"))
                path.unlink(missing_ok=True)
                continue
            raise UserError(
                f"{what} is in use by another run: pid {h.get('pid')} on {h.get('host')}, started {h.get('started')}"
                f" (lock file {path})",
                "wait for that run to finish; if it is no longer running, delete the lock file.")
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise UserError(f"could not take the lock {path}: other runs keep taking it", "try again in a moment.")
    try:
        yield
    finally:
        if _holder(path) == me:
            path.unlink(missing_ok=True)

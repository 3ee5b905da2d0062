"""Spreading a step's frames over two CPU cores: contiguous segments, one helper process, CPU accounting.

mediapipe's graphs do not run in parallel within one process (each is one stream), so the per-frame steps split the
clip into SEGMENTS contiguous parts: this process works on the first while a helper process works on the next.
Steps that carry state from frame to frame (landmark tracking, the smoothed person mask) start each later segment
a few frames early, so that its state has settled when its first frame is reached ("warm-up" frames, not written).

The number of segments is fixed rather than taken from the core count, so that a dataset comes out the same on every
machine; with one core the segments simply run one after another in this process.

The helper is a fresh interpreter (`python -m preprocess.parallel`) that takes pickled calls on a pipe. Not
multiprocessing's fork: forking a process that has run mediapipe corrupts the child's heap (measured: "malloc():
unaligned tcache chunk" in the child); and not its spawn, which re-imports the caller's __main__ (torch, for the CLI
and the bench) into the helper. The pipeline starts the helper when it begins (`session`), so that its imports
(~1 s of CPU, mostly mediapipe) overlap the ingest step, and it serves every step of the run.

CPU accounting: the helper reports the CPU time it used with each answer; `reported_cpu_seconds` is what live helpers
have reported, so that the pipeline's per-step CPU figure includes them (once a helper has exited and been waited
for, the operating system's figure for finished children holds its time instead).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import resource
import subprocess
import sys
import traceback
from collections import deque
from pathlib import Path
from typing import Callable, Iterator, Sequence

SEGMENTS = 2  # the clip is always cut into this many parts: results do not depend on the machine's core count
WORKERS_ENV = "NERF_TALK_PREPROCESS_WORKERS"  # processes to use (default: the cores this process may run on)

_reported = 0.0  # CPU seconds reported by helpers that have not yet been waited for
_helper_total = 0.0  # CPU seconds reported by every helper, ever (for the figures: how the work was shared)
_session: "_Helper | None" = None


def available_workers() -> int:
    """Processes to spread segments over: $NERF_TALK_PREPROCESS_WORKERS, else the usable cores."""
    env = os.environ.get(WORKERS_ENV)
    if env:
        return max(1, int(env))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def segments(n: int, parts: int = SEGMENTS) -> list[tuple[int, int]]:
    """`parts` contiguous [start, stop) ranges covering range(n), as equal as possible (empty ones dropped)."""
    bounds = [round(k * n / parts) for k in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def reported_cpu_seconds() -> float:
    return _reported


def helper_cpu_seconds() -> float:
    """CPU seconds the helpers have reported so far (a running total: take differences)."""
    return _helper_total


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _Helper:
    """One helper interpreter, fed pickled (module, function, args) on a pipe; answers come back on another."""

    def __init__(self):
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("GLOG_minloglevel", "2")  # mediapipe's native logging
        # Its own pipes rather than stdin/stdout: a library printing to stdout must not corrupt the answers.
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "preprocess.parallel", str(to_child_r), str(from_child_w)],
            env=env, pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._w = os.fdopen(self._to_child, "wb")
        self._r = os.fdopen(self._from_child, "rb")
        self.reported = 0.0
        self.pending: deque = deque()  # keys of the calls sent and not yet answered, in order

    @property
    def busy(self) -> bool:
        return bool(self.pending)

    def submit(self, fn: Callable, args: tuple, key=None) -> None:
        pickle.dump((fn.__module__, fn.__qualname__, args), self._w, protocol=pickle.HIGHEST_PROTOCOL)
        self._w.flush()
        self.pending.append(key)

    def result(self):
        """The answer to the oldest call sent (its exception raised here)."""
        global _reported, _helper_total
        try:
            ok, value, cpu = pickle.load(self._r)
        except EOFError:
            self.pending.clear()
            raise RuntimeError(f"the preprocessing helper process died (exit status {self.proc.wait()})") from None
        self.pending.popleft()
        self.reported += cpu
        _reported += cpu
        _helper_total += cpu
        if not ok:
            exc, tb = value
            if isinstance(exc, BaseException):
                raise exc from RuntimeError(f"in the preprocessing helper:\n{tb}")
            raise RuntimeError(f"the preprocessing helper failed:\n{tb}")
        return value

    def drain(self) -> None:
        """Collect and drop every answer still due (work sent ahead that no step asked for, or the warm-up)."""
        while self.pending:
            with contextlib.suppress(Exception):
                self.result()

    def close(self) -> None:
        global _reported
        if self.busy:  # an error here while the helper works, or work sent ahead not taken: do not wait for it
            self.proc.kill()
        with contextlib.suppress(OSError):
            self._w.close()  # end of input: the helper exits
        self.proc.wait()
        self._r.close()
        # Its whole CPU time is now in RUSAGE_CHILDREN: stop counting what it reported.
        _reported -= self.reported
        self.reported = 0.0


_session_open = False


@contextlib.contextmanager
def session() -> Iterator[None]:
    """Keep one helper process for everything run inside (the pipeline wraps its whole run in this).

    The helper starts at `prestart()` (or at the first `map_segments`), so a run whose steps are all cached starts none.
    """
    global _session, _session_open
    if _session_open:
        yield
        return
    _session_open = True
    try:
        yield
    finally:
        _session_open = False
        helper, _session = _session, None
        if helper is not None:
            helper.close()


def prestart() -> None:
    """Inside a session, start the helper now and have it import what the per-frame steps need, while this process
    goes on with other work."""
    global _session
    if _session_open and _session is None and available_workers() >= 2:
        _session = _Helper()
        _session.submit(_warm_up, ())


def submit_ahead(key, fn: Callable, args: tuple) -> bool:
    """Inside a session, start fn(*args) in the helper now, for a later step to take with `take_ahead(key)`.

    For work of a step whose inputs are ready while other steps still run in this process on one core (the pose fit):
    the helper would idle meanwhile. Returns whether it was sent (not without a helper).
    """
    prestart()
    if _session is None:
        return False
    _session.submit(fn, args, key)
    return True


def take_ahead(key):
    """The answer of the work sent ahead under `key` (waiting for it), or None when none was sent."""
    if _session is None or key not in _session.pending:
        return None
    while _session.pending[0] != key:
        with contextlib.suppress(Exception):
            _session.result()  # older answers nobody asked for
    return _session.result()


def _warm_up() -> None:
    # What the per-frame steps use, so that the first segment does not wait for the imports.
    import cv2  # noqa: F401
    import mediapipe  # noqa: F401

    import preprocess.landmarks  # noqa: F401
    import preprocess.parsing  # noqa: F401


def map_segments(fn: Callable, jobs: Sequence[tuple]) -> list:
    """[fn(*job) for job in jobs], the first job in this process and the second in the helper at the same time.

    `fn` must be a module-level function (it is sent by name); jobs and results are pickled. With one core, or more
    jobs than processes, the remaining jobs run here one after another.
    """
    if len(jobs) < 2 or available_workers() < 2:
        return [fn(*job) for job in jobs]
    prestart()
    helper = _session
    own = helper is None
    if own:
        helper = _Helper()
    try:
        helper.drain()  # the warm-up's answer, or work sent ahead that was not asked for
        helper.submit(fn, tuple(jobs[1]))
        out = [fn(*jobs[0])]
        out.append(helper.result())
        out += [fn(*job) for job in jobs[2:]]
        return out
    finally:
        if own:
            helper.close()


def _serve(read_fd: int, write_fd: int) -> None:
    """The helper's loop: run each call received, answer (ok, result or (exception, traceback), CPU seconds)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    r, w = os.fdopen(read_fd, "rb"), os.fdopen(write_fd, "wb")
    last = 0.0
    while True:
        try:
            module, name, args = pickle.load(r)
        except EOFError:
            return
        try:
            fn = importlib.import_module(module)
            for part in name.split("."):
                fn = getattr(fn, part)
            answer = (True, fn(*args))
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the caller
            answer = (False, (e, traceback.format_exc()))
        now = _self_cpu()
        try:
            payload = pickle.dumps((*answer, now - last), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # an exception that does not pickle: send its text
            payload = pickle.dumps((False, (None, answer[1][1] if not answer[0] else traceback.format_exc()),
                                    now - last))
        last = now
        w.write(payload)
        w.flush()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))

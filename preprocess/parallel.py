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
and the bench) into the helper. The pipeline opens a `session` for its run and starts the helper before the first step
that will run (`prestart`), so that its imports (~1 s of CPU, mostly mediapipe) overlap the ingest step; the one
helper serves every step. Between the steps that use both cores, the helper would idle while this process runs a
one-core step (the pose fit, the torso): work of a later step whose inputs exist is sent to it ahead of time
(`submit_ahead`) and taken by that step (`take_ahead`). The helper answers in the order it was asked.

If the helper cannot be started or dies, the work falls back to this process (a warning says so): slower, same result.

CPU accounting: the helper reports the CPU time it used with each answer; `reported_cpu_seconds` is what live helpers
have reported, so that the pipeline's per-step CPU figure includes them (once a helper has exited and been waited
for, the operating system's figure for finished children holds its time instead).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
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
_broken = False  # a helper failed to start or died: run everything here for the rest of this process

log = logging.getLogger("nerf_talk.preprocess")


class HelperDied(RuntimeError):
    """The helper process is gone (not an error of the work it was given)."""


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
        try:
            pickle.dump((fn.__module__, fn.__qualname__, args), self._w, protocol=pickle.HIGHEST_PROTOCOL)
            self._w.flush()
        except (BrokenPipeError, ValueError):  # ValueError: the pipe was closed after an earlier failure
            raise HelperDied(f"the preprocessing helper process is gone (exit status {self.proc.poll()})") from None
        self.pending.append(key)

    def result(self):
        """The answer to the oldest call sent (its exception raised here)."""
        global _reported, _helper_total
        try:
            ok, value, exc_bytes, tb, cpu = pickle.load(self._r)
        except (EOFError, OSError, pickle.UnpicklingError):
            self.pending.clear()
            raise HelperDied(f"the preprocessing helper process died (exit status {self.proc.wait()})") from None
        self.pending.popleft()
        self.reported += cpu
        _reported += cpu
        _helper_total += cpu
        if ok:
            return value
        try:  # the exception itself when it survives pickling (UserError does), else its traceback's text
            exc = pickle.loads(exc_bytes) if exc_bytes else None
        except Exception:
            exc = None
        if isinstance(exc, BaseException):
            raise exc from RuntimeError(f"in the preprocessing helper:\n{tb}")
        raise RuntimeError(f"the preprocessing helper failed:\n{tb}")

    def drain(self) -> None:
        """Collect and drop every answer still due (work sent ahead that no step asked for, or the warm-up)."""
        while self.pending:
            try:
                self.result()
            except HelperDied:
                raise
            except Exception:  # the failure of work nobody asked for is nobody's
                pass

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


def _start_helper() -> "_Helper | None":
    global _broken
    if _broken or available_workers() < 2:
        return None
    try:
        return _Helper()
    except (OSError, ValueError) as e:  # ValueError: no pass_fds (not POSIX)
        _broken = True
        log.warning("could not start a preprocessing helper process (%s): using one core", e)
        return None


def _helper_died(e: HelperDied) -> None:
    global _broken, _session
    _broken = True
    log.warning("%s: going on with one core", e)
    if _session is not None:
        helper, _session = _session, None
        with contextlib.suppress(Exception):
            helper.close()


def prestart(modules: Sequence[str] = ()) -> None:
    """Inside a session, start the helper now and have it import `modules` (those of the per-frame steps that will
    run, named by the caller: this module imports no step), while this process goes on with other work."""
    global _session
    if _session_open and _session is None:
        _session = _start_helper()
        if _session is not None:
            try:
                _session.submit(_warm_up, (tuple(modules),))
            except HelperDied as e:
                _helper_died(e)


def submit_ahead(key, fn: Callable, args: tuple) -> bool:
    """Inside a session, start fn(*args) in the helper now, for a later step to take with `take_ahead(key)`.

    For work of a step whose inputs are ready while other steps still run in this process on one core (the pose fit):
    the helper would idle meanwhile. Returns whether it was sent (not without a helper).
    """
    prestart()
    if _session is None:
        return False
    try:
        _session.submit(fn, args, key)
    except HelperDied as e:
        _helper_died(e)
        return False
    return True


def take_ahead(key):
    """The answer of the work sent ahead under `key` (waiting for it), or None when none was sent (or the helper
    died: the caller then does the work itself)."""
    if _session is None or key not in _session.pending:
        return None
    try:
        while _session.pending[0] != key:
            try:
                _session.result()  # older answers nobody asked for
            except HelperDied:
                raise
            except Exception:
                pass
        return _session.result()
    except HelperDied as e:
        _helper_died(e)
        return None


def _warm_up(modules: tuple[str, ...]) -> None:
    # What the per-frame steps use, so that the first segment does not wait for the imports.
    import cv2  # noqa: F401
    import mediapipe  # noqa: F401

    for m in modules:
        importlib.import_module(m)


def map_segments(fn: Callable, jobs: Sequence[tuple]) -> list:
    """[fn(*job) for job in jobs], the first job in this process and the second in the helper at the same time.

    `fn` must be a module-level function (it is sent by name); jobs and results are pickled. With one core, or more
    jobs than processes, the remaining jobs run here one after another.
    """
    prestart()
    helper = _session
    own = helper is None
    if own:
        helper = _start_helper()
    if len(jobs) < 2 or helper is None:
        return [fn(*job) for job in jobs]
    try:
        try:
            helper.drain()  # the warm-up's answer, or work sent ahead that was not asked for
            helper.submit(fn, tuple(jobs[1]))
        except HelperDied as e:
            _helper_died(e)
            return [fn(*job) for job in jobs]
        out = [fn(*jobs[0])]
        try:
            out.append(helper.result())
        except HelperDied as e:
            _helper_died(e)
            out.append(fn(*jobs[1]))
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
            answer = (True, fn(*args), None, "")
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the caller
            try:  # pickled apart, so that an exception that cannot be rebuilt there still sends its traceback
                exc_bytes = pickle.dumps(e, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:
                exc_bytes = None
            answer = (False, None, exc_bytes, traceback.format_exc())
        now = _self_cpu()
        try:
            payload = pickle.dumps((*answer, now - last), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # a result that does not pickle
            payload = pickle.dumps((False, None, None, traceback.format_exc(), now - last))
        last = now
        w.write(payload)
        w.flush()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))

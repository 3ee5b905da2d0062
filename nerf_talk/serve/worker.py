"""One studio job in its own process: `python -m nerf_talk.serve.worker JOB_DIR` (started by serve/jobs.py).

Reads JOB_DIR/job.json (written and checked by the server), runs the job through the Python API as the command line
would, writes JOB_DIR/progress.json while it runs (stage, the current progress bar, the last message) and
JOB_DIR/result.json at the end: {"state": "done", "outputs"}, {"state": "failed", "error": {"problem", "hint"}} (the
UserError the command line would print) or {"state": "cancelled", "kept"} after SIGTERM, which is handled as the
command line handles it (training saves a checkpoint, temporary files are removed).

Progress comes from the pipeline's own tqdm bars and log lines: the bars are tqdm objects created inside preprocess,
train and render; this process replaces tqdm's class before those modules are imported by one that also reports
each refresh, so that no stage needs a second progress channel.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

REPORT_EVERY_S = 0.5


class Reporter:
    """progress.json, rewritten at most every REPORT_EVERY_S (and at each new stage)."""

    def __init__(self, path: Path, stages: tuple[str, ...] = ()):
        self.path = path
        self.stages = stages  # known stage names in order (preprocess steps): the overall fraction counts them
        self.state = {"stage": None, "message": None, "bar": None, "fraction": None, "updated": None}
        self.lock = threading.Lock()
        self.last = 0.0

    def update(self, force: bool = False, **fields) -> None:
        from nerf_talk.serve.jobs import _write_json

        with self.lock:
            if "stage" in fields and fields["stage"] != self.state["stage"]:
                force = True
                self.state["bar"] = None
            self.state.update(fields)
            bar = self.state["bar"]
            within = bar["n"] / bar["total"] if bar and bar.get("total") else 0.0
            if self.stages and self.state["stage"] in self.stages:
                self.state["fraction"] = (self.stages.index(self.state["stage"]) + min(within, 1.0)) / len(self.stages)
            elif bar and bar.get("total"):
                self.state["fraction"] = min(within, 1.0)
            now = time.monotonic()
            if force or now - self.last >= REPORT_EVERY_S:
                self.last = now
                self.state["updated"] = time.time()
                _write_json(self.path, self.state)

    def say(self, message: str) -> None:
        """The API's `say` callback: printed to the job's log, as the command line prints it, and reported."""
        print(message, flush=True)
        self.note(message)

    def note(self, message: str) -> None:
        m = re.match(r"\s*\[([\w ]+)\]\s*(.*)", message)
        if m and m.group(1) != "fit":  # a preprocessing step: "[landmarks] ..."
            self.update(stage=m.group(1), message=m.group(2))
        else:  # the fit's own lines ("[fit] resuming training ..."); its stage comes from the training bar
            self.update(message=m.group(2) if m else message, force=True)


def report_bars(reporter: Reporter) -> None:
    """Make every tqdm bar created from now on report to `reporter` (see the module's docstring)."""
    import tqdm
    import tqdm.auto
    import tqdm.std

    class ReportedBar(tqdm.std.tqdm):
        def display(self, msg=None, pos=None):
            fields = {"bar": {"desc": self.desc, "n": self.n, "total": self.total,
                              "postfix": self.postfix if isinstance(self.postfix, str) else None}}
            if not reporter.stages and self.desc:  # (preprocess names its stages in its log lines instead)
                fields["stage"] = self.desc
            reporter.update(**fields)
            return super().display(msg, pos)

    tqdm.tqdm = tqdm.std.tqdm = tqdm.auto.tqdm = ReportedBar


class LogToReporter(logging.Handler):
    def __init__(self, reporter: Reporter):
        super().__init__(logging.INFO)
        self.reporter = reporter

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.reporter.note(record.getMessage())
        except Exception:
            self.handleError(record)


def run_job(job: dict, reporter: Reporter) -> dict:
    """Runs the job; returns its outputs. Paths come from the server, already checked and inside its data folder."""
    kind, s, p = job["kind"], job["settings"], job["paths"]
    if kind == "preprocess":
        from nerf_talk.api import preprocess
        from preprocess.config import PreprocessConfig

        ds = preprocess(p["video"], p["dataset"], PreprocessConfig(size=s["size"]))
        return {"dataset": s["dataset"], "frames": ds.n_frames, "fps": ds.fps}
    if kind == "fit":
        from nerf_talk.api import fit

        recipe = None if s["recipe"] == "auto" else s["recipe"]
        fit(None, p["avatar"], recipe, job.get("overrides") or None, dataset=p["dataset"], say=reporter.say)
        return {"avatar": s["name"]}
    if kind == "render":
        from nerf_talk.api import Avatar, load_speech, render_video

        reporter.update(stage="speech", message="reading the speech" if "speech" in p else "speaking the text")
        audio, rate = load_speech(p.get("speech"), s.get("text"), s.get("voice", "en-us"))
        avatar = Avatar.load(p["avatar"])
        reporter.update(stage="render", message=f"{len(audio) / rate:.1f} s of speech")
        res = render_video(avatar, audio, p["video"], sample_rate=rate, pose=s["pose"], size=s["size"])
        return {"frames": res.frames, "seconds": round(res.duration, 2), "fps_rendered": round(res.fps_rendered, 2)}
    if kind == "eval":
        from nerf_talk.eval import evaluate_avatar, summary

        reporter.update(stage="eval", message="scoring the held-out frames")
        res = evaluate_avatar(p["avatar"], p["dataset"], p["out"], say=reporter.say)
        return {"summary": summary(res)}
    raise ValueError(f"unknown job kind {kind}")


def main(argv: list[str]) -> int:
    from nerf_talk.errors import Interrupted, UserError
    from nerf_talk.serve.jobs import _write_json, read_json

    job_dir = Path(argv[0])
    job = read_json(job_dir / "job.json")
    stages = ()
    if job["kind"] == "preprocess":
        from preprocess.pipeline import STEP_MODULES as stages
    reporter = Reporter(job_dir / "progress.json", tuple(stages))
    report_bars(reporter)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("nerf_talk").addHandler(LogToReporter(reporter))

    def terminated(signum, frame):
        raise Interrupted(signum)

    signal.signal(signal.SIGTERM, terminated)
    reporter.update(stage="start", message=f"{job['kind']} started", force=True)
    try:
        result = {"state": "done", "outputs": run_job(job, reporter)}
    except UserError as e:
        result = {"state": "failed", "error": {"problem": e.problem, "hint": e.hint}}
    except KeyboardInterrupt as e:
        result = {"state": "cancelled", "kept": e.kept if isinstance(e, Interrupted) else ""}
    except Exception as e:
        traceback.print_exc()
        result = {"state": "failed", "error": {"problem": f"internal error: {type(e).__name__}: {e}",
                                               "hint": f"the job's log has the details: {job_dir / 'worker.log'}"}}
    _write_json(job_dir / "result.json", result)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

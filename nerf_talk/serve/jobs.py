"""The studio's data folder and job queue (`nerf-talk serve --data DIR`): uploads, datasets, avatars, renders and
evaluation reports under DIR, and long jobs (preprocess, fit, render, eval) run one at a time.

Layout of DIR (every name in it is made here, none comes from a client):
  uploads/u-HEX.EXT (+ .json)     an uploaded video or speech file, checked when it arrived; its .json holds the
                                  client's file name as a label only (shown, never used as a path)
  datasets/d-HEX/                 a dataset written by a preprocess job (the preprocessing report in report/)
  avatars/NAME.avatar (+ .work/)  an avatar written by a fit job (NAME chosen by the user: letters, digits, _ . -)
  renders/j-ID.mp4                a render job's video
  evals/j-ID/                     an eval job's report (eval.json, plots, side_by_side.mp4)
  jobs/j-ID/job.json              the job: kind, settings, resolved paths, state, error
  jobs/j-ID/progress.json         written by the job's worker process while it runs
  jobs/j-ID/result.json           written by the worker when it ends (done / failed with the UserError / cancelled)
  jobs/j-ID/worker.log            the worker's output

Each job runs in its own process (`python -m nerf_talk.serve.worker`), so that cancelling it is a SIGTERM, which the
pipeline already handles as the command line does (training saves a checkpoint, temporary files are removed), and so
that a crash in a job cannot take the server down. Jobs are persisted: after a reload the page lists them; after a
server restart a job that was queued or running is queued again and resumes as the command line resumes
(preprocessing skips finished steps, training continues from its last checkpoint).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import signal
import sys
import time
from pathlib import Path

from nerf_talk.errors import UserError

log = logging.getLogger("nerf_talk.serve")

KINDS = ("preprocess", "fit", "render", "eval")
ACTIVE_STATES = ("queued", "running", "cancelling")
JOB_ID = re.compile(r"j-[0-9a-f]{12}")
UPLOAD_ID = re.compile(r"u-[0-9a-f]{12}\.[a-z0-9]{1,10}")
DATASET_ID = re.compile(r"d-[0-9a-f]{12}")
AVATAR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}")  # no dots: NAME.avatar and NAME.avatar.work are ours
MAX_TEXT = 2000  # characters of text to speak in one render
CROP_SIZES = (128, 256, 384, 512)  # preprocess --size choices offered (the CLI takes 128..2048)
TERMINATE_WAIT_S = 60.0  # a cancelled worker's time to save (a training checkpoint) before it is killed
SUBDIRS = ("uploads", "datasets", "avatars", "renders", "evals", "jobs")


def _write_json(path: Path, obj: dict) -> None:
    """Atomic JSON write (the worker and the server read each other's files while they are being rewritten)."""
    from nerf_talk.media import write_atomic

    text = json.dumps(obj, indent=1)
    write_atomic(path, lambda p: p.write_text(text))


def read_json(path: Path) -> dict | None:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def _int_in(spec: dict, key: str, allowed, default=None):
    v = spec.get(key, default)
    if v is None and default is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v not in allowed:
        shown = f"{allowed[0]}..{allowed[-1]}" if isinstance(allowed, range) else ", ".join(map(str, allowed))
        raise UserError(f"bad {key} {str(v)[:20]!r}", f"one of {shown}")
    return v


class Studio:
    """The data folder and its job queue. Runs in the server's event loop: `start()` at startup, `stop()` at exit."""

    def __init__(self, root: Path, max_upload_bytes: int, fit_overrides: list[str] | None = None):
        self.root = Path(root).resolve()
        for d in SUBDIRS:
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.max_upload_bytes = max_upload_bytes
        self.fit_overrides = list(fit_overrides or [])  # --set items added to every fit (tests: short stages)
        self.jobs: dict[str, dict] = {}
        self.proc: asyncio.subprocess.Process | None = None
        self.running: str | None = None
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None
        self._load()

    # -- paths ------------------------------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def job_dir(self, job_id: str) -> Path:
        return self.path("jobs", job_id)

    def upload(self, upload_id, kind: str) -> Path:
        """The path of an upload of this kind, named by its id."""
        meta = read_json(self.path("uploads", f"{upload_id}.json")) if isinstance(upload_id, str) and \
            UPLOAD_ID.fullmatch(upload_id) else None
        if meta is None or meta.get("kind") != kind or not self.path("uploads", upload_id).is_file():
            raise UserError(f"no {kind} upload {str(upload_id)[:40]!r} on this server", f"upload a {kind} file first")
        return self.path("uploads", upload_id)

    def dataset(self, dataset_id) -> Path:
        p = self.path("datasets", dataset_id) if isinstance(dataset_id, str) and DATASET_ID.fullmatch(dataset_id) \
            else None
        if p is None or not (p / "report" / "index.html").is_file():
            raise UserError(f"no finished dataset {str(dataset_id)[:40]!r} on this server",
                            "preprocess a video first (and wait for it to finish)")
        return p

    def avatar(self, name) -> Path:
        p = self.path("avatars", f"{name}.avatar") if isinstance(name, str) and AVATAR_NAME.fullmatch(name) else None
        if p is None or not p.is_file():
            raise UserError(f"no avatar named {str(name)[:40]!r} on this server", "fit one first, or pick a listed one")
        return p

    # -- listings ---------------------------------------------------------------------------------------------
    def uploads(self) -> list[dict]:
        out = []
        for p in sorted(self.path("uploads").glob("u-*.json")):
            m = read_json(p)
            if m and self.path("uploads", m.get("id", "")).is_file():
                out.append(m)
        return sorted(out, key=lambda m: m.get("created", 0))

    def datasets(self) -> list[dict]:
        labels = {j["settings"]["dataset"]: j["settings"].get("label") for j in self.jobs.values()
                  if j["kind"] == "preprocess"}
        out = []
        for p in sorted(self.path("datasets").glob("d-*")):
            m = read_json(p / "manifest.json")
            if m is not None:
                out.append({"id": p.name, "done": (p / "report" / "index.html").is_file(), "fps": m.get("fps"),
                            "size": m.get("size"), "video": labels.get(p.name)})
        return out

    def avatars(self) -> list[dict]:
        out = []
        for p in sorted(self.path("avatars").glob("*.avatar")):
            if p.is_file() and AVATAR_NAME.fullmatch(p.stem):
                info = read_json(p.with_name(p.name + ".studio.json")) or {}
                out.append({"name": p.stem, "dataset": info.get("dataset"), "bytes": p.stat().st_size})
        return out

    def listing(self) -> list[dict]:
        """Every job, oldest first, each with its queue position when queued."""
        jobs = sorted(self.jobs.values(), key=lambda j: j["seq"])
        waiting = [j["id"] for j in jobs if j["state"] == "queued"]
        return [self.view(j, waiting) for j in jobs]

    def view(self, job: dict, waiting: list[str] | None = None) -> dict:
        """A job as the page sees it: its record, its progress, and what it has made so far."""
        if waiting is None:
            waiting = [j["id"] for j in sorted(self.jobs.values(), key=lambda j: j["seq"]) if j["state"] == "queued"]
        v = {k: job[k] for k in ("id", "kind", "state", "settings", "created", "started", "finished", "error",
                                 "note", "outputs") if k in job}
        if job["id"] in waiting:
            v["position"] = waiting.index(job["id"]) + (1 if self.running else 0)
        if job["state"] in ("running", "cancelling"):
            v["progress"] = read_json(self.job_dir(job["id"]) / "progress.json")
        v["files"] = self.made_files(job)
        if job["kind"] == "fit":
            v["curve"] = self.curve(job)
        return v

    def made_files(self, job: dict) -> dict:
        """URLs (under /studio/files/) of the pictures and videos the job has written so far."""
        paths = job["paths"]
        found = {}
        if job["kind"] == "preprocess":
            rep = Path(paths["dataset"]) / "report"
            for name in ("landmarks.jpg", "parsing.jpg", "torso.jpg", "background.jpg", "curves.png"):
                if (rep / name).is_file():
                    found[name.split(".")[0]] = self.url(rep / name)
        elif job["kind"] == "fit":  # the newest preview the training wrote (train/preview.jpg, or head/, torso/)
            previews = sorted(Path(paths["avatar"] + ".work").glob("*/preview.jpg"), key=lambda p: p.stat().st_mtime)
            if previews:
                found["preview"] = self.url(previews[-1]) + f"?t={previews[-1].stat().st_mtime_ns}"
        elif job["kind"] == "render":
            if Path(paths["video"]).is_file():
                found["video"] = self.url(Path(paths["video"]))
        elif job["kind"] == "eval":
            out = Path(paths["out"])
            for p in sorted(out.glob("*.png")) + sorted(out.glob("*.mp4")) + sorted(out.glob("eval.json")):
                found[p.name] = self.url(p)
        return found

    def url(self, p: Path) -> str:
        return "/studio/files/" + p.relative_to(self.root).as_posix()

    def curve(self, job: dict, max_points: int = 400) -> list[list[float]]:
        """[step, loss, psnr] of the fit's training runs so far (train_log.jsonl), at most max_points."""
        from nerf_talk.train.trainer import read_log

        work = Path(job["paths"]["avatar"] + ".work")
        recs = []
        for run_dir in sorted(p.parent for p in work.glob("*/train_log.jsonl")):
            recs += [r for r in read_log(run_dir / "train_log.jsonl") if isinstance(r.get("step"), int)]
        pts = [[r["step"], r.get("loss"), r.get("psnr")] for r in recs]
        stride = max(1, -(-len(pts) // max_points))
        return pts[::stride] + ([pts[-1]] if pts and (len(pts) - 1) % stride else [])

    # -- jobs ---------------------------------------------------------------------------------------------------
    def _load(self) -> None:
        """Read the jobs of an earlier server: one that was queued or running is queued again (it resumes)."""
        for p in self.path("jobs").glob("j-*/job.json"):
            job = read_json(p)
            if job is None or not JOB_ID.fullmatch(str(job.get("id"))) or job.get("kind") not in KINDS:
                log.warning("ignoring the unreadable job record %s", p)
                continue
            if job["state"] in ("running", "cancelling"):
                result = read_json(p.parent / "result.json")
                if result is not None:  # the worker finished while no server was watching
                    self._finish(job, result)
                elif job["state"] == "cancelling":
                    job.update(state="cancelled", finished=time.time())
                else:
                    job.update(state="queued", note="the server stopped while it ran: it resumes where it was")
                self._save(job)
            self.jobs[job["id"]] = job

    def _save(self, job: dict) -> None:
        _write_json(self.job_dir(job["id"]) / "job.json", job)

    def submit(self, spec) -> dict:
        """Check a job request from the page, queue it, and return its view. Bad requests raise UserError."""
        if not isinstance(spec, dict):
            raise UserError("a job request must be a JSON object")
        kind = spec.get("kind")
        if kind not in KINDS:
            raise UserError(f"unknown job kind {str(kind)[:40]!r}", f"known: {', '.join(KINDS)}")
        job_id = "j-" + secrets.token_hex(6)
        settings, paths = getattr(self, f"_check_{kind}")(spec, job_id)
        seq = max((j["seq"] for j in self.jobs.values()), default=0) + 1
        job = {"id": job_id, "kind": kind, "settings": settings, "paths": paths, "state": "queued", "seq": seq,
               "created": time.time(), "started": None, "finished": None, "error": None, "note": None,
               "outputs": None}
        self.job_dir(job_id).mkdir(parents=True)
        self._save(job)
        self.jobs[job_id] = job
        self.wake.set()
        return self.view(job)

    def _writing(self, path: str) -> bool:
        return any(j["state"] in ACTIVE_STATES and path in j["paths"].values() for j in self.jobs.values())

    def _check_preprocess(self, spec: dict, job_id: str):
        video = self.upload(spec.get("video"), "video")
        size = _int_in(spec, "size", CROP_SIZES, 512)
        ds = self.path("datasets", "d-" + video.name[2:14])  # one dataset per uploaded video
        label = (read_json(video.with_name(video.name + ".json")) or {}).get("label")
        if self._writing(str(ds)):
            raise UserError("this video is already being preprocessed", "wait for that job (see the job list)")
        if ds.exists():
            old = read_json(ds / "manifest.json") or {}
            if old.get("size") not in (None, size):
                raise UserError(f"this video was preprocessed at {old.get('size')} px",
                                f"choose {old.get('size')} px (or upload it again for another size)")
        return {"video": spec["video"], "label": label, "size": size, "dataset": ds.name}, \
            {"video": str(video), "dataset": str(ds)}

    def _check_fit(self, spec: dict, job_id: str):
        ds = self.dataset(spec.get("dataset"))
        recipe = spec.get("recipe")
        if recipe not in fit_recipes():
            raise UserError(f"unknown recipe {str(recipe)[:40]!r}", f"one of {', '.join(fit_recipes())}")
        name = spec.get("name")
        if not isinstance(name, str) or not AVATAR_NAME.fullmatch(name):
            raise UserError(f"bad avatar name {str(name)[:40]!r}",
                            "1-64 letters, digits, _ or -, starting with a letter or digit")
        out = self.path("avatars", f"{name}.avatar")
        if out.exists():
            raise UserError(f"an avatar named {name!r} exists", "choose another name")
        if self._writing(str(out)):
            raise UserError(f"a job is already fitting {name!r}", "choose another name, or wait for it")
        return {"dataset": ds.name, "recipe": recipe, "name": name}, \
            {"dataset": str(ds), "avatar": str(out)}

    def _check_render(self, spec: dict, job_id: str):
        from nerf_talk.api import RENDER_HEIGHTS

        avatar = self.avatar(spec.get("avatar"))
        speech, text = spec.get("speech"), spec.get("text")
        if (speech is None) == (text is None):
            raise UserError("give the speech as an uploaded audio file or as text (one of them)")
        settings = {"avatar": spec["avatar"]}
        paths = {"avatar": str(avatar), "video": str(self.path("renders", f"{job_id}.mp4"))}
        if speech is not None:
            paths["speech"] = str(self.upload(speech, "audio"))
            settings["speech"] = speech
            settings["label"] = (read_json(Path(paths["speech"] + ".json")) or {}).get("label")
        else:
            if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
                raise UserError(f"the text must be 1 to {MAX_TEXT} characters", "type what the avatar should say")
            voice = spec.get("voice", "en-us")
            if voice not in {v for v, _ in voice_list()}:
                raise UserError(f"espeak-ng has no voice {str(voice)[:40]!r}", "pick one of the listed voices")
            settings.update(text=text, voice=voice)
        pose = spec.get("pose", "generate")
        if pose not in ("generate", "still"):
            raise UserError(f"bad pose {str(pose)[:20]!r}", "generate (moving head) or still")
        lo, hi = RENDER_HEIGHTS
        size = spec.get("size")
        if size is not None:
            _int_in(spec, "size", range(lo, hi + 1, 2))
        settings.update(pose=pose, size=size)
        return settings, paths

    def _check_eval(self, spec: dict, job_id: str):
        avatar = self.avatar(spec.get("avatar"))
        ds = self.dataset(spec.get("dataset"))
        return {"avatar": spec["avatar"], "dataset": ds.name}, \
            {"avatar": str(avatar), "dataset": str(ds), "out": str(self.path("evals", job_id))}

    def cancel(self, job_id: str) -> dict:
        job = self.jobs.get(job_id)
        if job is None:
            raise UserError(f"no job {job_id[:40]!r}")
        if job["state"] == "queued":
            job.update(state="cancelled", finished=time.time())
            self._save(job)
        elif job["state"] == "running" and self.proc is not None and self.running == job_id:
            job["state"] = "cancelling"
            self._save(job)
            self.proc.send_signal(signal.SIGTERM)  # the worker stops as the command line does on SIGTERM
        else:
            raise UserError(f"job {job_id} is {job['state']}: nothing to cancel")
        return self.view(job)

    # -- the queue ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run_queue())

    async def stop(self) -> None:
        """At server exit: the running worker is stopped as on Ctrl-C (it saves what it can) and its job stays
        queued, to resume at the next start."""
        if self.task is not None:
            self.task.cancel()
        proc, job_id = self.proc, self.running
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), TERMINATE_WAIT_S)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        if job_id is not None and self.jobs[job_id]["state"] == "running":
            job = self.jobs[job_id]
            job.update(state="queued", note="the server stopped while it ran: it resumes where it was")
            (self.job_dir(job_id) / "result.json").unlink(missing_ok=True)
            self._save(job)
        if self.task is not None:
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass

    def _next(self) -> dict | None:
        queued = [j for j in self.jobs.values() if j["state"] == "queued"]
        return min(queued, key=lambda j: j["seq"]) if queued else None

    async def _run_queue(self) -> None:
        while True:
            job = self._next()
            if job is None:
                self.wake.clear()
                await self.wake.wait()
                continue
            try:
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a job that cannot even start fails alone; the queue goes on
                log.exception("job %s could not run", job["id"])
                self._finish(job, {"state": "failed", "error": {"problem": f"internal error: {type(e).__name__}: {e}",
                                                                "hint": "see the server's log"}})
                self._save(job)

    async def _run(self, job: dict) -> None:
        d = self.job_dir(job["id"])
        (d / "result.json").unlink(missing_ok=True)
        (d / "progress.json").unlink(missing_ok=True)
        job.update(state="running", started=time.time())
        if job["kind"] == "fit":
            job["overrides"] = self.fit_overrides
        self._save(job)
        self.running = job["id"]
        with open(d / "worker.log", "ab") as logf:
            # Its own session: Ctrl-C in the server's terminal reaches the server, which then stops the worker
            # itself (saving its state), instead of both receiving SIGINT at once.
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "nerf_talk.serve.worker", str(d), stdout=logf, stderr=logf,
                stdin=asyncio.subprocess.DEVNULL, start_new_session=True, env=os.environ.copy())
            try:
                code = await self.proc.wait()
            finally:
                self.running = None
        self.proc = None
        result = read_json(d / "result.json")
        if result is None:
            result = {"state": "failed", "error": {"problem": f"the job's process ended with status {code}",
                                                   "hint": f"its log: {d / 'worker.log'}"}}
        if job["state"] == "cancelling" and result["state"] != "done":
            result["state"] = "cancelled"
        self._finish(job, result)
        self._save(job)

    def _finish(self, job: dict, result: dict) -> None:
        job.update(state=result["state"], finished=time.time(), error=result.get("error"),
                   outputs=result.get("outputs"), note=result.get("kept") or job.get("note"))
        if job["kind"] == "fit" and result["state"] == "done":
            _write_json(Path(job["paths"]["avatar"] + ".studio.json"), {"dataset": job["settings"]["dataset"]})

    # -- uploads ------------------------------------------------------------------------------------------------
    async def receive_upload(self, kind: str, content, label: str, length: int | None) -> dict:
        """Store an upload (an aiohttp StreamReader) under a generated name, within the size limit, then check it as
        the command line checks its input; a bad file is removed and its UserError raised."""
        if kind not in ("video", "audio"):
            raise UserError(f"unknown upload kind {kind[:20]!r}", "video or audio")
        limit = self.max_upload_bytes
        if length is not None and length > limit:
            raise UserError(f"the file is {length / 2**20:.1f} MB, over the {limit / 2**20:.0f} MB limit",
                            "trim or re-encode it (1-5 minutes of 720p H.264 is well under the limit)")
        label = re.sub(r"[^\w .\-()]", "_", label)[:80] or kind
        token = secrets.token_hex(6)
        part = self.path("uploads", f".u-{token}.part")
        n = 0
        try:
            with open(part, "wb") as f:
                async for chunk in content.iter_chunked(1 << 20):
                    n += len(chunk)
                    if n > limit:
                        raise UserError(f"the file is over the {limit / 2**20:.0f} MB limit",
                                        "trim or re-encode it (1-5 minutes of 720p H.264 is well under the limit)")
                    f.write(chunk)
            if n == 0:
                raise UserError("the upload is empty", "choose a file")
            info = await asyncio.get_running_loop().run_in_executor(None, check_upload, part, kind)
        except UserError as e:
            part.unlink(missing_ok=True)
            raise UserError(e.problem.replace(str(part), label), e.hint) from None
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        upload_id = f"u-{token}.{info.pop('ext')}"
        meta = {"id": upload_id, "kind": kind, "label": label, "bytes": n, "created": time.time(), **info}
        os.replace(part, self.path("uploads", upload_id))
        _write_json(self.path("uploads", f"{upload_id}.json"), meta)
        return meta


def check_upload(path: Path, kind: str) -> dict:
    """What the command line would refuse about this file as `preprocess`'s video or `render --audio`'s speech,
    checked now: its UserError (problem and hint) is the command line's. Returns its duration and extension."""
    import av

    from nerf_talk import media

    if kind == "video":
        from preprocess.config import PreprocessConfig
        from preprocess.ingest import check_source

        info = check_source(path, PreprocessConfig())
        duration = info.duration
    else:
        duration = len(media.read_audio(path, 16000)) / 16000
        if duration < 0.3:
            raise UserError(f"{path} holds {duration:.2f} s of audio: too short", "give a file that holds speech")
    with av.open(str(path)) as c:
        ext = c.format.name.split(",")[0]
    return {"duration": round(duration, 2), "ext": ext if re.fullmatch(r"[a-z0-9]{1,10}", ext) else "bin"}


def fit_recipes() -> list[str]:
    """The recipes a fit may name: "auto" (this machine's default, as `nerf-talk fit` without --recipe) and every
    recipe of recipes/ that trains an avatar alone (not the motion model's, not torso.toml, which continues a head)."""
    from nerf_talk.recipes import RECIPES

    return ["auto"] + sorted(p.stem for p in RECIPES.glob("*.toml") if p.stem not in ("audio2motion", "torso"))


_VOICES: list[tuple[str, str]] = []


def voice_list() -> list[tuple[str, str]]:
    if not _VOICES:
        from nerf_talk.speech import voices

        _VOICES.extend(voices())
    return _VOICES

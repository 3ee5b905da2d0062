"""The studio's HTTP routes (`nerf-talk serve --data DIR`): uploads, jobs and the files jobs made.

  GET  /studio                      the page (static/studio.html, studio.js)
  GET  /api/studio                  what the page offers: uploads, datasets, avatars, recipes, voices, limits
  POST /api/uploads?kind=video|audio&name=LABEL   the file as the raw request body (no multipart); checked as the
                                    command line checks its input; 400 {"problem", "hint"} when refused
  GET  /api/jobs                    every job, oldest first, with state, queue position, progress, files
  POST /api/jobs                    {"kind": "preprocess"|"fit"|"render"|"eval", ...} (docs/STUDIO.md)
  GET  /api/jobs/{id}               one job
  POST /api/jobs/{id}/cancel        a queued job is dropped; a running one is stopped as by Ctrl-C (it keeps what the
                                    command line keeps: finished preprocessing steps, the last training checkpoint)
  GET  /studio/files/{path}         a picture, video or report a job wrote (datasets/*/report, renders, evals)

Every POST must come from the server's own page (Origin, as for the WebSocket) or from a program that sends no
Origin (app.check_host); every route keeps the app's Host check and security headers.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

from nerf_talk.errors import UserError
from nerf_talk.serve.jobs import CROP_SIZES, JOB_ID, MAX_TEXT, Studio, fit_recipes, voice_list

STUDIO = web.AppKey("studio", Studio)
STATIC = Path(__file__).resolve().parent / "static"
# What /studio/files/ serves: a job's pictures, videos and reports, nothing else of the data folder (not uploads,
# not avatars, not training files).
SERVED = re.compile(r"(datasets/d-[0-9a-f]{12}/report/[\w.\-]+\.(jpg|png|html)"
                    r"|avatars/[A-Za-z0-9][A-Za-z0-9_\-]{0,63}\.avatar\.work/\w+/preview\.jpg"
                    r"|renders/j-[0-9a-f]{12}\.mp4"
                    r"|evals/j-[0-9a-f]{12}/[\w.\-]+\.(png|jpg|mp4|json))")


def refused(e: UserError, status: int = 400) -> web.Response:
    return web.json_response({"problem": e.problem, "hint": e.hint}, status=status)


async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "studio.html")


async def info(request: web.Request) -> web.Response:
    st: Studio = request.app[STUDIO]
    return web.json_response({
        "uploads": st.uploads(), "datasets": st.datasets(), "avatars": st.avatars(), "recipes": fit_recipes(),
        "voices": [{"id": v, "name": n} for v, n in voice_list()], "crop_sizes": list(CROP_SIZES),
        "limits": {"max_upload_bytes": st.max_upload_bytes, "max_text": MAX_TEXT}})


async def upload(request: web.Request) -> web.Response:
    st: Studio = request.app[STUDIO]
    try:
        meta = await st.receive_upload(request.query.get("kind", ""), request.content,
                                       request.query.get("name", ""), request.content_length)
    except UserError as e:
        # Over the limit: answered before the rest of the body is read; the connection is closed with it.
        return refused(e, 413 if "limit" in e.problem else 400)
    return web.json_response(meta)


async def jobs(request: web.Request) -> web.Response:
    return web.json_response({"jobs": request.app[STUDIO].listing()})


async def submit(request: web.Request) -> web.Response:
    try:
        spec = await request.json()
    except ValueError:
        return refused(UserError("the request body is not JSON", 'send e.g. {"kind": "render", ...}'))
    try:
        return web.json_response(request.app[STUDIO].submit(spec))
    except UserError as e:
        return refused(e)


def _job_id(request: web.Request) -> str:
    job_id = request.match_info["id"]
    if not JOB_ID.fullmatch(job_id) or job_id not in request.app[STUDIO].jobs:
        raise web.HTTPNotFound(text=f"no job {job_id[:40]!r}\n")
    return job_id


async def job(request: web.Request) -> web.Response:
    st: Studio = request.app[STUDIO]
    return web.json_response(st.view(st.jobs[_job_id(request)]))


async def cancel(request: web.Request) -> web.Response:
    try:
        return web.json_response(request.app[STUDIO].cancel(_job_id(request)))
    except UserError as e:
        return refused(e, 409)


async def files(request: web.Request) -> web.FileResponse:
    st: Studio = request.app[STUDIO]
    rel = request.match_info["path"]
    p = (st.root / rel).resolve()
    if not SERVED.fullmatch(rel) or not p.is_relative_to(st.root) or not p.is_file():
        raise web.HTTPNotFound(text="not found\n")
    return web.FileResponse(p)


def add_routes(app: web.Application, studio: Studio) -> None:
    app[STUDIO] = studio
    app.router.add_get("/studio", page)
    app.router.add_get("/api/studio", info)
    app.router.add_post("/api/uploads", upload)
    app.router.add_get("/api/jobs", jobs)
    app.router.add_post("/api/jobs", submit)
    app.router.add_get("/api/jobs/{id}", job)
    app.router.add_post("/api/jobs/{id}/cancel", cancel)
    app.router.add_get("/studio/files/{path:.+}", files)

    async def start(app):
        studio.start()

    async def stop(app):
        await studio.stop()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)

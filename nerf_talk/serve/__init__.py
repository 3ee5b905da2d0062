"""`nerf-talk serve`: avatars speaking live in a browser (aiohttp server, WebSocket protocol, a small web page).
See nerf_talk/serve/app.py and docs/LIVE.md."""

from nerf_talk.serve.app import ServeConfig, make_app, run, start_in_thread

__all__ = ["ServeConfig", "make_app", "run", "start_in_thread"]

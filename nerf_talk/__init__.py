"""nerf_talk: photoreal talking-portrait avatars from a short video, driven by any speech."""

__version__ = "0.1.0"

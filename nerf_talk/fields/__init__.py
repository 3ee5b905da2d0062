"""Neural fields of an avatar: the head (3D, in the head frame), the torso (2D, image plane), the background plate."""

from .background import Background
from .head import HeadCodes, HeadField, eye_region, head_box, mouth_region
from .torso import TorsoField, pose_features

__all__ = ["Background", "HeadCodes", "HeadField", "TorsoField", "eye_region", "head_box", "mouth_region", "pose_features"]

"""The drive: what each frame of new speech shows (head pose, lower-face motion, eyes), offline or as a stream.

    person = Person.from_avatar(avatar.parts)                 # built once: pose track, blink rate and profile, eyes
    drive = person.drive(pred["lower_face_motion"], pred["speech"], pose="generate")   # offline, whole utterance
    poses, blinks = person.pose_stream("generate"), person.blink_stream()              # live, frame by frame

Audio -> motion is predict.py (offline) and stream.py (live); head pose and blinks are generate.py's generators fed
with the person's own recordings; this module puts them together. Rendering (render/) turns a drive into frames:
`motion_coefficients` gives the avatar's own coefficients of the motion and `eye_vector` the eye code it was
trained with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nerf_talk.motion import generate as gen

POSE_MODES = ("generate", "still")


@dataclass
class Drive:
    """What N frames show: head pose, lower-face motion, eyes; and where there is speech."""

    poses: np.ndarray  # [N, 4, 4] camera-to-head
    motion: np.ndarray  # [N, K, 3] lower-face motion in the person's space (0 = their neutral face)
    eyes: np.ndarray  # [N, 3] left openness, right openness, blink
    speech: np.ndarray  # [N] bool voice activity

    def __len__(self) -> int:
        return len(self.poses)


def eye_vector(eyes_open: np.ndarray, blink: np.ndarray) -> np.ndarray:
    """[N, 3] the eye code of N frames (left openness, right openness, blink): the person's open-eye openness
    [2] closed by the blink track [N] (0 open .. 1 closed), as the head field was trained on (eye_openness, blink)."""
    b = np.asarray(blink, np.float32)
    eyes_open = np.asarray(eyes_open, np.float32)
    return np.stack([eyes_open[0] * (1 - b), eyes_open[1] * (1 - b), b], 1).astype(np.float32)


def motion_coefficients(model, motion: np.ndarray) -> np.ndarray:
    """[N, K, 3] lower-face motion -> [N, C] the avatar's own basis coefficients (as training computed them)."""
    from nerf_talk.motion.basis import PersonalMotionBasis

    return PersonalMotionBasis.of_model(model).coefficients(motion).numpy()


@dataclass(frozen=True)
class Person:
    """What the drive needs of one person, from their own recording: built once (from_avatar), used per utterance."""

    fps: float
    pose_track: np.ndarray  # [N, 4, 4] their camera-to-head poses
    pose_speech: np.ndarray  # [N] bool their voice activity on those frames
    blink_rate_per_min: float
    blink_profile: np.ndarray  # [L] their mean blink curve
    eyes_open: np.ndarray  # [2] their typical open-eye openness (left, right)

    @classmethod
    def from_avatar(cls, parts) -> "Person":
        """From an avatar file's parts (avatar.AvatarParts)."""
        t = parts.tensors
        return cls(float(parts.fps), t["pose_track"].numpy(), t["pose_speech"].numpy().astype(bool),
                   float(parts.meta["blink_rate_per_min"]), t["blink_profile"].numpy(), t["eyes_open"].numpy())

    def still_pose(self) -> np.ndarray:
        """[4, 4] their usual pose."""
        return gen.still_pose(self.pose_track)

    def poses(self, speech: np.ndarray, pose: str | np.ndarray = "generate", seed: int = 0) -> np.ndarray:
        """[N, 4, 4] head poses of N frames with voice activity `speech` [N]. pose: "generate" (from their track),
        "still" (their usual pose), or camera-to-head poses [M, 4, 4] replayed to length."""
        n = len(speech)
        if isinstance(pose, np.ndarray):
            if pose.ndim != 3 or pose.shape[1:] != (4, 4) or len(pose) == 0:
                raise ValueError(f"pose must be [M, 4, 4], got {pose.shape}")
            return np.asarray(gen.replay_pose(pose, n), np.float32)
        self._check_mode(pose)
        if pose == "still":
            return np.repeat(self.still_pose()[None], n, 0)
        return gen.generate_pose(self.pose_track, self.pose_speech, speech, self.fps, seed=seed)

    def pose_stream(self, pose: str = "generate", seed: int = 0) -> gen.PoseStream:
        """The live counterpart of poses(): a PoseStream ("still": one that holds their usual pose)."""
        self._check_mode(pose)
        if pose == "still":
            return gen.PoseStream(self.still_pose()[None], np.zeros(1, bool), self.fps, seed)
        return gen.PoseStream(self.pose_track, self.pose_speech, self.fps, seed)

    def eyes(self, speech: np.ndarray, blinks: bool = True, seed: int = 0) -> np.ndarray:
        """[N, 3] eye codes of N frames: blinks generated at their rate with their profile (or none)."""
        n = len(speech)
        b = gen.generate_blinks(n, self.fps, self.blink_rate_per_min, speech, self.blink_profile, seed) \
            if blinks else np.zeros(n, np.float32)
        return eye_vector(self.eyes_open, b)

    def blink_stream(self, seed: int = 0) -> gen.BlinkStream:
        """The live counterpart of eyes()' blinks (turn its output into eye codes with eye_vector)."""
        return gen.BlinkStream(self.fps, self.blink_rate_per_min, self.blink_profile, seed)

    def drive(self, motion: np.ndarray, speech: np.ndarray, pose: str | np.ndarray = "generate",
              blinks: bool = True, seed: int = 0) -> Drive:
        """The drive of N frames from their motion [N, K, 3] and voice activity [N] (from predict_motion). The
        generic model's own blink probability is not used: their rate and profile supersede it."""
        return Drive(np.asarray(self.poses(speech, pose, seed), np.float32), np.asarray(motion, np.float32),
                     self.eyes(speech, blinks, seed), np.asarray(speech, bool))

    @staticmethod
    def _check_mode(pose) -> None:
        if pose not in POSE_MODES:
            raise ValueError(f"pose must be one of {POSE_MODES} or an [M, 4, 4] array, is {pose!r}")

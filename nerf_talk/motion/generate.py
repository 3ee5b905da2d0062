"""Head pose and blinks for new speech, from the person's own recording: natural, not a frozen replay.

Head pose (`generate_pose`): the person's real pose track is cut into overlapping segments; for each stretch of the
new audio the segment is chosen whose speech activity (the share of speaking frames around each frame, from the
clip's own audio) best matches the new audio's, among those that also start close to where the head currently is,
with randomness among the near-best so that a long answer does not loop one segment; consecutive segments are joined
by a raised-cosine cross-fade in (rotation vector, translation) space. A nodding speaker keeps nodding when talking
and calms down in pauses, because the segments come from the matching state. `replay_pose` is the plain replay
(`--pose-from VIDEO`: that video's track, retargeted onto the person by `retarget_poses`, ping-ponged to length);
`still_pose` holds the person's usual pose.

Blinks (`generate_blinks`): blink times are drawn as a renewal process at the person's own rate (face_motion's
blink_rate_per_min), with gamma-distributed intervals (shape 3: blinks are more regular than a Poisson process,
never closer than MIN_BLINK_GAP_S), and each is moved to a speech pause starting within PAUSE_SNAP_S with
probability PAUSE_SNAP_P (people blink at phrase boundaries). Each blink has the person's own mean blink profile
(closing-opening curve averaged over their detected blinks) or a 250 ms default.

Live (`PoseStream`, `BlinkStream`): the same segments, cross-fades, renewal process and profile, but causal: each
segment is chosen when the previous one is about to end from the speech of the past second (the offline generator
matches the next 2.4 s), and a blink due soon is moved to a pause as the pause begins. The whole drive (which
generator, the person's track and rates) is put together in drive.py.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
from scipy.ndimage import uniform_filter1d
from scipy.spatial.transform import Rotation

SEGMENT_S = 2.4
CROSSFADE_S = 0.6
MIN_BLINK_GAP_S = 0.8
PAUSE_SNAP_S = 0.6
PAUSE_SNAP_P = 0.6
GAMMA_SHAPE = 3.0
DEFAULT_BLINK = np.array([0.3, 0.8, 1.0, 0.9, 0.6, 0.3, 0.1], np.float32)  # at 25 fps: ~280 ms


def poses_to_params(poses: np.ndarray) -> np.ndarray:
    """[N, 4, 4] camera-to-head -> [N, 6] (rotation vector, translation)."""
    poses = np.asarray(poses, np.float64)
    return np.concatenate([Rotation.from_matrix(poses[:, :3, :3]).as_rotvec(), poses[:, :3, 3]], 1)


def params_to_poses(params: np.ndarray) -> np.ndarray:
    """[N, 6] -> [N, 4, 4] float32."""
    out = np.tile(np.eye(4), (len(params), 1, 1))
    out[:, :3, :3] = Rotation.from_rotvec(params[:, :3]).as_matrix()
    out[:, :3, 3] = params[:, 3:]
    return out.astype(np.float32)


def activity(speech: np.ndarray, fps: float) -> np.ndarray:
    """[N] share of speaking frames in a 1 s window around each frame."""
    return uniform_filter1d(np.asarray(speech, np.float64), max(1, int(fps)), mode="nearest")


def replay_pose(poses: np.ndarray, n: int) -> np.ndarray:
    """The track played forwards then backwards (no jump at the end), to length n: [n, 4, 4]."""
    poses = np.asarray(poses)
    cycle = np.concatenate([np.arange(len(poses)), np.arange(len(poses) - 2, 0, -1)]) if len(poses) > 1 else [0]
    return poses[np.asarray(cycle)[np.arange(n) % len(cycle)]]


def pick_segment(rng, cost: np.ndarray, src: np.ndarray, starts: np.ndarray, spread: np.ndarray,
                 current: np.ndarray, prev_start: int | None, seg: int) -> int:
    """The start frame of the next segment of the track: speech-activity mismatch `cost` [S] (one per start) and
    the distance from the current pose, each scaled by its spread; never the stretch just used; a random pick among
    the three best keeps long outputs varied."""
    join = np.sum(((src[starts] - current) / spread) ** 2, 1) / 6.0
    total = cost / (cost.std() + 1e-6) + 0.5 * join / (join.std() + 1e-6)
    if prev_start is not None:
        total[np.abs(starts - prev_start) < seg] = np.inf
    if not np.isfinite(total).any():
        total = np.zeros(len(starts))
    best = np.argsort(total)[:3]
    return int(starts[rng.choice(best[np.isfinite(total[best])])])


def generate_pose(poses: np.ndarray, speech_src: np.ndarray, speech_new: np.ndarray, fps: float,
                  seed: int = 0) -> np.ndarray:
    """[M, 4, 4] camera-to-head poses for new audio with voice activity speech_new [M], from the person's track
    poses [N, 4, 4] with its voice activity speech_src [N] (all at `fps`)."""
    rng = np.random.default_rng(seed)
    src = poses_to_params(poses)  # [N, 6]
    n_src, m = len(src), len(speech_new)
    seg = min(int(SEGMENT_S * fps), n_src)
    fade = min(int(CROSSFADE_S * fps), seg // 2)
    if n_src < 2 or seg <= fade:
        return replay_pose(poses, m)
    act_src, act_new = activity(speech_src, fps), activity(speech_new, fps)
    starts = np.arange(0, n_src - seg + 1, max(1, fade // 2))
    # Scale of "close": the track's typical frame-to-frame-second change, so the join cost is unit-free.
    spread = np.std(src, 0) + 1e-6
    out = np.zeros((m, 6))
    step = seg - fade
    pos, prev_start = 0, None
    current = src[rng.integers(n_src)]
    while pos < m:
        want = act_new[pos:pos + seg]
        cost = np.array([np.mean((act_src[s:s + len(want)] - want) ** 2) for s in starts])
        s = pick_segment(rng, cost, src, starts, spread, current, prev_start, seg)
        piece = src[s:s + seg].copy()  # [seg, 6]
        if pos > 0:
            # Start from where the head is, and let that offset fade over the segment, so that the head neither
            # jumps nor drifts away from its usual place.
            piece += (current - src[s]) * np.linspace(1.0, 0.0, seg)[:, None]
        n = min(seg, m - pos)
        if pos == 0:
            out[:n] = piece[:n]
        else:
            w = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)  # raised cosine 0 -> 1
            k = min(fade, n)
            out[pos:pos + k] = out[pos:pos + k] * (1 - w[:k, None]) + piece[:k] * w[:k, None]
            out[pos + k:pos + n] = piece[k:n]
        current = out[min(pos + step, m - 1)]
        prev_start = s
        pos += step
    return params_to_poses(out)


def blink_profile(blink: np.ndarray, fps: float) -> np.ndarray:
    """The person's mean blink curve [L] (values in [0, 1]) from their blink track [N], or the default."""
    b = np.asarray(blink, np.float64)
    peaks = [i for i in range(2, len(b) - 2) if b[i] > 0.6 and b[i] == b[i - 2:i + 3].max()]
    half = max(2, int(round(0.15 * fps)))
    curves = [b[i - half:i + half + 1] for i in peaks if half <= i < len(b) - half]
    if len(curves) < 3:
        t = np.linspace(0, len(DEFAULT_BLINK) - 1, max(3, int(round(len(DEFAULT_BLINK) * fps / 25))))
        return np.interp(t, np.arange(len(DEFAULT_BLINK)), DEFAULT_BLINK).astype(np.float32)
    return np.clip(np.mean(curves, 0), 0, 1).astype(np.float32)


def generate_blinks(n: int, fps: float, rate_per_min: float, speech: np.ndarray | None = None,
                    profile: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """[n] blink track in [0, 1] (1 = closed) at the person's rate; see the module docstring."""
    rng = np.random.default_rng(seed)
    profile = DEFAULT_BLINK if profile is None else np.asarray(profile)
    out = np.zeros(n, np.float32)
    rate = float(np.clip(rate_per_min, 2.0, 60.0))
    mean_gap = 60.0 / rate
    pauses = np.zeros(0, int)
    if speech is not None:
        sp = np.asarray(speech, bool)
        pauses = np.nonzero(sp[:-1] & ~sp[1:])[0] + 1  # first silent frame after speech
    t = rng.uniform(0.2, 1.0) * mean_gap
    last = -np.inf
    while t * fps < n:
        frame = int(t * fps)
        if len(pauses) and rng.random() < PAUSE_SNAP_P:
            near = pauses[np.abs(pauses - frame) <= PAUSE_SNAP_S * fps]
            if len(near):
                frame = int(near[np.argmin(np.abs(near - frame))])
        if (frame - last) / fps >= MIN_BLINK_GAP_S:
            seg = out[frame:frame + len(profile)]
            np.maximum(seg, profile[:len(seg)], out=seg)
            last = frame
        t = max(t, frame / fps) + max(MIN_BLINK_GAP_S, rng.gamma(GAMMA_SHAPE, mean_gap / GAMMA_SHAPE))
    return out


def still_pose(track: np.ndarray) -> np.ndarray:
    """[4, 4] the median pose of a track (rotation vector and translation medians): the person's usual position."""
    return params_to_poses(np.median(poses_to_params(track), 0, keepdims=True))[0]


def retarget_poses(source: np.ndarray, track: np.ndarray) -> np.ndarray:
    """Another recording's head motion [M, 4, 4] moved onto this person: each source pose's rotation and translation
    relative to the source's median pose, applied to this person's median pose (so their framing is kept)."""
    src = poses_to_params(source)
    med_src = np.median(src, 0)
    home = still_pose(track).astype(np.float64)
    r_med_inv = Rotation.from_rotvec(med_src[:3]).inv()
    out = np.tile(np.eye(4), (len(src), 1, 1))
    for i, p in enumerate(src):
        delta = Rotation.from_rotvec(p[:3]) * r_med_inv  # the source's turn away from its usual pose
        out[i, :3, :3] = (delta * Rotation.from_matrix(home[:3, :3])).as_matrix()
        out[i, :3, 3] = home[:3, 3] + (p[3:] - med_src[3:])
    return out.astype(np.float32)


# -- causal generators (the live stream): each choice made from what has been heard, frame by frame --------------
class PoseStream:
    """Head poses generated frame by frame from the person's track (generate_pose's segments and
    cross-fades), each segment chosen when the previous one is about to end, from the speech activity of the
    last second: the causal version of the offline generator, which matches segments to the next 2.4 s."""

    def __init__(self, track: np.ndarray, track_speech: np.ndarray, fps: float, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.src = poses_to_params(track)
        n_src = len(self.src)
        self.seg = min(int(SEGMENT_S * fps), n_src)
        self.fade = min(int(CROSSFADE_S * fps), self.seg // 2)
        self.still = n_src < 2 or self.seg <= self.fade
        self.window = max(1, int(fps))
        self.recent: deque = deque(maxlen=self.window)  # speech of the last second
        if self.still:
            self.pose0 = params_to_poses(self.src[:1])[0] if n_src else np.eye(4, dtype=np.float32)
            return
        act = activity(np.asarray(track_speech, bool), fps)
        self.starts = np.arange(0, n_src - self.seg + 1, max(1, self.fade // 2))
        self.seg_act = np.array([act[s:s + self.seg].mean() for s in self.starts])
        self.spread = np.std(self.src, 0) + 1e-6
        s = int(self.starts[self.rng.integers(len(self.starts))])
        self.plan = self.src[s:s + self.seg].copy()  # upcoming params, plan[0] = the next frame
        self.prev_start = s

    def _extend(self) -> None:
        want = float(np.mean(self.recent)) if self.recent else 0.0
        current = self.plan[0]
        s = pick_segment(self.rng, (self.seg_act - want) ** 2, self.src, self.starts, self.spread, current,
                         self.prev_start, self.seg)
        piece = self.src[s:s + self.seg].copy()
        # From where the head is, the offset fading over the segment (no jump, no drift), then a raised-cosine
        # cross-fade over what is left of the current plan.
        piece += (current - self.src[s]) * np.linspace(1.0, 0.0, self.seg)[:, None]
        k = len(self.plan)
        w = 0.5 - 0.5 * np.cos(np.pi * np.arange(k) / max(k, 1))
        piece[:k] = self.plan * (1 - w[:, None]) + piece[:k] * w[:, None]
        self.plan, self.prev_start = piece, s

    def step(self, speech: np.ndarray) -> np.ndarray:
        """[M] speech of the next M frames -> [M, 4, 4] their camera-to-head poses."""
        if self.still:
            return np.repeat(self.pose0[None], len(speech), 0)
        out = np.zeros((len(speech), 6))
        for i, s in enumerate(np.asarray(speech, bool)):
            if len(self.plan) <= self.fade:
                self._extend()
            out[i] = self.plan[0]
            self.plan = self.plan[1:]
            self.recent.append(float(s))
        return params_to_poses(out)


class BlinkStream:
    """Blinks at the person's rate (generate_blinks' renewal process and profile), frame by frame; a blink
    due within PAUSE_SNAP_S is moved to a pause as the pause begins (the offline one also snaps to later pauses)."""

    def __init__(self, fps: float, rate_per_min: float, profile: np.ndarray | None = None, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.fps = fps
        self.profile = DEFAULT_BLINK if profile is None or len(profile) == 0 else np.asarray(profile, np.float32)
        self.mean_gap = 60.0 / float(np.clip(rate_per_min, 2.0, 60.0))
        self.shape, self.min_gap = GAMMA_SHAPE, MIN_BLINK_GAP_S
        self.snap, self.snap_p = PAUSE_SNAP_S, PAUSE_SNAP_P
        self.t = 0
        self.next = int(self.rng.uniform(0.2, 1.0) * self.mean_gap * fps)
        self.active = np.zeros(0, np.float32)  # the rest of the blink under way
        self.last = -10 ** 9
        self.prev_speech = False

    def _start(self) -> None:
        self.active = np.maximum(np.pad(self.active, (0, max(0, len(self.profile) - len(self.active)))),
                                 self.profile) if len(self.active) else self.profile.copy()
        self.last = self.t
        gap = max(self.min_gap, self.rng.gamma(self.shape, self.mean_gap / self.shape))
        self.next = self.t + max(1, int(round(gap * self.fps)))

    def step(self, speech: np.ndarray) -> np.ndarray:
        """[M] speech of the next M frames -> [M] blink in [0, 1] (1 = closed)."""
        out = np.zeros(len(speech), np.float32)
        for i, s in enumerate(np.asarray(speech, bool)):
            pause = self.prev_speech and not s
            self.prev_speech = bool(s)
            far_enough = (self.t - self.last) / self.fps >= self.min_gap
            if self.t >= self.next or (pause and far_enough and self.next - self.t <= self.snap * self.fps
                                       and self.rng.random() < self.snap_p):
                if far_enough:
                    self._start()
                else:
                    self.next = self.last + int(math.ceil(self.min_gap * self.fps))
            if len(self.active):
                out[i] = self.active[0]
                self.active = self.active[1:]
            self.t += 1
        return out

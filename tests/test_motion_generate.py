"""Head pose and blinks for new audio: at the person's rate, smooth, not a replay of the training track."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from nerf_talk.motion import generate as gen
from preprocess.face_motion import BLINK_EVENT, count_events

FPS = 25.0


def test_blinks_at_the_persons_rate():
    for rate in (8.0, 20.0, 40.0):
        b = gen.generate_blinks(int(FPS * 600), FPS, rate, seed=1)
        got = count_events(b, BLINK_EVENT, BLINK_EVENT / 2) / 10.0
        assert abs(got - rate) / rate < 0.2, (rate, got)
        assert b.min() >= 0 and b.max() <= 1


def test_blinks_prefer_pauses():
    speech = np.zeros(int(FPS * 300), bool)
    for s in range(0, len(speech), 100):
        speech[s:s + 80] = True  # 3.2 s phrases, 0.8 s pauses
    b = gen.generate_blinks(len(speech), FPS, 20.0, speech, seed=2)
    peaks = [i for i in range(1, len(b) - 1) if b[i] >= 0.99 and b[i - 1] < b[i]]
    onset = int(np.argmax(gen.DEFAULT_BLINK))  # frames from a blink's start to its peak
    in_pause = np.mean([not speech[max(0, i - onset)] for i in peaks])
    assert in_pause > 0.3  # pauses are 20% of the time; blinks within 0.6 s of one move there 60% of the time


def _track(n, rng):
    """A synthetic head track: slow sways, more motion when speaking."""
    speech = (np.sin(np.arange(n) / 40.0) > 0).astype(bool)
    ang = np.cumsum(rng.standard_normal((n, 3)) * 0.002 * (1 + 2 * speech[:, None]), 0)
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, :3, :3] = Rotation.from_rotvec(ang * 0.5).as_matrix()
    poses[:, :3, 3] = [0, 0, -0.6]
    poses[:, :3, 3] += np.cumsum(rng.standard_normal((n, 3)) * 0.0005, 0)
    return poses.astype(np.float32), speech


def test_generated_pose_is_smooth_varied_and_valid():
    rng = np.random.default_rng(0)
    poses, speech = _track(600, rng)
    new_speech = np.random.default_rng(5).random(900) < 0.6
    out = gen.generate_pose(poses, speech, new_speech, FPS, seed=3)
    assert out.shape == (900, 4, 4)
    R = out[:, :3, :3].astype(np.float64)
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-4)
    p_src, p_out = gen.poses_to_params(poses), gen.poses_to_params(out)
    step_src = np.abs(np.diff(p_src, axis=0)).max(0)
    step_out = np.abs(np.diff(p_out, axis=0)).max(0)
    assert np.all(step_out <= 2.0 * step_src + 1e-6), (step_out, step_src)  # joins do not jump
    # Not a frozen replay: the output is not the source track from its start.
    assert np.abs(p_out[:600] - p_src).max() > 1e-3
    # It stays where the person's head usually is.
    assert np.all(np.abs(p_out.mean(0) - p_src.mean(0)) < 3 * p_src.std(0) + 1e-6)


def test_replay_pingpongs():
    poses = np.tile(np.eye(4), (5, 1, 1)).astype(np.float32)
    poses[:, 0, 3] = np.arange(5)
    out = gen.replay_pose(poses, 12)
    assert list(out[:, 0, 3]) == [0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3]


def test_person_drive_from_their_track():
    """The drive of new speech from a person's own track and blink rate (motion.drive.Person): poses and eyes for
    every frame; a given pose track replayed as it is."""
    from nerf_talk.motion.drive import Person

    rng = np.random.default_rng(0)
    n = 500
    poses, speech = _track(n, rng)
    person = Person(FPS, poses.astype(np.float32), speech, 12.0, gen.blink_profile(gen.generate_blinks(
        n, FPS, 12.0, seed=9), FPS), np.array([0.8, 0.7], np.float32))
    new_speech = np.random.default_rng(1).random(750) < 0.7
    motion = np.zeros((750, 4, 3), np.float32)
    drive = person.drive(motion, new_speech, seed=1)
    assert drive.poses.shape == (750, 4, 4) and drive.eyes.shape == (750, 3) and len(drive) == 750
    assert person.blink_rate_per_min == 12.0
    blink = drive.eyes[:, 2]
    assert blink.max() > 0.5 and np.allclose(drive.eyes[:, 0], 0.8 * (1 - blink))  # eyes close as they blink
    replay = person.drive(motion, new_speech, pose=poses)
    np.testing.assert_array_equal(replay.poses[:n], poses.astype(np.float32))
    still = person.drive(motion[:10], new_speech[:10], pose="still", blinks=False)
    np.testing.assert_allclose(still.poses, np.repeat(gen.still_pose(poses)[None], 10, 0))
    assert (still.eyes[:, 2] == 0).all()

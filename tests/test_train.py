"""Training on a synthetic clip (nerf_talk.train.synthetic): the smoke recipe learns, resume is exact, NaN and Ctrl-C
are handled. CPU, 48 px frames; the whole file runs in about a minute on 2 cores."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

from nerf_talk.errors import Interrupted
from nerf_talk.train import TrainingDiverged, train
from nerf_talk.train import checkpoint as ck
from nerf_talk.train import losses
from nerf_talk.train.synthetic import make_synthetic_dataset

SMOKE = "recipes/smoke_cpu.toml"
# The synthetic frames are already tiny: read them at full size; log every step for the comparisons.
BASE = ["data.scale=1.0", "log_every=1"]
PSNR_MARGIN_DB = 2.0  # the smoke avatar must beat the mean training image by this much on validation frames


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn") / "ds", n_frames=40, size=48).root


def _log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_smoke_training_learns_and_beats_the_mean_image(dataset, tmp_path):
    out = train(dataset, tmp_path / "avatar", SMOKE, BASE + ["stages.0.steps=250", "log_every=10"])
    log = _log(out)
    head = [r["photometric"] for r in log if r["stage"] == "head"]
    assert head[-1] < 0.35 * head[0], f"photometric loss went from {head[0]:.4f} to {head[-1]:.4f}"
    m = json.loads((out / "metrics.json").read_text())
    assert m["torso"] == "field"  # the torso is rendered by its field, not taken from the frames
    assert m["psnr"] > m["mean_image_psnr"] + PSNR_MARGIN_DB, m
    for name in ("avatar.safetensors", "avatar.json", "background.png", "config.json", "checkpoints/last/state.json"):
        assert (out / name).exists(), name
    meta = json.loads((out / "avatar.json").read_text())
    assert meta["config"]["stages"][0]["steps"] == 250 and meta["n_motion"] >= 1
    assert any((out / "tb").iterdir())


def test_resume_continues_exactly(dataset, tmp_path):
    # Head then mouth stages, 12 steps, a grid update every 4: the stop at step 6 falls between updates and the
    # resumed run crosses into a new stage with a fresh optimizer, as the uninterrupted one does.
    common = BASE + ["stages.0.steps=8", "stages.1.steps=4", "stages.2.steps=0", "render.grid_update_every=4",
                     "checkpoint_every=3", "data.rays_per_step=256"]
    straight = train(dataset, tmp_path / "a", SMOKE, common)
    stopped = train(dataset, tmp_path / "b", SMOKE, common + ["stop_at_step=6"])
    assert ck.load_state(stopped / "checkpoints" / "last")["step"] == 6
    assert not (stopped / "avatar.safetensors").exists()
    train(dataset, tmp_path / "b", None, ["stop_at_step=0"], resume=True)
    a, b = _log(straight), _log(stopped)
    assert [r["step"] for r in b] == list(range(1, 13))
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5, abs=1e-7), (ra["step"], ra["loss"], rb["loss"])


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(dataset, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = losses.weighted_mse

    def poisoned(pred, target, weights):
        calls["n"] += 1
        value = real(pred, target, weights)
        return value * float("nan") if calls["n"] == 8 else value

    monkeypatch.setattr(losses, "weighted_mse", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match=r"diverged at step 8 .*not finite.*step 5"):
        train(dataset, out, SMOKE, BASE + ["checkpoint_every=5", "data.rays_per_step=256"])
    ckpt = ck.find_checkpoint(out / "checkpoints")
    assert ck.load_state(ckpt)["step"] == 5
    from safetensors.torch import load_file

    assert all(torch.isfinite(v.float()).all() for v in load_file(str(ckpt / "model.safetensors")).values())


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(dataset, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = losses.pixel_weights

    def interrupt_once(labels, cfg):
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does
        return real(labels, cfg)

    monkeypatch.setattr(losses, "pixel_weights", interrupt_once)
    over = BASE + ["stages.0.steps=6", "stages.1.steps=0", "stages.2.steps=0", "checkpoint_every=100",
                   "data.rays_per_step=256"]
    out = tmp_path / "int"
    with pytest.raises(Interrupted, match="stopped at step 4"):
        train(dataset, out, SMOKE, over)
    assert ck.load_state(out / "checkpoints" / "last")["step"] == 4
    train(dataset, out, None, None, resume=True)
    assert (out / "avatar.safetensors").exists() and [r["step"] for r in _log(out)] == list(range(1, 7))


def test_existing_run_needs_resume(dataset, tmp_path):
    over = BASE + ["stages.0.steps=1", "stages.1.steps=0", "stages.2.steps=0", "data.rays_per_step=64"]
    out = train(dataset, tmp_path / "r", SMOKE, over)
    from nerf_talk.errors import UserError

    with pytest.raises(UserError, match="already holds a training run"):
        train(dataset, out, SMOKE, over)
    with pytest.raises(UserError, match="no checkpoint"):
        train(dataset, tmp_path / "empty", SMOKE, over, resume=True)


def test_mouth_rays_are_drawn_from_mouth_pixels(dataset):
    from nerf_talk.config import DataConfig
    from nerf_talk.train.data import TrainData

    data = TrainData(dataset, DataConfig(scale=1.0), torch.device("cpu"))
    shares = {}
    for frac in (0.0, 0.3):
        gen = torch.Generator().manual_seed(0)
        b = data.sample_rays(gen, 2000, 4, 0.6, frac)
        assert len(b.frames) == 2000 and b.head_mask.float().mean() >= 0.6  # the mouth rays come out of the head's
        shares[frac] = float(b.mouth_mask.float().mean())
    # The synthetic mouth is a few percent of the head: without a mouth share few rays land there.
    assert shares[0.0] < 0.15 and shares[0.3] >= 0.3, shares


def test_eye_rays_are_drawn_around_the_eyes(dataset):
    from nerf_talk.config import DataConfig
    from nerf_talk.train.data import TrainData, eye_pixels

    data = TrainData(dataset, DataConfig(scale=1.0, edge_frame_share=0.0), torch.device("cpu"))  # uniform frames
    h, w = data.size
    shares = {}
    for frac in (0.0, 0.3):
        gen = torch.Generator().manual_seed(0)
        b = data.sample_rays(gen, 2000, 20, 0.6, 0.1, frac)
        assert len(b.frames) == 2000 and b.head_mask.float().mean() >= 0.6  # the eye rays come out of the head's
        near = [bool(eye_pixels(data.store.get(int(f)).parsing, 1)[int(p[1]) * w + int(p[0])])
                for f, p in zip(b.frames, b.pixels)]
        shares[frac] = sum(near) / len(near)
    # A frame whose eyes are shut (no eye label at all; 4 of the 35) gives its eye rays to the head: >= 0.2, not 0.3.
    assert shares[0.0] < 0.1 and shares[0.3] >= 0.2, shares


def test_torso_rays_are_drawn_under_the_jaw(dataset):
    """The torso stage's rays: a share where the torso layer runs on under the head (a thin band, which uniform rays
    barely reach), each batch saying which rays lie there."""
    from nerf_talk.config import DataConfig
    from nerf_talk.train.data import TrainData

    data = TrainData(dataset, DataConfig(scale=1.0), torch.device("cpu"))
    shares = {}
    for frac in (0.0, 0.2):
        gen = torch.Generator().manual_seed(0)
        b = data.sample_rays(gen, 2000, 4, frac, jaw_fraction=frac)
        assert len(b.frames) == 2000 and b.under_jaw.shape == (2000,)
        assert not (b.under_jaw & ~b.head_mask).any()  # the band is head pixels only
        shares[frac] = float(b.under_jaw.float().mean())
    assert shares[0.0] < 0.05 and shares[0.2] >= 0.2, shares


def test_torso_stage_teaches_the_colour_under_the_jaw(dataset, tmp_path, monkeypatch):
    """Under the jaw the frozen head covers the torso layer in training, so the composite barely teaches its colour
    there; the torso stage's `torso_under_jaw` term compares the layer's own colour with the frame's on those rays."""
    from nerf_talk.config import load_config
    from nerf_talk.train import trainer as tr

    seen = {}
    real = tr.over_torso_field

    def spy(*args, **kw):
        seen["batch"], seen["out"] = args[2], real(*args, **kw)
        return seen["out"]

    monkeypatch.setattr(tr, "over_torso_field", spy)
    for weight in (1.0, 0.0):
        cfg = load_config(SMOKE, BASE + [f"loss.torso_under_jaw={weight}", "data.torso_jaw_ray_fraction=0.3"])
        t = tr.Trainer(cfg, dataset, tmp_path / f"out{weight}")
        terms, _ = t.train_step(cfg.stages[2])
        b, out = seen["batch"], seen["out"]
        jaw = b.under_jaw
        assert jaw.sum() > 20
        if weight:
            expect = ((out["torso_rgb"][jaw] - b.rgb[jaw]) ** 2).mean()
            assert torch.allclose(terms["torso_under_jaw"], expect)
            terms["torso_under_jaw"].backward()
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in t.model.torso.parameters())
        else:
            assert "torso_under_jaw" not in terms


def test_edge_frames_get_their_share_of_each_step(dataset):
    """Frames with closed eyes or the widest mouth openings (rare in a clip, and all that teaches the closed lid and
    the open mouth's interior) are drawn at `edge_frame_share` on top of their uniform chance."""
    from nerf_talk.config import DataConfig
    from nerf_talk.train.data import EDGE_BLINK, EDGE_OPENING_QUANTILE, TrainData
    from preprocess.dataset import Dataset

    ds = Dataset(dataset)
    blink, opening = ds.load_array("blink"), ds.load_array("mouth_opening")
    shares = {}
    for share in (0.0, 0.5):
        data = TrainData(dataset, DataConfig(scale=1.0, edge_frame_share=share), torch.device("cpu"))
        train = np.array(data.train_frames)
        wide = opening[train] >= np.quantile(opening[train], EDGE_OPENING_QUANTILE)
        expect = set(train[(blink[train] >= EDGE_BLINK) | wide].tolist())
        assert set(data.edge_frames) == expect and 0 < len(expect) < len(train) / 2
        picks = data.pick_frames(torch.Generator().manual_seed(0), 4000)
        assert set(picks) <= set(train.tolist())
        shares[share] = np.mean([p in expect for p in picks])
        uniform = len(expect) / len(train)
        assert abs(shares[share] - (share + (1 - share) * uniform)) < 0.03, (share, shares, uniform)


def test_mouth_stage_keeps_head_rays_beside_its_patches(dataset, tmp_path, monkeypatch):
    """A mouth stage with `head_rays` renders its patches and that many head-stage rays in one batch: the pixel loss
    covers both (patches alone let the rest of the face drift), the patch losses see the patches only."""
    from nerf_talk.config import load_config
    from nerf_talk.train import trainer as tr

    cfg = load_config(SMOKE, BASE + ["stages.1.patch_size=8", "stages.1.patches_per_step=2", "stages.1.head_rays=96"])
    t = tr.Trainer(cfg, dataset, tmp_path / "out")
    seen = {}
    real_render, real_patch = tr.render_batch, tr.L.patch_losses

    def render(*args, **kw):
        seen["batch"] = args[4]
        return real_render(*args, **kw)

    def patch(pred, target):
        seen["patch"] = (pred.shape, target)
        return real_patch(pred, target)

    monkeypatch.setattr(tr, "render_batch", render)
    monkeypatch.setattr(tr.L, "patch_losses", patch)
    terms, _ = t.train_step(cfg.stages[1])
    b = seen["batch"]
    assert len(b.rgb) == 2 * 8 * 8 + 96
    first = b.pixels[:64]  # the first patch: an 8x8 square, row-major
    assert (first[:, 0].max() - first[:, 0].min(), first[:, 1].max() - first[:, 1].min()) == (7, 7)
    shape, target = seen["patch"]
    assert tuple(shape) == (2, 3, 8, 8)
    assert torch.equal(target.permute(0, 2, 3, 1).reshape(-1, 3), b.rgb[:128])
    assert all(torch.isfinite(v) for v in terms.values()) and {"ssim", "gradient", "photometric"} <= set(terms)


def test_eye_pixels_grow_the_eye_label():
    from nerf_talk.train.data import eye_pixels
    from preprocess.labels import Label

    lab = torch.zeros(9, 9, dtype=torch.uint8)
    lab[4, 4] = int(Label.EYES)
    assert int(eye_pixels(lab, 0).sum()) == 1 and int(eye_pixels(lab, 2).sum()) == 25  # a closed eye's few pixels
    assert not eye_pixels(torch.zeros(9, 9, dtype=torch.uint8), 2).any()  # (and the lids around them)
    lab[4, 4], lab[0, 8] = 0, int(Label.EYES)  # at the image's corner: only the window's part inside the image
    grown = eye_pixels(lab, 2).reshape(9, 9)
    assert int(grown.sum()) == 9 and bool(grown[:3, 6:].all())


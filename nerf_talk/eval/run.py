"""`nerf-talk eval AVATAR DATASET [--audio SPEECH]`: the avatar against its own held-out frames, and saying other
speech. Definitions of every figure: docs/EVALUATION.md.

Self-driven: every held-out frame of split.json ("val") is rendered with the dataset's own camera pose and eyes,
twice: with the lower-face motion the avatar predicts from the clip's own audio (generic model + personal adapter,
run over the whole clip so the held-out part has its real past), and with the motion tracked in the video. Frames
are whole renders (head and torso fields over the trained background plate; no real pixel pasted in) and are
compared with the real frames at the render size (the avatar's trained size unless `size` is given; real frames are
resized to it with area interpolation, labels nearest-neighbour).

Cross-driven (with `audio`): the avatar says that speech with generated head motion and blinks; landmarks are
re-detected on the rendered frames and the mouth-sync figure is computed against that speech's own features. The
real clip gives the reference (its held-out frames re-detected the same way, and its whole tracked track).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import cv2
import numpy as np

from nerf_talk.errors import UserError
from nerf_talk.eval import face as fc
from nerf_talk.eval import metrics as mx
from nerf_talk.media import put_title, write_atomic
from preprocess.labels import HEAD_LABELS, MOUTH_LABELS, Label

log = logging.getLogger("nerf_talk.eval")

FACE_LABELS = (Label.FACE, Label.BROWS, Label.EYES, Label.LIPS, Label.MOUTH, Label.TEETH)  # the face, no hair
BODY_LABELS = (Label.NECK, Label.TORSO)
SEAM_HALF_WIDTH = 0.01  # of the frame height: the seam band reaches this far each side of the head/body boundary
MIN_HELDOUT = 3  # frames: temporal figures need triples
MIN_CROSS_SECONDS = 2.0  # the sync figure high-passes at 1 s; shorter speech leaves nothing to correlate
HEAD_ZONE_SCALE = 1.4  # the face mesh's hull, grown about its centre: forehead to crown, ears, chin to jaw shadow
VIDEO_MIN_HEIGHT = 256  # panels of side_by_side.mp4 are upscaled to at least this (smoke_cpu renders 128 px)
FEATURES = ("ppg", "mel", "pitch", "energy")


# -- inputs -------------------------------------------------------------------------------------------------------
def check_pair(avatar, ds) -> None:
    """UserError unless `avatar` was trained on this dataset's person, crop and frame rate."""
    m = ds.load_manifest()
    src = avatar.parts.meta.get("source", {})
    mine, theirs = src.get("fingerprint"), m.get("source", {}).get("fingerprint")
    if mine and theirs and mine != theirs:
        raise UserError(f"the avatar was fitted on another video (source {mine}) than {ds.root} (source {theirs})",
                        "evaluate an avatar on the dataset it was fitted on (its .work/dataset, or the "
                        "--dataset given to fit).")
    if abs(avatar.fps - ds.fps) > 1e-6:
        raise UserError(f"the avatar runs at {avatar.fps:g} fps, the dataset {ds.root} at {ds.fps:g}",
                        "evaluate on the dataset the avatar was fitted on.")
    d = ds.step_result("pose")["intrinsics"]
    a = avatar.intrinsics
    s = a.width / float(d["width"])
    same = (abs(a.height / float(d["height"]) - s) < 1e-3
            and all(abs(getattr(a, k) - float(d[k]) * s) <= 0.01 * a.width for k in ("fx", "fy", "cx", "cy")))
    if not same:
        raise UserError(f"the avatar's camera ({a.width}x{a.height}, fx {a.fx:.1f}) is not the dataset's "
                        f"({d['width']}x{d['height']}, fx {float(d['fx']):.1f}) at any one scale",
                        "the dataset was preprocessed with another crop or size: evaluate on the dataset the avatar "
                        "was fitted on.")


def heldout_frames(ds) -> list[int]:
    p = ds.path("split.json")
    val = [int(i) for i in ds.read_json("split.json").get("val", [])] if p.exists() else []
    if len(val) < MIN_HELDOUT:
        raise UserError(f"{ds.root} has {len(val)} held-out frames (split.json 'val'); evaluation needs at least "
                        f"{MIN_HELDOUT}", "preprocess with a validation part (--val-fraction, default 1/11), fit on "
                        "that dataset, then evaluate.")
    if max(val) >= ds.n_frames:
        raise UserError(f"{ds.root}: split.json names frame {max(val)} of {ds.n_frames}", "preprocess it again.")
    return val


def dataset_features(ds) -> dict | None:
    """The dataset's per-frame audio features (None when it has none, as the synthetic test dataset)."""
    if not all(ds.path(f"audio_{k}.npy").exists() for k in FEATURES):
        return None
    return {k: ds.load_array(f"audio_{k}") for k in FEATURES}


def real_frames(ds, frames: list[int], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 [N, H, W, 3], parsing labels uint8 [N, H, W]) of dataset frames at `size` (height, width)."""
    h, w = size
    rgb, lab = [], []
    for i in frames:
        img, labels = ds.read_frame(i), ds.read_parsing(i)
        if img.shape[:2] != (h, w):
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
        rgb.append(img)
        lab.append(labels)
    return np.stack(rgb), np.stack(lab)


def label_mask(labels: np.ndarray, classes) -> np.ndarray:
    return np.isin(labels, np.array([int(c) for c in classes], np.uint8))


# -- rendering ----------------------------------------------------------------------------------------------------
def render_sequence(avatar, renderer, poses, motion, eyes, desc: str, progress: bool) -> tuple[np.ndarray, float]:
    """(frames uint8 [N, H, W, 3], seconds spent rendering) of a drive given as arrays."""
    from tqdm.auto import tqdm

    from nerf_talk.motion.drive import motion_coefficients

    coeffs = motion_coefficients(avatar.model, motion)
    out = []
    t0 = time.perf_counter()
    for i in tqdm(range(len(poses)), desc=desc, unit="frame", disable=not progress, leave=False):
        out.append(renderer.render(poses[i], coeffs[i], eyes[i]))
    return np.stack(out), time.perf_counter() - t0


def outside_head(renderer, poses: np.ndarray, template: np.ndarray | None) -> np.ndarray:
    """[N, H, W] bool: the pixels outside the head zone at each pose, i.e. background, neck, torso and shoulders,
    which should move only as the body does. The head zone is the convex hull of the person's head template (the
    478 face-mesh points in the head frame) projected with that pose, grown by HEAD_ZONE_SCALE about its centre to
    take in hair and ears. Defined by pose alone, so the same region exists for real frames, self-driven and
    cross-driven renders. Without a template, the screen box of the head field's 3D box (which reaches down to the
    neck and covers most of a head-and-shoulders crop)."""
    import torch

    from nerf_talk.render.video import head_screen_box

    h, w = renderer.size
    intr = renderer.intr
    keep = np.ones((len(poses), h, w), bool)
    for i, p in enumerate(poses):
        p = np.asarray(p, np.float64)
        if template is None:
            box = head_screen_box(torch.as_tensor(p.astype(np.float32)), renderer.model.head.aabb.detach().cpu(),
                                  intr)
            if box is not None:
                x0, y0, x1, y1 = box
                keep[i, y0:y1, x0:x1] = False
            continue
        h2c = np.linalg.inv(p)
        cam = template @ h2c[:3, :3].T + h2c[:3, 3]
        if (cam[:, 2] <= 1e-6).any():  # the head reaches behind the camera: nothing is safely outside it
            keep[i] = False
            continue
        uv = np.stack([intr.fx * cam[:, 0] / cam[:, 2] + intr.cx, intr.fy * cam[:, 1] / cam[:, 2] + intr.cy], 1)
        hull = cv2.convexHull(uv.astype(np.float32))[:, 0]
        centre = hull.mean(0)
        zone = np.zeros((h, w), np.uint8)
        cv2.fillConvexPoly(zone, np.round(centre + HEAD_ZONE_SCALE * (hull - centre)).astype(np.int32), 1)
        keep[i] = zone == 0
    return keep


# -- figures ------------------------------------------------------------------------------------------------------
def image_scores(real: np.ndarray, rendered: np.ndarray, labels: np.ndarray) -> dict:
    """Per-frame and mean PSNR / SSIM on the full frame, the face (FACE_LABELS of the real frame's parsing) and the
    mouth (PSNR only: a few hundred pixels make a noisy SSIM)."""
    rows = []
    for r, p, lab in zip(real, rendered, labels):
        face, mouth = label_mask(lab, FACE_LABELS), label_mask(lab, MOUTH_LABELS)
        rows.append({"psnr": mx.psnr(p, r), "ssim": mx.ssim(p, r), "psnr_face": mx.psnr(p, r, face),
                     "ssim_face": mx.ssim(p, r, face), "psnr_mouth": mx.psnr(p, r, mouth)})
    out = {k: mx.mean_finite([row[k] for row in rows]) for k in rows[0]}
    out["per_frame"] = rows
    return out


def landmark_scores(real_sig: dict, real_lm, rend_sig: dict, rend_lm, face_px: float) -> dict:
    return {
        "mouth_lmd": mx.mouth_distance(rend_sig["head"], real_sig["head"], fc.MOUTH_POINTS, 1.0),
        "mouth_lmd_image": mx.mouth_distance(rend_lm[..., :2], real_lm[..., :2], fc.MOUTH_POINTS, face_px),
        "mouth_opening_corr": mx.correlation_finite(rend_sig["mouth_opening"], real_sig["mouth_opening"]),
        "blink": mx.blink_agreement(rend_sig["blink"], real_sig["blink"]),
        "face_found": float(np.mean(rend_sig["found"])),
    }


def temporal_scores(frames: np.ndarray, keep: np.ndarray, lm, face_px: float) -> dict:
    rigid = list(fc.mt.RIGID)
    jitter = mx.landmark_jitter(lm[:, rigid, :2], face_px) if lm is not None else math.nan
    return {"head_jitter": jitter, "background_flicker": mx.region_flicker(frames, keep)}


def jsonable(o):
    """numpy -> Python; nan -> null and +-inf -> "inf"/"-inf" (strict JSON has neither; PSNR of identical frames
    is inf)."""
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return jsonable(o.tolist())
    if isinstance(o, (np.bool_, bool)):
        return bool(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        f = float(o)
        if math.isnan(f):
            return None
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return f
    if isinstance(o, Path):
        return str(o)
    return o


# -- the entry ----------------------------------------------------------------------------------------------------
def evaluate_avatar(avatar, dataset, out, audio=None, size: int | None = None, seed: int = 0,
                    progress: bool = True, video: bool = True, say=print) -> dict:
    """Scores `avatar` (an api.Avatar or a path) on `dataset` (its preprocessed clip) and, with `audio` (a speech
    file), saying other speech. Writes OUT/eval.json, OUT/*.png and OUT/side_by_side.mp4 (real | rendered from the
    clip's audio | rendered from the tracked motion, with the held-out audio when those frames are contiguous).
    Returns the figures (the same as eval.json). Bad input raises UserError before anything long runs."""
    from nerf_talk import audio_features as af
    from nerf_talk import media
    from nerf_talk.api import Avatar, load_speech
    from nerf_talk.motion import predict_motion
    from nerf_talk.motion.metrics import mouth_opening
    from nerf_talk.motion.predict import to_mono16k
    from preprocess.dataset import Dataset

    t_start = time.perf_counter()
    avatar_name = str(avatar) if not isinstance(avatar, Avatar) else "(in memory)"
    if not isinstance(avatar, Avatar):
        avatar = Avatar.load(avatar)
    ds = Dataset(dataset)
    check_pair(avatar, ds)
    val = heldout_frames(ds)
    out = Path(out)
    cross = None
    if audio is not None:  # read and check the other speech before any long rendering
        wave, rate = load_speech(audio)
        if len(wave) / rate < MIN_CROSS_SECONDS:
            raise UserError(f"{audio} holds {len(wave) / rate:.2f} s of audio; the sync figure needs at least "
                            f"{MIN_CROSS_SECONDS:g} s", "give a longer speech file (5 s or more gives a stabler "
                            "figure).")
        cross = (wave, rate)
    out.mkdir(parents=True, exist_ok=True)
    renderer = avatar.renderer(size)
    h, w = renderer.size
    fps = avatar.fps
    geo = fc.FaceGeometry.from_dataset(ds)
    feats = dataset_features(ds)
    vocab = af.phoneme_vocabulary() if (feats is not None or cross is not None) else None
    n_val = len(val)
    say(f"[eval] {n_val} held-out frames of {ds.root}, compared at {w}x{h} (dataset {ds.size}x{ds.size}, avatar "
        f"trained at {avatar.size[1]}x{avatar.size[0]})")

    # Self-driven drives: the dataset's own poses and eyes; motion predicted from the clip's audio, or tracked.
    poses = ds.load_array("poses").astype(np.float32)[val]
    eyes = np.concatenate([ds.load_array("eye_openness"), ds.load_array("blink")[:, None]], 1).astype(np.float32)[val]
    tracked = ds.load_array("lower_face_motion").astype(np.float32)
    if not ds.path("audio.wav").exists():
        raise UserError(f"{ds.root} has no audio.wav", "preprocess the clip with its audio (or --audio FILE).")
    clip_audio = media.read_audio(ds.path("audio.wav"), af.SAMPLE_RATE)
    pred = predict_motion(avatar.motion_model, clip_audio, af.SAMPLE_RATE, ds.fps, avatar.adapter)
    m = pred["lower_face_motion"]
    if len(m) < ds.n_frames:  # audio.wav is n_frames / fps long; a rounding shortfall is silence (neutral face)
        m = np.concatenate([m, np.repeat(m[-1:] * 0, ds.n_frames - len(m), 0)])
    if m.shape[1:] != tracked.shape[1:]:
        raise UserError(f"the avatar's motion has {m.shape[1]} points, the dataset's {tracked.shape[1]}",
                        "evaluate on the dataset the avatar was fitted on.")
    drives = {"audio": m[val], "tracked": tracked[val]}

    real, labels = real_frames(ds, val, (h, w))
    renders, render_s, render_n = {}, 0.0, 0
    for name, motion in drives.items():
        renders[name], s = render_sequence(avatar, renderer, poses, motion, eyes, f"render ({name})", progress)
        render_s, render_n = render_s + s, render_n + n_val
    template = (ds.load_array("head_template", expect_rows=False).astype(np.float64)
                if ds.path("head_template.npy").exists() else None)
    keep = outside_head(renderer, poses, template)

    res: dict = {
        "avatar": avatar_name, "dataset": str(ds.root), "fps": fps, "heldout_frames": val,
        "compare_size": [w, h], "dataset_size": [ds.size, ds.size], "avatar_size": [avatar.size[1], avatar.size[0]],
        "torso": "field" if avatar.parts.meta.get("torso_trained", True) else "none (background plate)",
        "landmarks": geo is not None, "self_driven": {}, "reference": {}, "temporal": {},
    }
    lms, sigs = {}, {}
    if geo is not None:
        lms["real"] = fc.detect_sequence(real, progress="landmarks (real)" if progress else None)
        for name in drives:
            lms[name] = fc.detect_sequence(renders[name], progress=f"landmarks ({name})" if progress else None)
        sigs = {k: fc.face_signals(v, geo) for k, v in lms.items()}
    face_px = fc.face_size_pixels(lms["real"]) if geo is not None else math.nan
    res["face_size_pixels"] = face_px
    if geo is not None:  # the floor under the landmark figures: the tracker on the same frames shot again
        again = fc.detect_sequence(fc.static_copies(real, seed), progress="landmarks (tracker noise)" if progress
                                   else None)
        res["reference"]["tracker_noise"] = landmark_scores(sigs["real"], lms["real"], fc.face_signals(again, geo),
                                                            again, face_px)
        # How much of a render's landmark distance its sharpness alone explains: the real frames, blurred.
        face = np.stack([label_mask(lab, FACE_LABELS) for lab in labels])
        res["reference"]["blurred_real"] = {}
        for sigma in fc.BLUR_REFERENCE_PX:
            soft = fc.blurred_copies(real, sigma)
            lm_soft = fc.detect_sequence(soft, progress=f"landmarks (blur {sigma:g} px)" if progress else None)
            r = landmark_scores(sigs["real"], lms["real"], fc.face_signals(lm_soft, geo), lm_soft, face_px)
            r["psnr_face"] = mx.mean_finite([mx.psnr(p, q, m) for p, q, m in zip(soft, real, face)])
            res["reference"]["blurred_real"][f"{sigma:g}"] = r
    band = mx.seam_band(labels, HEAD_LABELS, BODY_LABELS, max(1, round(SEAM_HALF_WIDTH * h)))
    seam_real = mx.seam_energy(real, band)
    for name in drives:
        r = image_scores(real, renders[name], labels)
        seam = mx.seam_energy(renders[name], band)
        r["seam"] = {"rendered": seam, "real": seam_real, "ratio": seam / seam_real if seam_real > 0 else math.nan}
        if geo is not None:
            r.update(landmark_scores(sigs["real"], lms["real"], sigs[name], lms[name], face_px))
            # How closely the render follows the opening its own drive asks for (the drive's inner-lip gap): a
            # renderer that obeys shows its drive's errors, and the gap between this and mouth_opening_corr is the
            # drive's (the motion model's, for the audio drive).
            r["drive_opening_corr"] = mx.correlation_finite(
                sigs[name]["mouth_opening"], mouth_opening(drives[name], avatar.motion_model.basis.points))
            if feats is not None:
                r["sync"] = mx.sync_scores(sigs[name]["mouth_opening"], {k: v[val] for k, v in feats.items()},
                                           vocab, fps)
        res["self_driven"][name] = r
        res["temporal"][f"rendered_{name}"] = temporal_scores(renders[name], keep, lms.get(name), face_px)
    res["temporal"]["real"] = temporal_scores(real, keep, lms.get("real"), face_px)
    if geo is not None and feats is not None:
        res["reference"]["real_heldout"] = mx.sync_scores(sigs["real"]["mouth_opening"],
                                                          {k: v[val] for k, v in feats.items()}, vocab, fps)
        res["reference"]["real_heldout"]["face_found"] = float(np.mean(sigs["real"]["found"]))
        res["reference"]["real_clip"] = mx.sync_scores(ds.load_array("mouth_opening"), feats, vocab, fps)
    if geo is None:
        log.warning("%s has no landmark tracking: the landmark, blink and sync figures are not measured", ds.root)

    cross_frames = None
    if cross is not None:
        wave, rate = cross
        drive = avatar.drive(wave, rate, "generate", True, seed)
        cross_frames, s = render_sequence(avatar, renderer, drive.poses, drive.motion, drive.eyes,
                                          "render (other speech)", progress)
        render_s, render_n = render_s + s, render_n + len(drive)
        c = {"audio": str(audio), "seconds": len(wave) / rate, "frames": len(drive)}
        lm_c = None
        if geo is not None:
            lm_c = fc.detect_sequence(cross_frames, progress="landmarks (other speech)" if progress else None)
            sig_c = fc.face_signals(lm_c, geo)
            cf = af.compute_features(to_mono16k(wave, rate), fps, len(drive))
            c.update(mx.sync_scores(sig_c["mouth_opening"], cf, vocab, fps))
            c["face_found"] = float(np.mean(sig_c["found"]))
            sigs["cross"] = sig_c
        res["cross_driven"] = c
        keep_c = outside_head(renderer, drive.poses, template)
        res["temporal"]["rendered_other_speech"] = temporal_scores(cross_frames, keep_c, lm_c, face_px)
    res["timing"] = {"render_fps": render_n / max(render_s, 1e-9), "frames_rendered": render_n,
                     "render_seconds": render_s, "device": str(avatar.device)}

    if sigs:  # the per-frame curves behind the figures, for plots across evaluations (before/after)
        res["signals"] = {"frames": val, "tracking_mouth_opening": ds.load_array("mouth_opening")[val],
                          **{f"{k}_{q}": sigs[k][q] for k in ("real", *drives) for q in ("mouth_opening", "blink")}}
    files = write_plots(out, res, sigs, val, ds)
    sbs = [real, renders["audio"], renders["tracked"]]
    files.append(write_side_by_side_png(out / "side_by_side.png", [f[len(val) // 2] for f in sbs]))
    if video:
        contiguous = val == list(range(val[0], val[-1] + 1))
        seg = None
        if contiguous:  # the held-out stretch of the clip's own (offset-corrected) audio: sync can be judged by eye
            a0, a1 = round(val[0] / fps * af.SAMPLE_RATE), round((val[-1] + 1) / fps * af.SAMPLE_RATE)
            seg = clip_audio[a0:a1]
        frames = (side_by_side([f[i] for f in sbs]) for i in range(n_val))
        media.write_video(out / "side_by_side.mp4", frames, fps, audio=seg, audio_rate=af.SAMPLE_RATE)
        files.append(out / "side_by_side.mp4")
    res["files"] = [p.name for p in files] + ["eval.json"]
    res["seconds"] = time.perf_counter() - t_start
    doc = json.dumps(jsonable(res), indent=1)
    write_atomic(out / "eval.json", lambda p: p.write_text(doc))
    return jsonable(res)


# -- outputs ------------------------------------------------------------------------------------------------------
PANEL_TITLES = ("real", "rendered: own audio", "rendered: tracked motion")


def side_by_side(panels: list[np.ndarray], titles=PANEL_TITLES) -> np.ndarray:
    """One frame [H', 3W', 3]: the panels upscaled to VIDEO_MIN_HEIGHT (nearest: blur in a render stays visible
    instead of being smoothed over), side by side, each titled."""
    h, w = panels[0].shape[:2]
    f = max(1, math.ceil(VIDEO_MIN_HEIGHT / h))
    out = []
    for img, title in zip(panels, titles):
        big = cv2.resize(img, (w * f, h * f), interpolation=cv2.INTER_NEAREST) if f > 1 else img.copy()
        put_title(big, title)
        out.append(big)
    return np.concatenate(out, 1)


def write_side_by_side_png(path: Path, panels: list[np.ndarray]) -> Path:
    img = cv2.cvtColor(side_by_side(panels), cv2.COLOR_RGB2BGR)
    write_atomic(path, lambda p: cv2.imwrite(str(p), img))
    return path


def write_plots(out: Path, res: dict, sigs: dict, val: list[int], ds) -> list[Path]:
    """psnr.png always; mouth_opening.png and sync_lag.png when landmarks were measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name):
        path = out / name
        write_atomic(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(8, 3.2))
    for name, style in (("audio", "-"), ("tracked", "--")):
        rows = res["self_driven"][name]["per_frame"]
        for key, colour in (("psnr", "tab:blue"), ("psnr_face", "tab:orange")):
            ax.plot(val, [min(r[key], 99.0) for r in rows], style, color=colour, label=f"{key} ({name})")
    ax.set_xlabel("dataset frame (held out)")
    ax.set_ylabel("PSNR (dB)")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("per-frame PSNR: full frame and face region")
    save(fig, "psnr.png")

    if sigs:
        fig, ax = plt.subplots(figsize=(8, 3.2))
        ax.plot(val, ds.load_array("mouth_opening")[val], color="0.7", lw=3, label="real (dataset tracking)")
        for key, label in (("real", "real (re-detected)"), ("audio", "rendered: own audio"),
                           ("tracked", "rendered: tracked motion")):
            ax.plot(val, sigs[key]["mouth_opening"], label=label)
        ax.set_xlabel("dataset frame (held out)")
        ax.set_ylabel("inner-lip gap / face size")
        ax.legend(fontsize=7)
        ax.set_title("mouth opening, landmarks re-detected on the frames")
        save(fig, "mouth_opening.png")

        curves = [("other speech (rendered)", res.get("cross_driven")),
                  ("real clip (tracked)", res["reference"].get("real_clip")),
                  ("held out, rendered from own audio", res["self_driven"]["audio"].get("sync"))]
        curves = [(n, c) for n, c in curves if c and c.get("lags")]
        if curves:
            fig, ax = plt.subplots(figsize=(6, 3.2))
            for name, c in curves:
                ax.plot(c["lags"], [np.nan if v is None else v for v in c["lag_curve"]], marker=".", label=name)
            ax.axvline(0, color="0.6", lw=0.8)
            ax.set_xlabel("lag (frames; > 0: the mouth is compared with earlier audio)")
            ax.set_ylabel("mouth-sync figure")
            ax.legend(fontsize=7)
            save(fig, "sync_lag.png")
    return written


def _fmt(v, digits: int = 2) -> str:
    """A figure of the JSON-ready result: null (not measured) -> "-", "inf" kept."""
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return f"{v:.{digits}f}"


def summary(res: dict) -> str:
    """A few lines for the terminal: the headline figures of an evaluate_avatar result."""
    w, h = res["compare_size"]
    lines = [f"held out: {len(res['heldout_frames'])} frames, compared at {w}x{h}"]
    for name, label in (("audio", "own audio"), ("tracked", "tracked motion")):
        r = res["self_driven"][name]
        s = (f"  {label:<15} PSNR {_fmt(r['psnr'])} dB  SSIM {_fmt(r['ssim'], 3)}  face PSNR {_fmt(r['psnr_face'])} "
             f"dB  face SSIM {_fmt(r['ssim_face'], 3)}")
        if "mouth_lmd" in r:
            s += (f"  mouth LMD {_fmt(r['mouth_lmd'])} %  opening corr {_fmt(r['mouth_opening_corr'], 3)} (with its "
                  f"drive {_fmt(r.get('drive_opening_corr', math.nan), 3)})  blink F1 {_fmt(r['blink']['f1'])}")
        lines.append(s)
    ref = res.get("reference", {})
    if "tracker_noise" in ref:
        noise = _fmt(ref["tracker_noise"]["mouth_lmd"])
        blurred = ", ".join(f"{k} px {_fmt(b['mouth_lmd'])} % (face PSNR {_fmt(b['psnr_face'])} dB)"
                            for k, b in ref.get("blurred_real", {}).items())
        lines.append(f"  mouth LMD of the real frames shot again (tracker noise) {noise} %; blurred {blurred}")
    if "real_clip" in ref:
        lines.append(f"  mouth-sync figure of the real clip {_fmt(ref['real_clip']['msf'], 3)}, of its held-out "
                     f"frames {_fmt(ref['real_heldout']['msf'], 3)}")
    c = res.get("cross_driven")
    if c:
        s = f"other speech: {c['frames']} frames of {c['audio']}"
        if "msf" in c:
            s += (f"  mouth-sync figure {_fmt(c['msf'], 3)} (audio shifted: up to {_fmt(c['msf_shifted_max'], 3)})"
                  f"  /p b m/ closed {_fmt(c['bilabial_closed_fraction'])} of {c['bilabial_frames']} frames")
        lines.append(s)
    t = res["temporal"]
    lines.append("head jitter (% face size) / background flicker (grey levels): " + ", ".join(
        f"{k} {_fmt(v['head_jitter'], 3)} / {_fmt(v['background_flicker'], 3)}" for k, v in t.items()))
    lines.append(f"rendered {res['timing']['frames_rendered']} frames at {_fmt(res['timing']['render_fps'])} frames/s"
                 f" on {res['timing']['device']}; whole evaluation {_fmt(res['seconds'], 1)} s")
    return "\n".join(lines)

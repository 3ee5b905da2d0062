"""Step: the visual report (report/index.html + PNGs), so that a person sees at a glance whether preprocessing worked."""

from __future__ import annotations

import html
import json

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nerf_talk.media import put_title  # noqa: E402
from preprocess.config import PreprocessConfig  # noqa: E402
from preprocess.dataset import Dataset, LandmarkFlag, frame_name  # noqa: E402
from preprocess.parsing import overlay_labels  # noqa: E402
from preprocess.pose import draw_pose, euler_yxz_degrees  # noqa: E402
from preprocess.step import Step  # noqa: E402

N_SHEET = 12  # frames on each contact sheet
THUMB = 256


def _sheet(tiles: list[np.ndarray], cols: int = 4) -> np.ndarray:
    rows = -(-len(tiles) // cols)
    h, w = tiles[0].shape[:2]
    out = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        out[r * h : (r + 1) * h, c * w : (c + 1) * w] = t[..., :3]
    return out


def _label(img: np.ndarray, text: str) -> np.ndarray:
    return put_title(img.copy(), text, y=20, scale=0.55)


def _thumb(img: np.ndarray) -> np.ndarray:
    return cv2.resize(img, (THUMB, THUMB), interpolation=cv2.INTER_AREA)


def run(ds: Dataset, cfg: PreprocessConfig) -> dict:
    m = ds.manifest
    n = ds.n_frames
    picks = np.unique(np.linspace(0, n - 1, N_SHEET).round().astype(int))
    lm2 = ds.load_array("landmarks_2d")
    flags = ds.load_array("landmark_flags")
    poses = ds.load_array("poses")
    template = ds.load_array("head_template", expect_rows=False)
    intr = ds.step_result("pose")["intrinsics"]
    val_start = ds.step_result("split")["val_starts_at"]

    with ds.staged_dir("report") as out:
        # Landmarks and pose axes.
        tiles = []
        for i in picks:
            img = ds.read_frame(i)
            for x, y in lm2[i].astype(int):
                cv2.circle(img, (int(x), int(y)), 1, (0, 255, 0), -1)
            img = draw_pose(img, poses[i], intr, template)
            tag = {LandmarkFlag.TRACKED: "", LandmarkFlag.INTERPOLATED: " (interp.)", LandmarkFlag.HELD: " (held)"}
            tiles.append(_label(_thumb(img), f"#{i}{tag[LandmarkFlag(flags[i])]}"))
        cv2.imwrite(str(out / "landmarks.jpg"), cv2.cvtColor(_sheet(tiles), cv2.COLOR_RGB2BGR))

        # Parsing masks and torso targets.
        tiles, torso_tiles = [], []
        bg = ds.read_image("background.png")
        for i in picks:
            tiles.append(_label(_thumb(overlay_labels(ds.read_frame(i), ds.read_parsing(i))), f"#{i}"))
            rgba = ds.read_image(f"torso/{frame_name(i, 'png')}")
            a = rgba[..., 3:4].astype(np.float32) / 255.0
            checker = ((np.indices(a.shape[:2]).sum(0) // 16) % 2 * 60 + 160).astype(np.float32)[..., None]
            comp = (rgba[..., :3] * a + checker * (1 - a)).astype(np.uint8)
            torso_tiles.append(_label(_thumb(comp), f"#{i}"))
        cv2.imwrite(str(out / "parsing.jpg"), cv2.cvtColor(_sheet(tiles), cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(out / "torso.jpg"), cv2.cvtColor(_sheet(torso_tiles), cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(out / "background.jpg"), cv2.cvtColor(bg[..., :3], cv2.COLOR_RGB2BGR))

        # Curves over time.
        t = np.arange(n) / ds.fps
        ang = euler_yxz_degrees(poses)
        fig, ax = plt.subplots(4, 1, figsize=(11, 10), sharex=True)
        for k, name in enumerate(("yaw", "pitch", "roll")):
            ax[0].plot(t, ang[:, k] - np.median(ang[:, k]), label=name)
        ax[0].set_ylabel("head angle (deg,\nminus median)")
        ax[0].legend(loc="upper right")
        cam = poses[:, :3, 3]
        for k, name in enumerate("xyz"):
            ax[1].plot(t, cam[:, k] - np.median(cam[:, k]), label=f"camera {name}")
        ax[1].set_ylabel("camera position\n(head units)")
        ax[1].legend(loc="upper right")
        ax[2].plot(t, ds.load_array("blink"), label="blink (1 = closed)")
        ax[2].plot(t, ds.load_array("mouth_opening") / max(1e-6, ds.load_array("mouth_opening").max()),
                   label="mouth opening (scaled)")
        ax[2].legend(loc="upper right")
        energy = ds.load_array("audio_energy")
        ax[3].plot(t, energy, color="gray")
        ax[3].set_ylabel("audio energy (dB)")
        err_ax = ax[3].twinx()
        err_ax.plot(t, ds.load_array("pose_error"), color="red")
        err_ax.set_ylabel("pose reprojection\nerror (px)", color="red")
        ax[3].set_xlabel("seconds")
        for a in ax:
            a.axvspan(val_start / ds.fps, n / ds.fps, color="orange", alpha=0.12)
        ax[0].set_title("curves (shaded: validation frames)")
        fig.tight_layout()
        fig.savefig(out / "curves.png", dpi=80)
        plt.close(fig)

        figures = {name: rec["result"] for name, rec in m["steps"].items()}
        timings = {name: rec["seconds"] for name, rec in m["steps"].items()}
        (out / "index.html").write_text(_html(ds, figures, timings))
    return {"frames_shown": picks.tolist()}


def _html(ds: Dataset, figures: dict, timings: dict) -> str:
    m = ds.manifest
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{timings.get(k, 0):.1f} s</td>"
        f"<td><pre>{html.escape(json.dumps(v, indent=1, default=float)[:1500])}</pre></td></tr>"
        for k, v in figures.items()
    )
    pose = figures.get("pose", {})
    headline = (
        f"{ds.n_frames} frames at {ds.fps:g} fps, {ds.size} px; "
        f"pose reprojection error {pose.get('reprojection_error_px', float('nan')):.2f} px; "
        f"landmarks tracked in {figures.get('landmarks', {}).get('tracked_fraction', 0):.0%} of frames; "
        f"audio offset {figures.get('audio_features', {}).get('offset_s', 0):+.3f} s"
    )
    drift = figures.get("audio_features", {}).get("drift", 0.0)
    if drift:
        headline += f" at the start, drifting {drift * ds.n_frames / ds.fps:+.3f} s by the end (audio resampled)"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>nerf_talk dataset report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} img{{max-width:100%}}
td{{vertical-align:top;border-bottom:1px solid #ddd}} pre{{margin:0;font-size:11px}}</style></head><body>
<h1>Dataset report</h1><p><b>{html.escape(str(m['source']['path']))}</b><br>{html.escape(headline)}</p>
<h2>Landmarks and head pose</h2><img src="landmarks.jpg">
<h2>Parsing</h2><img src="parsing.jpg">
<h2>Torso targets and background plate</h2><img src="torso.jpg"><img src="background.jpg" width="384">
<h2>Curves</h2><img src="curves.png">
<h2>Steps: time and figures</h2><table>{rows}</table></body></html>"""


STEP = Step(
    name="report",
    version=1,
    requires=("landmarks", "pose", "face_motion", "parsing", "background", "torso", "audio_features", "split"),
    outputs=("report/index.html",),
    run=run,
    describe="write report/index.html",
)

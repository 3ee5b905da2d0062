"""The demo's one-page report (`nerf-talk demo`): rendered frames beside training frames, timings, figures."""

from __future__ import annotations

import html
from pathlib import Path

import cv2
import numpy as np

from nerf_talk.media import write_atomic

DEMO_SENTENCE = ("Hello! I am a talking portrait made from a short video. "
                 "Give me any speech, and I will say it with my own face.")


def demo_report(out: Path, ds, avatar, res, timings: dict[str, float]) -> Path:
    """OUT/report/index.html: rendered frames beside training frames, the timings, the figures, a link to the
    video. ds: the dataset (preprocess.dataset.Dataset), avatar: api.Avatar, res: api.RenderResult of the video,
    timings: seconds per stage."""
    import av as pyav

    rep = out / "report"
    rep.mkdir(parents=True, exist_ok=True)
    h, w = avatar.size
    with pyav.open(str(res.path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    rows = []
    picks = np.linspace(0, len(frames) - 1, 5)[1:4].round().astype(int)  # three frames inside the sentence
    reals = np.linspace(0, ds.n_frames - 1, 5)[1:4].round().astype(int)
    for k, (i, j) in enumerate(zip(picks, reals)):
        real = cv2.resize(ds.read_frame(int(j)), (w, h), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(rep / f"rendered_{k}.png"), cv2.cvtColor(frames[i], cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(rep / f"training_{k}.png"), cv2.cvtColor(real, cv2.COLOR_RGB2BGR))
        rows.append(f"<tr><td><img src='training_{k}.png' width=256><br>training frame {j} (at the avatar's size)</td>"
                    f"<td><img src='rendered_{k}.png' width=256><br>rendered frame {i} (new speech)</td></tr>")
    fig = avatar.parts.meta.get("figures", {})
    t_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.0f} s</td></tr>" for k, v in timings.items())
    page = f"""<!doctype html><meta charset=utf-8><title>nerf_talk demo</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td{{padding:4px 12px;vertical-align:top}}
img{{image-rendering:pixelated}}</style>
<h1>nerf_talk demo</h1>
<p>The embedded sample clip was preprocessed, fitted with the small CPU recipe (<code>smoke_cpu</code>, frames at
{w}x{h}) and rendered saying a sentence it never said: <a href="../{html.escape(res.path.name)}">{html.escape(res.path.name)}</a>
({res.frames} frames at {avatar.fps:g} fps, rendered at {res.fps_rendered:.1f} frames per second).
The CPU recipe is a quick check of the whole path, not a photoreal avatar: that needs the full recipe on a GPU.</p>
<h2>Training frames and rendered frames</h2><table>{"".join(rows)}</table>
<h2>Timings</h2><table>{t_rows}<tr><td><b>total</b></td><td><b>{sum(timings.values()):.0f} s</b></td></tr></table>
<h2>Figures</h2><table>
<tr><td>validation PSNR (held-out frames)</td><td>{fig.get("psnr", float("nan")):.2f} dB</td></tr>
<tr><td>mean training image PSNR (the baseline)</td><td>{fig.get("mean_image_psnr", float("nan")):.2f} dB</td></tr>
<tr><td>training steps</td><td>{avatar.parts.meta.get("steps")}</td></tr>
<tr><td>personal adapter gain</td><td>{avatar.parts.meta["adapter"].get("info", {}).get("gain")}</td></tr>
</table>
<p>Preprocessing report: <a href="../dataset/report/index.html">dataset/report/index.html</a></p>
"""
    write_atomic(rep / "index.html", lambda p: p.write_text(page))
    return rep / "index.html"

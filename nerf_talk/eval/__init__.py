"""Offline evaluation of an avatar: fidelity on its held-out frames, lip sync on other speech, temporal stability.

    from nerf_talk.eval import evaluate_avatar
    res = evaluate_avatar("me.avatar", "me.avatar.work/dataset", "eval_out", audio="other_speech.wav")

`metrics` holds the pure figures (PSNR, SSIM, landmark distances, blink agreement, jitter, the sync figure), `face`
the landmark re-detection, `run` the entry that renders and writes eval.json, plots and side_by_side.mp4. The figures
are defined in docs/EVALUATION.md.
"""

from nerf_talk.eval.run import evaluate_avatar, summary

__all__ = ["evaluate_avatar", "summary"]

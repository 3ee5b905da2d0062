"""Audio to motion: the generic model, the personal adapter, head pose and blink generation, evaluation figures.

Public entry points (the CLI wires these):
  train_motion(corpus_dir, out, recipe=None, overrides=None)   train the generic model (train.py; DDP via torchrun)
  load_default_model()                                          the generic model shipped in nerf_talk/assets
  predict_motion(model, audio, sample_rate, fps, adapter=None)  per-frame motion for any speech (predict.py)
Imports are lazy so that `import nerf_talk.motion` stays cheap.
"""

from __future__ import annotations


def train_motion(corpus_dir, out, recipe=None, overrides=None, progress: bool = True):
    from nerf_talk.motion.train import train_motion as _train

    return _train(corpus_dir, out, recipe, overrides, progress)


def load_default_model(device: str = "cpu"):
    from nerf_talk.motion.predict import load_default_model as _load

    return _load(device)


def predict_motion(model, audio, sample_rate, fps, adapter=None) -> dict:
    from nerf_talk.motion.predict import predict_motion as _predict

    return _predict(model, audio, sample_rate, fps, adapter)

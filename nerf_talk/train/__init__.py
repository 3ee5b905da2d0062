"""Training an avatar from a preprocessed dataset: `train(dataset_dir, out_dir, recipe_path, overrides, resume)`."""

from .trainer import TrainingDiverged, train

__all__ = ["TrainingDiverged", "train"]

"""Video -> training dataset. One module per step; `pipeline.py` runs them in order, caches and resumes."""

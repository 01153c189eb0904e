"""Experiment tracking: W&B and MLflow behind one `Tracker` (worker) and `GridTracker`
(driver); optional, never able to stop training."""

"""MambaDoseTrainingLib: OpenKBP cache, slice datasets and the training loop (uses MambaDoseLib)."""

"""Training tasks (losses, training loops) built on the official_spinenet models."""

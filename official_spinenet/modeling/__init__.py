"""Keras models and layers of official_spinenet (no gin in here)."""

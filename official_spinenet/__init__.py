"""official_spinenet: SpineNet, SpineNet-Mobile and NAS-FPN detectors for TensorFlow 2."""

"""Keras layers: conv-norm-activation, activations, stochastic depth, resampling, blocks."""

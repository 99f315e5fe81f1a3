"""Helpers for comparing our models with tf-models-official's (the reference)."""

import numpy as np


def random_weights(weights, seed=0):
  """Well-scaled random values for a model's weights (kernels He-normal, BN sane).

  Random BN statistics keep activations O(1) so that a relative tolerance on the
  outputs means something in both inference and training mode.
  """
  rng = np.random.default_rng(seed)
  out = []
  for w in weights:
    if w.ndim > 1:
      fan_in = np.prod(w.shape[:-1]) if w.ndim == 4 and w.shape[-1] != 1 else np.prod(w.shape[:2])
      out.append((rng.normal(size=w.shape) * np.sqrt(2.0 / fan_in)).astype(w.dtype))
    else:
      out.append(rng.uniform(0.5, 1.5, size=w.shape).astype(w.dtype))
  return out


def max_relative_difference(a, b):
  """max |a - b| / max |a| over every endpoint of two output dicts."""
  worst = 0.0
  for key in a:
    ref = np.asarray(a[key])
    scale = max(float(np.max(np.abs(ref))), 1e-12)
    worst = max(worst, float(np.max(np.abs(ref - np.asarray(b[key])))) / scale)
  return worst

"""Drawings of scale-permuted architectures (SpineNet Fig. 1 / Fig. 4 style)."""

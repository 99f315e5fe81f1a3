"""Pure-TF ops (no gin; Model Garden imported lazily): fast detection post-processing."""

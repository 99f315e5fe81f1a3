"""Decoders: NAS-FPN (merging cells stacked into a feature pyramid network)."""

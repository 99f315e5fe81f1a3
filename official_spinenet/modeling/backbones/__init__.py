"""Backbones: SpineNet and SpineNet-Mobile."""

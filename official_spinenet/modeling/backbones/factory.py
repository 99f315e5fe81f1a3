"""Builds a backbone by family name and model id (the one lookup the tools share)."""

import importlib

import tf_keras

# family -> (module, builder function); imported lazily so a tool that needs one
# family does not build the graph code of the other.
BACKBONES = {
  'spinenet': ('official_spinenet.modeling.backbones.spinenet', 'build_spinenet'),
  'spinenet_mobile': (
    'official_spinenet.modeling.backbones.spinenet_mobile',
    'build_spinenet_mobile',
  ),
  'resnet': ('official_spinenet.modeling.backbones.resnet', 'build_resnet'),
}


def build_backbone(family: str, model_id: str, **kwargs) -> tf_keras.Model:
  """E.g. build_backbone('spinenet', '49', input_specs=[None, 640, 640, 3])."""
  if family not in BACKBONES:
    raise ValueError(f'Unknown backbone family {family!r}; choose one of {sorted(BACKBONES)}.')
  module, fn = BACKBONES[family]
  return getattr(importlib.import_module(module), fn)(model_id, **kwargs)

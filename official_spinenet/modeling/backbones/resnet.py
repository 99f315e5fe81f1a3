"""Model Garden's ResNet as a backbone builder (for RetinaNet R-50 NAS-FPN).

ResNet is not a seed system, so it is reused from tf-models-official rather than
written here. It is loaded (`model_garden.load`) on the first build, not with this
module: importing it loads Model Garden's whole registry.
"""

from typing import Optional, Sequence

import tf_keras

from official_spinenet import model_garden


def build_resnet(
  model_id: int = 50,
  input_specs: Sequence[Optional[int]] = (None, None, None, 3),
  min_level: int = 3,
  max_level: int = 7,
  kernel_regularizer: Optional[tf_keras.regularizers.Regularizer] = None,
  depth_multiplier: float = 1.0,
  stem_type: str = 'v0',
  resnetd_shortcut: bool = False,
  replace_stem_max_pool: bool = False,
  se_ratio: Optional[float] = None,
  init_stochastic_depth_rate: float = 0.0,
  scale_stem: bool = True,
  activation: str = 'relu',
  use_sync_bn: bool = False,
  norm_momentum: float = 0.99,
  norm_epsilon: float = 0.001,
  bias_regularizer: Optional[tf_keras.regularizers.Regularizer] = None,
  bn_trainable: bool = True,
) -> tf_keras.Model:
  """Model Garden's ResNet-`model_id`, called like our backbone builders.

  input_specs, min_level, max_level and kernel_regularizer are what the task
  passes to every backbone; the other arguments are Model Garden ResNet's. Its
  features are levels 2-5 (C2..C5); a NAS-FPN decoder makes P6 and P7 by max
  pooling, so max_level only has to be >= min_level.

  Raises:
    ValueError: min_level outside the ResNet's levels 2-5, or max_level < min_level.
  """
  if not 2 <= min_level <= 5 or max_level < min_level:
    raise ValueError(
      f'resnet gives levels 2-5: min_level must be in [2, 5] and max_level '
      f'>= min_level, got min_level={min_level}, max_level={max_level}.'
    )
  return model_garden.load('resnet').ResNet(
    model_id=int(model_id),
    input_specs=tf_keras.layers.InputSpec(shape=list(input_specs)),
    depth_multiplier=depth_multiplier,
    stem_type=stem_type,
    resnetd_shortcut=resnetd_shortcut,
    replace_stem_max_pool=replace_stem_max_pool,
    se_ratio=se_ratio,
    init_stochastic_depth_rate=init_stochastic_depth_rate,
    scale_stem=scale_stem,
    activation=activation,
    use_sync_bn=use_sync_bn,
    norm_momentum=norm_momentum,
    norm_epsilon=norm_epsilon,
    kernel_regularizer=kernel_regularizer,
    bias_regularizer=bias_regularizer,
    bn_trainable=bn_trainable,
  )

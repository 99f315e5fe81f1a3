"""The one place that exposes library classes and functions to gin.

Gin names (module `official_spinenet`, usable unqualified in gin files):

  experiment                     what spinenet-train runs (task, trainer, optimizer)
  TrainerConfig                  loop settings (steps, checkpoints, clipping, init)
  learning_rate, sgd, adam       the schedule and optimizer builders
  RetinaNetTask, InputConfig     the RetinaNet task and its data splits
  spinenet, spinenet_mobile      backbone builders (by model id + overrides)
  RetinaNetHead                  the RetinaNet head
  nasfpn                         the NAS-FPN decoder (NASFPN)
  resnet                         Model Garden's ResNet backbone (for R-50 NAS-FPN)
  AnytimeRetinaNetTask           RetinaNet with a head after every NAS-FPN repeat
  MaskRCNNTask                   Mask R-CNN (Faster R-CNN without a mask head)
  ClassificationTask             image classification (SpineNet's classification head)
  RPNHead, DetectionHead,        Model Garden's R-CNN heads and RoI pipeline layers,
  MaskHead, MultilevelROIGenerator,  bound by their own parameter names
  ROISampler, DetectionGenerator
  SearchConfig, ProxyConfig      the architecture search (spinenet-search) and its proxy trial

A gin file binds parameters of these; the layers themselves never import gin.
"""

import functools
import inspect
import logging
import os
from typing import Any, Callable, Dict, Optional, Sequence

import gin
import tf_keras

from official_spinenet import config_files
from official_spinenet.modeling import maskrcnn_model
from official_spinenet.modeling.backbones import resnet
from official_spinenet.modeling.backbones import spinenet
from official_spinenet.modeling.backbones import spinenet_mobile
from official_spinenet.modeling.decoders import nasfpn
from official_spinenet.modeling.heads import retinanet_head
from official_spinenet.search import proxy_config
from official_spinenet.search import search_config as search_config_lib
from official_spinenet.tasks import anytime_retinanet_task
from official_spinenet.tasks import base_task
from official_spinenet.tasks import classification_task
from official_spinenet.tasks import maskrcnn_task
from official_spinenet.tasks import retinanet_task
from official_spinenet.training import optimization
from official_spinenet.training import trainer

MODULE = 'official_spinenet'


def _register(fn, name: str):
  return gin.external_configurable(fn, name=name, module=MODULE)


# Builders that forward **kwargs to a class: bindings are checked against it.
_FORWARDING_BUILDERS = {
  'spinenet': (_register(spinenet.build_spinenet, 'spinenet'), spinenet.SpineNet),
  'spinenet_mobile': (
    _register(spinenet_mobile.build_spinenet_mobile, 'spinenet_mobile'),
    spinenet_mobile.SpineNetMobile,
  ),
  'nasfpn': (_register(nasfpn.build_nasfpn, 'nasfpn'), nasfpn.NASFPN),
}
# Model Garden's Mask R-CNN layers, under their own names; their classes load
# (with official.vision) only when a binding needs checking.
for _builder, _gin_name in (
  ('rpn_head', 'RPNHead'),
  ('detection_head', 'DetectionHead'),
  ('mask_head', 'MaskHead'),
  ('roi_generator', 'MultilevelROIGenerator'),
  ('roi_sampler', 'ROISampler'),
  ('detection_generator', 'DetectionGenerator'),
):
  _FORWARDING_BUILDERS[_gin_name] = (
    _register(getattr(maskrcnn_model, _builder), _gin_name),
    functools.partial(maskrcnn_model.layer_class, _builder),
  )
_register(resnet.build_resnet, 'resnet')
_register(retinanet_head.RetinaNetHead, 'RetinaNetHead')
_register(retinanet_task.RetinaNetTask, 'RetinaNetTask')
_register(anytime_retinanet_task.AnytimeRetinaNetTask, 'AnytimeRetinaNetTask')
_register(maskrcnn_task.MaskRCNNTask, 'MaskRCNNTask')
_register(classification_task.ClassificationTask, 'ClassificationTask')
_register(base_task.InputConfig, 'InputConfig')
_register(trainer.TrainerConfig, 'TrainerConfig')
_register(optimization.build_learning_rate, 'learning_rate')
_register(optimization.build_sgd_optimizer, 'sgd')
_register(optimization.build_adam_optimizer, 'adam')
_register(proxy_config.ProxyConfig, 'ProxyConfig')
_SEARCH_CONFIG = _register(search_config_lib.SearchConfig, 'SearchConfig')


@gin.configurable(module=MODULE)
def experiment(
  task: base_task.Task = gin.REQUIRED,
  trainer_config: trainer.TrainerConfig = gin.REQUIRED,
  learning_rate: Callable[..., Any] = gin.REQUIRED,
  optimizer: Callable[..., tf_keras.optimizers.Optimizer] = (optimization.build_sgd_optimizer),
) -> Dict[str, Any]:
  """What one training run is: a task, loop settings and the optimizer builders."""
  return dict(task=task, config=trainer_config, learning_rate=learning_rate, optimizer=optimizer)


def _check_forwarded_bindings() -> None:
  """Unknown parameters of builders that take **kwargs fail now, not at build time."""
  for name, (builder, target) in _FORWARDING_BUILDERS.items():
    bound = set(gin.get_bindings(builder))
    if not bound:
      continue
    if not inspect.isclass(target):
      target = target()  # a loader of a Model Garden class
    accepted = set(inspect.signature(target.__init__).parameters) | set(
      inspect.signature(builder).parameters
    )
    unknown = sorted(bound - accepted)
    if unknown:
      raise ValueError(
        f'Unknown gin parameter(s) {unknown} for {name!r}; it accepts '
        f'{sorted(accepted - {"self", "kwargs"})}.'
      )


class _GinIncludeLookupFilter(logging.Filter):
  """Drops gin's 'Path not found' errors for includes that do resolve.

  Gin asks its Python-package reader about every `include` before trying the search
  path below, and that reader logs an ERROR for each miss: every run printed three
  false errors. A real miss still fails parse_gin, with the file in the message.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    from_gin_reader = record.pathname.endswith(os.path.join('gin', 'resource_reader.py'))
    return not (from_gin_reader and str(record.msg).startswith('Path not found'))


_GIN_INCLUDE_LOOKUP_FILTER = _GinIncludeLookupFilter()


def parse_gin(gin_files: Sequence[str], gin_params: Optional[Sequence[str]] = None) -> None:
  """Parses gin files then bindings; any unknown name or parameter is an error.

  Raises:
    ValueError: a missing file, or an unknown configurable / parameter (the
      message names the binding).
  """
  gin.clear_config()
  logging.getLogger().addFilter(_GIN_INCLUDE_LOOKUP_FILTER)  # adding it again is a no-op
  # `include 'retinanet/base.gin'` inside a config resolves against the packaged configs.
  gin.add_config_file_search_path(config_files.gin_configs_dir())
  files = [config_files.resolve_gin_file(f) for f in gin_files or ()]
  try:
    gin.parse_config_files_and_bindings(
      files, list(gin_params or ()), skip_unknown=False, finalize_config=False
    )
  except (OSError, ValueError, KeyError, SyntaxError) as e:
    raise ValueError(f'Bad gin configuration: {e}') from e
  _check_forwarded_bindings()


def build_experiment() -> Dict[str, Any]:
  """Calls `experiment` with the parsed bindings (builds configs, not models)."""
  try:
    return experiment()
  except (ValueError, TypeError) as e:
    raise ValueError(f'Bad gin configuration: {e}') from e


def gin_value(binding: str) -> Any:
  """The value gin binds to `binding` ('configurable.parameter') in the parsed config.

  A macro (`x = %NUM_FILTERS`, macros of macros too) gives the macro's value.
  """
  value = gin.query_parameter(binding)
  while isinstance(value, gin.config.ConfigurableReference) and value.selector == 'gin.macro':
    value = gin.query_parameter('%' + value.scopes[-1])  # the macro's name
  return value


def operative_config_str() -> str:
  """The bindings the last built objects used (gin's operative config), as gin text."""
  return gin.operative_config_str()


def search_config() -> search_config_lib.SearchConfig:
  """The SearchConfig the parsed bindings describe (what spinenet-search runs)."""
  try:
    return _SEARCH_CONFIG()
  except (ValueError, TypeError) as e:
    raise ValueError(f'Bad gin configuration: {e}') from e

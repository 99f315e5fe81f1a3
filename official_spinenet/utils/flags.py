"""Flag groups the binaries share: gin, checkpoint, NMS options; lists of integers.

Each `define_*` takes the FlagValues to define into (tests pass their own), and is
called from a binary's `define_flags()`, never at import. `no_positional_arguments`
and `usage_errors` turn bad command lines and the library's input errors into
absl usage errors (the message, the usage line, exit status 1).
"""

import contextlib
from typing import Iterator, List, Optional, Sequence, Tuple, Type

from absl import app
from absl import flags


def define_gin_flags(
  flag_values: flags.FlagValues = flags.FLAGS, purpose: str = 'the task'
) -> None:
  """--gin_file (repeatable) and --gin_param (repeatable)."""
  flags.DEFINE_multi_string(
    'gin_file',
    [],
    f'Gin files describing {purpose}, applied in order; a path, or one '
    'relative to the packaged gin_configs/ (e.g. retinanet/spinenet49_640.gin).',
    flag_values=flag_values,
  )
  flags.DEFINE_multi_string(
    'gin_param',
    [],
    'Gin bindings applied after the files, e.g. "TrainerConfig.train_steps = 100".',
    flag_values=flag_values,
  )


class IntegerListParser(flags.ArgumentParser):
  """Comma-separated integers, each >= lower_bound: absl parses lists of strings only."""

  def __init__(self, lower_bound: Optional[int] = None):
    super().__init__()
    self.lower_bound = lower_bound

  def parse(self, argument) -> List[int]:
    """'1,2, 3' (or a list, as defaults are given) -> [1, 2, 3]; ValueError names the bad item."""
    if isinstance(argument, str):
      argument = [item for item in argument.split(',') if item.strip()]
    values = []
    for item in argument:
      try:
        value = int(item)
      except (TypeError, ValueError):
        raise ValueError(f'{item!r} is not an integer (expected e.g. 1,2,3)') from None
      if self.lower_bound is not None and value < self.lower_bound:
        raise ValueError(f'{value} is below the lowest allowed, {self.lower_bound}')
      values.append(value)
    return values

  def flag_type(self) -> str:
    return 'comma-separated list of integers'


def define_integer_list(
  name: str,
  default: Optional[Sequence[int]],
  help_text: str,
  lower_bound: Optional[int] = None,
  flag_values: flags.FlagValues = flags.FLAGS,
) -> None:
  """--name=1,2,3: a list of ints, checked (the flag named) when the flags are parsed."""
  flags.DEFINE(
    IntegerListParser(lower_bound),
    name,
    None if default is None else list(default),
    help_text,
    flag_values=flag_values,
    serializer=flags.CsvListSerializer(','),
  )


def define_checkpoint_flag(
  flag_values: flags.FlagValues = flags.FLAGS, help_prefix: str = ''
) -> None:
  """--checkpoint: a checkpoint prefix or a model dir."""
  flags.DEFINE_string(
    'checkpoint',
    None,
    f'{help_prefix}A checkpoint prefix (model_dir/ckpt-N) or a model dir (its newest checkpoint).',
    flag_values=flag_values,
  )


def define_nms_flags(
  flag_values: flags.FlagValues = flags.FLAGS, help_prefix: str = '', pre_nms_top_k: bool = False
) -> None:
  """--score_threshold, --max_detections, --nms_iou_threshold [, --pre_nms_top_k].

  All default to None: the task's evaluation settings.
  """
  fv = dict(flag_values=flag_values)
  flags.DEFINE_float(
    'score_threshold',
    None,
    f'{help_prefix}Drop detections scoring below '
    'this (default: the task\'s pre_nms_score_threshold).',
    **fv,
  )
  flags.DEFINE_integer(
    'max_detections',
    None,
    f'{help_prefix}Detections per image (default: the task\'s max_num_detections).',
    **fv,
  )
  flags.DEFINE_float(
    'nms_iou_threshold',
    None,
    f'{help_prefix}NMS IoU threshold (default: the task\'s nms_iou_threshold).',
    **fv,
  )
  if pre_nms_top_k:
    flags.DEFINE_integer(
      'pre_nms_top_k',
      None,
      f'{help_prefix}Candidates per class before NMS (default: the task\'s pre_nms_top_k).',
      **fv,
    )


def nms_options(flag_values: flags.FlagValues = flags.FLAGS) -> dict:
  """The NMS flags that were defined, as keyword arguments (None: task default)."""
  names = ('score_threshold', 'max_detections', 'nms_iou_threshold', 'pre_nms_top_k')
  return {n: flag_values[n].value for n in names if n in flag_values}


def define_category_names_flag(
  flag_values: flags.FlagValues = flags.FLAGS, purpose: str = 'Class names'
) -> None:
  """--category_names_json: a COCO annotation file, {"id": "name"} or a list of names."""
  flags.DEFINE_string(
    'category_names_json',
    None,
    f'{purpose}: a COCO annotation file, a JSON '
    '{"id": "name"}, ["name of id 1", ...], or an export\'s assets.extra/export_config.json.',
    flag_values=flag_values,
  )


def no_positional_arguments(argv: Sequence[str]) -> None:
  """Raises a usage error if the command line has arguments that are not flags."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected positional arguments: {list(argv[1:])}')


@contextlib.contextmanager
def usage_errors(
  errors: Tuple[Type[BaseException], ...] = (ValueError, FileExistsError),
) -> Iterator[None]:
  """Re-raises the library's input errors as app.UsageError (message, usage, exit 1)."""
  try:
    yield
  except errors as e:
    raise app.UsageError(str(e)) from e

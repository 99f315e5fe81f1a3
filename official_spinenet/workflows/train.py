"""Training and evaluation from gin files: what `spinenet-train` runs.

  metrics = train.launch(['retinanet/spinenet49_640.gin'], [
      "TRAIN_FILE_PATTERN='/data/coco/train-*'", ...], '/tmp/retinanet49',
      mode='train_and_eval', strategy='mirrored')

Everything cheap is checked before anything heavy: gin bindings (an unknown name
or parameter fails here), the data files, the input size. Then the strategy is
created, the model built in its scope, and `trainer.run_experiment` resumes from
the newest checkpoint in the model dir.
"""

from typing import Dict, Optional, Sequence

from absl import logging

from official_spinenet import configurables
from official_spinenet.training import distribute
from official_spinenet.training import trainer


def launch(
  gin_files: Sequence[str],
  gin_params: Sequence[str],
  model_dir: str,
  mode: str = 'train_and_eval',
  strategy: str = 'one_device',
  num_gpus: int = 0,
  tpu: Optional[str] = None,
  mixed_precision: str = 'float32',
) -> Dict[str, float]:
  """Parses gin, validates, creates the strategy and runs the experiment.

  Args:
    gin_files: gin files, applied in order (paths, or relative to the packaged
      gin_configs/).
    gin_params: gin bindings applied after the files.
    model_dir: checkpoints, summaries, metrics and operative_config.gin.
    mode: one of trainer.MODES.
    strategy: one of distribute.STRATEGIES.
    num_gpus: GPUs for one_device / mirrored (0: CPU, or all visible for mirrored).
    tpu: TPU name or address for strategy 'tpu'.
    mixed_precision: one of distribute.PRECISIONS, or 'auto' (see
      distribute.resolve_precision).

  Returns:
    The final metrics (modes with evaluation) or training losses ('train').

  Raises:
    ValueError: a bad gin binding, data file, input size, mode or strategy.
  """
  mixed_precision = distribute.resolve_precision(mixed_precision, strategy)
  configurables.parse_gin(gin_files, gin_params)
  experiment = configurables.build_experiment()
  task = experiment['task']
  if mixed_precision != 'float32':
    task.image_dtype = mixed_precision
  task.validate(mode)

  distribute.set_precision(mixed_precision)
  tf_strategy = distribute.build_strategy(strategy, num_gpus=num_gpus, tpu=tpu)
  logging.info('Strategy %s with %d replica(s).', strategy, tf_strategy.num_replicas_in_sync)
  return trainer.run_experiment(
    task,
    mode,
    model_dir,
    tf_strategy,
    experiment['config'],
    learning_rate=experiment['learning_rate'],
    optimizer=experiment['optimizer'],
    mixed_precision=mixed_precision,
    operative_config=configurables.operative_config_str,
  )


def summary(results: Dict[str, float]) -> str:
  """One line of the headline numbers (per-class entries such as 'AP/circle' left out)."""
  return ', '.join(f'{k} {v:.4f}' for k, v in results.items() if '/' not in k)

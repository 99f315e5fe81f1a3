r"""spinenet-train: train and/or evaluate a gin-configured task.

  spinenet-train \
    --gin_file=gin_configs/retinanet/spinenet49_640.gin \
    --gin_param="TRAIN_FILE_PATTERN='/data/coco/train-*'" \
    --gin_param="EVAL_FILE_PATTERN='/data/coco/val-*'" \
    --gin_param="ANNOTATION_FILE='/data/coco/instances_val2017.json'" \
    --model_dir=/tmp/retinanet49 --mode=train_and_eval --strategy=mirrored

Everything cheap is checked before anything heavy: flags, gin bindings (an
unknown name or parameter fails here), the data files, the input size. Then the
strategy is created, the model built in its scope, and `trainer.run_experiment`
resumes from the newest checkpoint in --model_dir.
"""

from typing import Dict, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import gin

from official_spinenet import configurables
from official_spinenet.training import distribute
from official_spinenet.training import trainer

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the flags (at run time, so importing `launch` registers none)."""
  flags.DEFINE_multi_string('gin_file', [], 'Gin files, applied in order (paths may be '
                            'relative to the repository gin_configs/).')
  flags.DEFINE_multi_string('gin_param', [], 'Gin bindings applied after the files, e.g. '
                            '"TrainerConfig.train_steps = 100".')
  flags.DEFINE_string('model_dir', None, 'Checkpoints, summaries, metrics, operative config.')
  flags.DEFINE_enum('mode', 'train_and_eval', trainer.MODES, 'What to run.')
  flags.DEFINE_enum('strategy', 'one_device', distribute.STRATEGIES, 'tf.distribute strategy.')
  flags.DEFINE_string('tpu', None, 'TPU name or grpc:// address ("local" on a TPU VM).')
  flags.DEFINE_integer('num_gpus', 0, 'GPUs for one_device / mirrored (0: CPU for one_device, '
                       'all visible GPUs for mirrored).')
  flags.DEFINE_enum('mixed_precision', 'float32', distribute.PRECISIONS,
                    'Compute dtype: bfloat16 on TPU, float16 (with loss scaling) on GPU.')
  flags.mark_flag_as_required('model_dir')


def launch(gin_files: Sequence[str], gin_params: Sequence[str], model_dir: str,
           mode: str = 'train_and_eval', strategy: str = 'one_device', num_gpus: int = 0,
           tpu: Optional[str] = None, mixed_precision: str = 'float32') -> Dict[str, float]:
  """Parses gin, validates, creates the strategy and runs the experiment.

  Returns:
    The final metrics (modes with evaluation) or training losses ('train').
  """
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
      task, mode, model_dir, tf_strategy, experiment['config'],
      learning_rate=experiment['learning_rate'], optimizer=experiment['optimizer'],
      mixed_precision=mixed_precision, operative_config=gin.operative_config_str)


def run(argv) -> None:
  """The absl entry point: flags -> launch()."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected positional arguments: {argv[1:]}')
  if not FLAGS.gin_file:
    raise app.UsageError('Give at least one --gin_file.')
  if FLAGS.strategy == 'tpu' and not FLAGS.tpu:
    raise app.UsageError('--strategy=tpu needs --tpu.')
  results = launch(FLAGS.gin_file, FLAGS.gin_param, FLAGS.model_dir, FLAGS.mode,
                   FLAGS.strategy, FLAGS.num_gpus, FLAGS.tpu, FLAGS.mixed_precision)
  logging.info('Done: %s', ', '.join(f'{k} {v:.4f}' for k, v in results.items() if '/' not in k))


def main():
  """Console-script entry point (`spinenet-train`)."""
  define_flags()
  app.run(run)


if __name__ == '__main__':
  main()

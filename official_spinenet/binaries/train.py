r"""spinenet-train: train and/or evaluate a gin-configured task.

  spinenet-train \
    --gin_file=retinanet/spinenet49_640.gin \
    --gin_param="TRAIN_FILE_PATTERN='/data/coco/train-*'" \
    --gin_param="EVAL_FILE_PATTERN='/data/coco/val-*'" \
    --gin_param="ANNOTATION_FILE='/data/coco/instances_val2017.json'" \
    --model_dir=/tmp/retinanet49 --mode=train_and_eval --strategy=mirrored

Flags are checked here; everything else (gin bindings, data files, input size)
by `workflows.train.launch` before anything heavy runs. Running it again resumes
from the newest checkpoint in --model_dir. On SIGTERM it saves a checkpoint after
the step in flight and exits with status 42 (preemption.PREEMPTED_EXIT_CODE).
"""

import sys

from absl import app
from absl import flags
from absl import logging

from official_spinenet.training import distribute
from official_spinenet.training import preemption
from official_spinenet.training import trainer
from official_spinenet.utils import flags as flag_groups
from official_spinenet.workflows import train

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (at run time, never at import)."""
  fv = dict(flag_values=flag_values)
  flag_groups.define_gin_flags(flag_values)
  flags.DEFINE_string(
    'model_dir', None, 'Checkpoints, summaries, metrics, operative config.', required=True, **fv
  )
  flags.DEFINE_enum('mode', 'train_and_eval', trainer.MODES, 'What to run.', **fv)
  flags.DEFINE_enum(
    'strategy', 'one_device', distribute.STRATEGIES, 'tf.distribute strategy.', **fv
  )
  flags.DEFINE_string('tpu', None, 'TPU name or grpc:// address ("local" on a TPU VM).', **fv)
  flags.DEFINE_integer(
    'num_gpus',
    0,
    'GPUs for one_device / mirrored (0: CPU for one_device, all visible GPUs for mirrored).',
    **fv,
  )
  flags.DEFINE_enum(
    'mixed_precision',
    'float32',
    distribute.PRECISION_CHOICES,
    'Compute dtype: bfloat16 on TPU, float16 (with loss scaling) on GPU; auto: bfloat16 on '
    'TPUs and on CPUs with native bfloat16 (AVX512-BF16, AMX), float32 elsewhere.',
    **fv,
  )


def main(argv) -> None:
  """flags -> workflows.train.launch()."""
  flag_groups.no_positional_arguments(argv)
  if not FLAGS.gin_file:
    raise app.UsageError('Give at least one --gin_file.')
  if FLAGS.strategy == 'tpu' and not FLAGS.tpu:
    raise app.UsageError('--strategy=tpu needs --tpu.')
  try:
    results = train.launch(
      FLAGS.gin_file,
      FLAGS.gin_param,
      FLAGS.model_dir,
      FLAGS.mode,
      FLAGS.strategy,
      FLAGS.num_gpus,
      FLAGS.tpu,
      FLAGS.mixed_precision,
    )
  except preemption.PreemptedError as e:  # SIGTERM: checkpoint saved; not 0, so schedulers rerun it
    logging.warning('%s', e)
    sys.exit(preemption.PREEMPTED_EXIT_CODE)
  logging.info('Done: %s', train.summary(results))


def run() -> None:
  """Console-script entry point (`spinenet-train`)."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

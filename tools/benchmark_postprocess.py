r"""Times RetinaNet post-processing: ours ('fast') against the forward pass and Model Garden.

All run on the same head outputs of RetinaNet-SpineNet-49 (random weights, 91
classes), inputs fed as arguments, in interleaved rounds, for each --candidates
target and batch size; ours is checked to give Model Garden v1's detections
(`official_spinenet.workflows.postprocess_benchmark`). Prints this machine's matmul
GFLOP/s beside the absolute times.

  python tools/benchmark_postprocess.py
  python tools/benchmark_postprocess.py --batch_sizes=1 --candidates=1000 \
      --reference_runs=3 --runs=20 --forward_runs=5
"""

import os

from absl import app
from absl import flags

from official_spinenet.utils import flags as flag_groups
from official_spinenet.utils import timing
from official_spinenet.workflows import postprocess_benchmark

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (at run time, never at import)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_integer('image_size', 640, 'Square input size in pixels.', **fv)
  flags.DEFINE_integer('num_classes', 91, 'Head classes, background included.', **fv)
  flag_groups.define_integer_list(
    'batch_sizes', [1, 4], 'Batch sizes to time.', lower_bound=1, **fv
  )
  flag_groups.define_integer_list(
    'candidates',
    [1000, 10000],
    'Target (class, anchor) pairs per image above the score threshold.',
    **fv,
  )
  flags.DEFINE_integer('runs', 20, 'Timed runs of ours (median reported).', **fv)
  flags.DEFINE_integer(
    'reference_runs', 3, "Timed runs of each of Model Garden's v1 and v2 (median).", **fv
  )
  flags.DEFINE_integer('forward_runs', 5, 'Timed runs of the forward pass (median).', **fv)
  flags.DEFINE_float('logit_stddev', 2.0, 'Spread of the class logits over anchors.', **fv)
  flags.DEFINE_float('box_delta_stddev', 0.2, 'Spread of the box deltas.', **fv)
  flags.DEFINE_integer('seed', 0, 'Random seed (weights and images).', **fv)


def main(argv) -> None:
  """Times every (candidates, batch size); prints each, then a Markdown table."""
  flag_groups.no_positional_arguments(argv)
  batch_sizes = FLAGS.batch_sizes
  setup = postprocess_benchmark.build(
    FLAGS.image_size,
    FLAGS.num_classes,
    max(batch_sizes),
    FLAGS.seed,
    FLAGS.logit_stddev,
    FLAGS.box_delta_stddev,
  )
  rows = []
  for target in FLAGS.candidates:
    for batch_size in batch_sizes:
      r = postprocess_benchmark.compare(
        setup,
        FLAGS.num_classes,
        target,
        batch_size,
        FLAGS.runs,
        FLAGS.reference_runs,
        FLAGS.forward_runs,
      )
      print(postprocess_benchmark.describe(r), flush=True)
      rows.append(r)
  print(
    f'\nRetinaNet-SpineNet-49 {FLAGS.image_size}x{FLAGS.image_size}, '
    f'{FLAGS.num_classes} classes, {os.cpu_count()} CPUs '
    f'({timing.matmul_gflops():.0f} GFLOP/s float32 matmul), median time per batch '
    '(interleaved runs, inputs fed as arguments):'
  )
  print(postprocess_benchmark.markdown_table(rows))


def run() -> None:
  """Command-line entry point."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

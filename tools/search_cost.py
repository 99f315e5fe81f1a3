r"""What a COCO-scale architecture search costs on a Ray cluster (issue 12).

  python tools/search_cost.py                                   # SpineNet's COCO proxy
  python tools/search_cost.py --trials_csv=/tmp/search/trials.csv --machines=10,50,100

Measures the COCO proxy's training step on this machine (search/proxy_spinenet_coco.gin,
512 px), computes one trial (5 epochs of COCO + the reward's held-out images), and
simulates searches of --num_trials trials on clusters of --machines machines like this
one (trial times spread as in --trials_csv, a real search's). Prints the machine's matmul
GFLOP/s, the per-trial figures and a table of wall time and machine-hours; the cluster
figures are computed, not measured. How: `official_spinenet.workflows.search_cost`.
"""

from absl import app
from absl import flags

from official_spinenet.utils import flags as flag_groups
from official_spinenet.workflows import search_cost

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (at run time, never at import)."""
  fv = dict(flag_values=flag_values)
  d = search_cost.CostOptions()
  flags.DEFINE_string('proxy_gin_file', d.proxy_gin_file, 'The COCO-scale proxy.', **fv)
  flags.DEFINE_multi_string('gin_param', [], 'Bindings after the proxy gin file.', **fv)
  flags.DEFINE_integer('batch_size', d.batch_size, 'Images per measured step.', **fv)
  flags.DEFINE_integer('steps', d.steps, 'Steps per timed run.', **fv)
  flags.DEFINE_integer('repeats', d.repeats, 'Timed runs (median).', **fv)
  flag_groups.define_integer_list('num_trials', d.num_trials, 'Search sizes.', lower_bound=1, **fv)
  flag_groups.define_integer_list('machines', d.machines, 'Cluster sizes.', lower_bound=1, **fv)
  flags.DEFINE_string('trials_csv', None, "A search's trials.csv: the spread of trial times.", **fv)


def main(argv) -> None:
  """flags -> search_cost.estimate(); prints the figures."""
  flag_groups.no_positional_arguments(argv)
  with flag_groups.usage_errors((ValueError,)):
    options = search_cost.CostOptions(
      proxy_gin_file=FLAGS.proxy_gin_file,
      gin_params=tuple(FLAGS.gin_param),
      batch_size=FLAGS.batch_size,
      steps=FLAGS.steps,
      repeats=FLAGS.repeats,
      num_trials=tuple(FLAGS.num_trials),
      machines=tuple(FLAGS.machines),
      trials_csv=FLAGS.trials_csv,
    )
    result = search_cost.estimate(options)
  print(
    f"This machine: {result['gflops']:.0f} GFLOP/s (float32 matmul). Proxy "
    f"{options.proxy_gin_file} at {result['image_size']} px: "
    f"{result['per_image_seconds']:.3f} s per training image (measured); one trial = "
    f"{result['train_images']} training images + {options.reward_images} held-out = "
    f"{result['trial_seconds'] / 3600:.1f} h on this machine (computed); trial-time spread "
    f"from {result['spread_trials'] or 'no'} real trials."
  )
  print(result['markdown'])


def run() -> None:
  """Command-line entry point."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

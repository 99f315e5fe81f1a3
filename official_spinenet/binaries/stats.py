r"""spinenet-stats: parameters and multiply-adds of the published models vs. the papers.

  spinenet-stats                                # every model, a text table
  spinenet-stats --models=49,190 --json         # some models, JSON
  spinenet-stats --include=retinanet            # only the RetinaNet rows
  spinenet-stats --include=maskrcnn             # only the Mask R-CNN rows
  spinenet-stats --models=49 --json --resolution_override=256   # quick (tests)

Model ids: the SpineNet ids 49S, 49, 96, 143, 143L, 190, the SpineNet-Mobile ids
mobile-49, mobile-49S, mobile-49XS, and the RetinaNet NAS-FPN ids r50-nasfpn-3@256,
r50-nasfpn-5@256, r50-nasfpn-7@256, r50-nasfpn-7@384 (Model Garden's ResNet-50 + our
NAS-FPN with N repeats @ width, NAS-FPN paper Sec. 4.3 and Table 1). Row kinds and
the counting convention: `official_spinenet.modeling.published_models`.

--resolution_override=N replaces every resolution by N (a multiple of 128) for
quick runs.
"""

import os

# Before TensorFlow loads: its C++ start-up messages would bury the table.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app
from absl import flags

from official_spinenet.modeling import published_models
from official_spinenet.utils import flags as flag_groups

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (at run time, never at import)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_boolean('json', False, 'Print JSON instead of a text table.', **fv)
  flags.DEFINE_list(
    'models',
    list(published_models.MODELS),
    f'Model ids to report; any of {list(published_models.MODELS)}.',
    **fv,
  )
  flags.DEFINE_list(
    'include',
    list(published_models.ROW_KINDS),
    f'Row kinds; any of {list(published_models.ROW_KINDS)}.',
    **fv,
  )
  flags.DEFINE_integer(
    'resolution_override',
    None,
    'If set, every model and row kind is counted at this square '
    'resolution (a multiple of 128) instead of the paper\'s; for '
    'quick runs and tests.',
    lower_bound=128,
    **fv,
  )


def main(argv) -> None:
  """flags -> published_models.report(); prints it."""
  flag_groups.no_positional_arguments(argv)
  with flag_groups.usage_errors((ValueError,)):  # an unknown model or row kind, a bad resolution
    text = published_models.report(
      FLAGS.models, FLAGS.include, FLAGS.resolution_override, as_json=FLAGS.json
    )
  print(text, flush=True)


def run() -> None:
  """Console-script entry point (`spinenet-stats`)."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

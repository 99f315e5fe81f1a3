r"""spinenet-convert-checkpoint: a TF Model Garden (`official.vision`) checkpoint -> ours.

The source may be a bare backbone checkpoint or an `official.vision` training
checkpoint of RetinaNet, Mask R-CNN or an image classifier: the backbone (and, with
--decoder, the decoder) is found in it, checked variable by variable against our
model, and written as `tf.train.Checkpoint(backbone=..., decoder=...)`, which
`TrainerConfig.init_checkpoint` of our trainer reads
(`checkpoint_conversion.convert_architecture`).

With --gin_file, the whole model of that config is converted instead: for a Mask
R-CNN, the backbone, decoder (if any) and the RPN, detection and mask heads of a
tf-models-official MaskRCNNTask checkpoint (`model/...`), written under our
checkpoint items, which spinenet-eval / -export / -predict read as the model's
checkpoint and spinenet-train as init_checkpoint (init_checkpoint_modules=['all'])
(`checkpoint_conversion.convert_model_checkpoint`). The --model/--decoder flags
are then unused: the config says the architecture.

  spinenet-convert-checkpoint --source=/ckpts/maskrcnn_spinenet49/ckpt-162050 \
      --gin_file=maskrcnn/spinenet49_640.gin --output=/ckpts/ours/maskrcnn49

  spinenet-convert-checkpoint --source=/ckpts/retinanet_spinenet49/ckpt-231000 \
      --model=spinenet --model_id=49 --output=/ckpts/ours/spinenet49

  # RetinaNet R50-NAS-FPN 7@256 (Model Garden's ResNet-50 + our NAS-FPN):
  spinenet-convert-checkpoint --source=/ckpts/retinanet_nasfpn/ckpt-90000 \
      --model=resnet --model_id=50 --decoder=nasfpn --decoder_num_repeats=7 \
      --output=/ckpts/ours/r50_nasfpn
"""

from absl import app
from absl import flags

from official_spinenet import checkpoint_conversion
from official_spinenet.modeling.backbones import factory
from official_spinenet.utils import flags as flag_groups
from official_spinenet.workflows import loading

FLAGS = flags.FLAGS
# The flags that describe the source's architecture without --gin_file (`build_parts`).
_ARCHITECTURE_FLAGS = ('model_id', 'min_level', 'max_level', 'decoder')
_ARCHITECTURE_FLAGS += tuple(
  f'decoder_{n}' for n in ('num_filters', 'num_repeats', 'use_separable_conv')
)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (at run time, never at import)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string('source', None, 'Source checkpoint prefix or folder.', required=True, **fv)
  flags.DEFINE_string('output', None, 'Output checkpoint prefix.', required=True, **fv)
  flag_groups.define_gin_flags(flag_values, 'a whole model to convert (e.g. a Mask R-CNN)')
  flags.DEFINE_enum(
    'model',
    'spinenet',
    list(factory.BACKBONES),
    'Backbone family (resnet: Model Garden\'s ResNet, e.g. for R50-NAS-FPN).',
    **fv,
  )
  flags.DEFINE_string(
    'model_id', '49', 'Model id, e.g. 49S, 49, 96, 143, 143L, 190; 50 for --model=resnet.', **fv
  )
  flags.DEFINE_integer('min_level', 3, 'Lowest endpoint level of the source model.', **fv)
  flags.DEFINE_integer('max_level', 7, 'Highest endpoint level of the source model.', **fv)
  flags.DEFINE_string(
    'source_prefix',
    None,
    'Object path of the backbone in the source (found if unset), e.g. backbone or model/_backbone.',
    **fv,
  )
  flags.DEFINE_enum(
    'decoder', 'none', list(checkpoint_conversion.DECODERS), 'Decoder to convert too.', **fv
  )
  flags.DEFINE_integer('decoder_num_filters', 256, 'NAS-FPN num_filters of the source.', **fv)
  flags.DEFINE_integer(
    'decoder_num_repeats',
    5,
    'NAS-FPN num_repeats of the source '
    '(Model Garden\'s default 5; the paper\'s R-50 7@256 model: 7).',
    **fv,
  )
  flags.DEFINE_boolean(
    'decoder_use_separable_conv', False, 'NAS-FPN use_separable_conv of the source.', **fv
  )
  flags.DEFINE_string(
    'decoder_source_prefix',
    None,
    'Object path of the decoder in the source (found if unset), e.g. decoder or model/_decoder.',
    **fv,
  )


def main(argv) -> None:
  """flags -> checkpoint_conversion.convert_model_checkpoint() or convert_architecture()."""
  flag_groups.no_positional_arguments(argv)
  prefixes = {'backbone': FLAGS.source_prefix, 'decoder': FLAGS.decoder_source_prefix}
  architecture = {name: FLAGS[name].value for name in _ARCHITECTURE_FLAGS}
  given = [f'--{name}' for name in ('model', *_ARCHITECTURE_FLAGS) if FLAGS[name].present]
  if FLAGS.gin_file and given:
    raise app.UsageError(f'--gin_file says the architecture; drop {", ".join(given)}.')
  with flag_groups.usage_errors((ValueError,)):
    if FLAGS.gin_file:
      config = ' + '.join(FLAGS.gin_file)
      task = loading.build_task(FLAGS.gin_file, FLAGS.gin_param)
      path, parts = checkpoint_conversion.convert_model_checkpoint(
        FLAGS.source, task.checkpoint_items(task.build_model()), FLAGS.output, prefixes, config
      )
    else:
      path, parts = checkpoint_conversion.convert_architecture(
        FLAGS.source, FLAGS.output, prefixes, backbone=FLAGS.model, **architecture
      )
  print(f'Wrote {path} ({", ".join(parts)})')


def run() -> None:
  """Console-script entry point (`spinenet-convert-checkpoint`)."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

r"""spinenet-convert-checkpoint: a TF Model Garden (`official.vision`) checkpoint -> ours.

The source may be a bare backbone checkpoint or an `official.vision` training
checkpoint of RetinaNet, Mask R-CNN or an image classifier: the backbone (and, with
--decoder, the decoder) is found in it, checked variable by variable against our
model, and written as `tf.train.Checkpoint(backbone=..., decoder=...)`, which
`TrainerConfig.init_checkpoint` of our trainer reads
(`checkpoint_conversion.convert_architecture`).

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

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (at run time, never at import)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string('source', None, 'Source checkpoint prefix or folder.', required=True, **fv)
  flags.DEFINE_string('output', None, 'Output checkpoint prefix.', required=True, **fv)
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
  """flags -> checkpoint_conversion.convert_architecture()."""
  flag_groups.no_positional_arguments(argv)
  path, parts = checkpoint_conversion.convert_architecture(
    FLAGS.source,
    FLAGS.output,
    source_prefixes={'backbone': FLAGS.source_prefix, 'decoder': FLAGS.decoder_source_prefix},
    backbone=FLAGS.model,
    model_id=FLAGS.model_id,
    min_level=FLAGS.min_level,
    max_level=FLAGS.max_level,
    decoder=FLAGS.decoder,
    decoder_num_filters=FLAGS.decoder_num_filters,
    decoder_num_repeats=FLAGS.decoder_num_repeats,
    decoder_use_separable_conv=FLAGS.decoder_use_separable_conv,
  )
  print(f'Wrote {path} ({", ".join(parts)})')


def run() -> None:
  """Console-script entry point (`spinenet-convert-checkpoint`)."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

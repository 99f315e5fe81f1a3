"""Converts a TF Model Garden (`official.vision`) checkpoint into our layout.

The source may be a bare backbone checkpoint or an `official.vision` training
checkpoint of RetinaNet, Mask R-CNN or an image classifier: the backbone (and, with
--decoder, the decoder) is found in it, checked variable by variable against our
model, and written as `tf.train.Checkpoint(backbone=..., decoder=...)`, which
`--init_checkpoint` of our trainer reads.

  python tools/convert_checkpoint.py --source=/ckpts/retinanet_spinenet49/ckpt-231000 \
      --model=spinenet --model_id=49 --output=/ckpts/ours/spinenet49

  # RetinaNet R50-NAS-FPN 7@256 (Model Garden's ResNet-50 + our NAS-FPN):
  python tools/convert_checkpoint.py --source=/ckpts/retinanet_nasfpn/ckpt-90000 \
      --model=resnet --model_id=50 --decoder=nasfpn --decoder_num_repeats=7 \
      --output=/ckpts/ours/r50_nasfpn
"""

import sys

from absl import app
from absl import flags

try:
  import official_spinenet  # pylint: disable=unused-import
except ImportError:  # Run from a source checkout without installing.
  import os
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from official_spinenet import checkpoint_conversion
from official_spinenet.modeling.backbones import factory

FLAGS = flags.FLAGS
flags.DEFINE_string('source', None, 'Source checkpoint prefix or folder.', required=True)
flags.DEFINE_string('output', None, 'Output checkpoint prefix.', required=True)
flags.DEFINE_enum('model', 'spinenet', list(factory.BACKBONES),
                  'Backbone family (resnet: Model Garden\'s ResNet, e.g. for R50-NAS-FPN).')
flags.DEFINE_string('model_id', '49', 'Model id, e.g. 49S, 49, 96, 143, 143L, 190; '
                    '50 for --model=resnet.')
flags.DEFINE_integer('min_level', 3, 'Lowest endpoint level of the source model.')
flags.DEFINE_integer('max_level', 7, 'Highest endpoint level of the source model.')
flags.DEFINE_string('source_prefix', None,
                    'Object path of the backbone in the source (found if unset), '
                    'e.g. backbone or model/_backbone.')
flags.DEFINE_enum('decoder', 'none', ['none', 'nasfpn'], 'Decoder to convert too.')
flags.DEFINE_integer('decoder_num_filters', 256, 'NAS-FPN num_filters of the source.')
flags.DEFINE_integer('decoder_num_repeats', 5, 'NAS-FPN num_repeats of the source '
                     '(Model Garden\'s default 5; the paper\'s R-50 7@256 model: 7).')
flags.DEFINE_boolean('decoder_use_separable_conv', False,
                     'NAS-FPN use_separable_conv of the source.')
flags.DEFINE_string('decoder_source_prefix', None,
                    'Object path of the decoder in the source (found if unset), '
                    'e.g. decoder or model/_decoder.')


def _build_backbone():
  # Model Garden's ResNet (reused, not a seed system) has our layout already; the
  # converter checks and copies its variables like any other backbone's.
  return factory.build_backbone(FLAGS.model, FLAGS.model_id, min_level=FLAGS.min_level,
                                max_level=FLAGS.max_level, input_specs=[None, None, None, 3])


def main(argv):
  del argv
  backbone = _build_backbone()
  modules = {'backbone': backbone}
  names = {'backbone': f'{FLAGS.model}-{FLAGS.model_id}'}
  if FLAGS.decoder == 'nasfpn':
    from official_spinenet.modeling.decoders import nasfpn  # pylint: disable=g-import-not-at-top
    modules['decoder'] = nasfpn.NASFPN(
        input_specs=backbone.output_specs, min_level=FLAGS.min_level,
        max_level=FLAGS.max_level, num_filters=FLAGS.decoder_num_filters,
        num_repeats=FLAGS.decoder_num_repeats,
        use_separable_conv=FLAGS.decoder_use_separable_conv)
    names['decoder'] = f'NAS-FPN {FLAGS.decoder_num_repeats}@{FLAGS.decoder_num_filters}'
  path = checkpoint_conversion.convert_checkpoint(
      FLAGS.source, modules, FLAGS.output,
      source_prefixes={'backbone': FLAGS.source_prefix,
                       'decoder': FLAGS.decoder_source_prefix},
      model_names=names)
  print(f'Wrote {path} ({", ".join(modules)})')


if __name__ == '__main__':
  app.run(main)

"""Converts a TF Model Garden (`official.vision`) checkpoint into our layout.

The source may be a bare backbone checkpoint or an `official.vision` training
checkpoint of RetinaNet, Mask R-CNN or an image classifier: the backbone is found in
it, checked variable by variable against our model, and written as
`tf.train.Checkpoint(backbone=...)`, which `--init_checkpoint` of our trainer reads.

  python tools/convert_checkpoint.py --source=/ckpts/retinanet_spinenet49/ckpt-231000 \
      --model=spinenet --model_id=49 --output=/ckpts/ours/spinenet49
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
flags.DEFINE_enum('model', 'spinenet', list(factory.BACKBONES), 'Backbone family.')
flags.DEFINE_string('model_id', '49', 'Model id, e.g. 49S, 49, 96, 143, 143L, 190.')
flags.DEFINE_integer('min_level', 3, 'Lowest endpoint level of the source model.')
flags.DEFINE_integer('max_level', 7, 'Highest endpoint level of the source model.')
flags.DEFINE_string('source_prefix', None,
                    'Object path of the backbone in the source (found if unset), '
                    'e.g. backbone or model/_backbone.')


def main(argv):
  del argv
  backbone = factory.build_backbone(FLAGS.model, FLAGS.model_id, min_level=FLAGS.min_level,
                                    max_level=FLAGS.max_level)
  path = checkpoint_conversion.convert_backbone_checkpoint(
      FLAGS.source, backbone, FLAGS.output, source_prefix=FLAGS.source_prefix,
      model_name=f'{FLAGS.model}-{FLAGS.model_id}')
  print(f'Wrote {path}')


if __name__ == '__main__':
  app.run(main)

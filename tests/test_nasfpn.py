"""NAS-FPN: equality with the reference, shapes, checkpoints, errors, config, repeats.

The reference is tf-models-official's `official.vision.modeling.decoders.nasfpn`,
imported here only; the package never imports it.
"""

import ast
import json
import os

from absl.testing import parameterized
import numpy as np
from official.vision.modeling.decoders import nasfpn as reference_nasfpn
import pytest
import tensorflow as tf
import tf_keras

from official_spinenet.modeling.decoders import nasfpn
from official_spinenet.modeling.decoders import nasfpn_specs
from official_spinenet.modeling.layers import dropblock
from tests import paths
from tests import reference_utils

REPO = paths.REPO
SIZE = 128
# A narrow ResNet-like backbone: levels 2-5 of other widths than the pyramid, so the
# inputs are projected and P6, P7 come by max pooling.
RESNET_LIKE = {2: 16, 3: 24, 4: 32, 5: 40}


def _input_specs(channels, size=SIZE, width=None):
  width = width or size
  return {str(l): [None, size // 2**l, width // 2**l, c] for l, c in channels.items()}


def _features(specs, batch=2, seed=0):
  return {
    k: tf.random.stateless_normal([batch] + v[1:], seed=[seed, int(k)]) for k, v in specs.items()
  }


def _reference(specs, **kwargs):
  return reference_nasfpn.NASFPN(
    input_specs={k: tf.TensorShape(v) for k, v in specs.items()}, **kwargs
  )


def _trainable_count(model):
  return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def _small(specs=None, **kwargs):
  args = dict(
    input_specs=specs or _input_specs(RESNET_LIKE),
    num_repeats=1,
    num_filters=16,
    merge_filters=None,
  )
  args.update(kwargs)
  return nasfpn.NASFPN(**args)


class NASFPNReferenceTest(tf.test.TestCase, parameterized.TestCase):
  """Same weights in, same pyramid out, as tf-models-official's NAS-FPN."""

  @parameterized.named_parameters(
    ('resnet_like_1x64', RESNET_LIKE, dict(num_repeats=1, num_filters=64), True),
    ('resnet_like_3x256', RESNET_LIKE, dict(num_repeats=3, num_filters=256), False),
    # Inputs as wide as the pyramid pass through unprojected.
    (
      'spinenet_like_separable_swish_1x64',
      {l: 64 for l in range(3, 8)},
      dict(num_repeats=1, num_filters=64, use_separable_conv=True, activation='swish'),
      False,
    ),
  )
  def test_equal_to_reference(self, channels, kwargs, check_checkpoint):
    specs = _input_specs(channels)
    reference = _reference(specs, **kwargs)
    ours = nasfpn.NASFPN(input_specs=specs, **kwargs)
    self.assertEqual(_trainable_count(ours), _trainable_count(reference))
    self.assertEqual([w.shape for w in ours.weights], [w.shape for w in reference.weights])
    reference.set_weights(reference_utils.random_weights(reference.get_weights(), seed=1))
    if check_checkpoint:
      # A checkpoint the reference writes restores into ours, variable for variable.
      path = tf.train.Checkpoint(decoder=reference).write(
        os.path.join(self.get_temp_dir(), 'reference')
      )
      ours_path = tf.train.Checkpoint(decoder=ours).write(os.path.join(self.get_temp_dir(), 'ours'))
      self.assertEqual(
        dict(tf.train.list_variables(path)), dict(tf.train.list_variables(ours_path))
      )
      tf.train.Checkpoint(decoder=ours).read(path).assert_consumed()
    else:
      ours.set_weights(reference.get_weights())
    x = _features(specs)
    for training in (False, True):
      difference = reference_utils.max_relative_difference(
        reference(x, training=training), ours(x, training=training)
      )
      self.assertLessEqual(difference, 1e-4, f'{kwargs} training={training}')
    self.assertEqual(
      {k: v.as_list() for k, v in ours.output_specs.items()},
      {k: v.as_list() for k, v in reference.output_specs.items()},
    )

  def test_mixed_precision_equal_to_reference(self):
    specs = _input_specs({l: 32 for l in range(3, 8)})
    tf_keras.mixed_precision.set_global_policy('mixed_bfloat16')
    try:
      reference = _reference(specs, num_repeats=1, num_filters=32)
      ours = nasfpn.NASFPN(input_specs=specs, num_repeats=1, num_filters=32)
    finally:
      tf_keras.mixed_precision.set_global_policy('float32')
    self.assertEqual([w.shape for w in ours.weights], [w.shape for w in reference.weights])
    reference.set_weights(reference_utils.random_weights(reference.get_weights(), seed=4))
    ours.set_weights(reference.get_weights())
    x = _features(specs)
    ref_out, our_out = reference(x), ours(x)
    self.assertEqual(our_out['3'].dtype, tf.bfloat16)
    for key in ref_out:
      self.assertAllEqual(tf.cast(ref_out[key], tf.float32), tf.cast(our_out[key], tf.float32))


class NASFPNShapeTest(tf.test.TestCase, parameterized.TestCase):
  @parameterized.parameters(
    # (num_repeats, num_filters, min_level, max_level, height, width, separable)
    (1, 16, 3, 7, 128, 128, False),
    (1, 24, 3, 7, 128, 256, True),
    (2, 8, 3, 6, 64, 128, False),
  )
  def test_output_shapes(self, repeats, filters, min_level, max_level, height, width, separable):
    num_levels = max_level - min_level + 1
    cells = [(4, 'sum', (0, 1), False)] + [
      (level, 'global_attention', (0, num_levels + i), True)
      for i, level in enumerate(range(min_level, max_level + 1))
    ]
    specs = _input_specs(RESNET_LIKE, height, width)
    model = nasfpn.NASFPN(
      input_specs=specs,
      min_level=min_level,
      max_level=max_level,
      cell_specs=None if max_level == 7 else cells,
      num_repeats=repeats,
      num_filters=filters,
      use_separable_conv=separable,
    )
    outputs = model(_features(specs, batch=1), training=True)
    self.assertEqual(sorted(outputs), [str(l) for l in range(min_level, max_level + 1)])
    for level in range(min_level, max_level + 1):
      expected = [1, height // 2**level, width // 2**level, filters]
      self.assertEqual(outputs[str(level)].shape, expected)
      self.assertEqual(model.output_specs[str(level)].as_list(), [None] + expected[1:])

  def test_cells_that_consume_every_node(self):
    # Nothing for an output cell to absorb (a point the search sampled): it still builds.
    cells = [
      (4, 'sum', (2, 3), False),
      (7, 'global_attention', (0, 2), False),
      (5, 'sum', (4, 5), True),
      (3, 'global_attention', (3, 6), True),
      (7, 'global_attention', (3, 7), True),
      (4, 'sum', (1, 6), True),
      (6, 'global_attention', (2, 3), True),
    ]
    outputs = _small(cell_specs=cells)(_features(_input_specs(RESNET_LIKE), batch=1))
    self.assertEqual(outputs['6'].shape, [1, 2, 2, 16])

  def test_dynamic_input_specs(self):
    model = _small({str(l): [None, None, None, c] for l, c in RESNET_LIKE.items()})
    outputs = model(_features(_input_specs(RESNET_LIKE, 128, 256), batch=1))
    self.assertEqual(outputs['7'].shape, [1, 1, 2, 16])
    self.assertEqual(outputs['3'].shape, [1, 16, 32, 16])

  def test_merge_filters(self):
    specs = _input_specs(RESNET_LIKE)
    reference_like = nasfpn.NASFPN(input_specs=specs, num_repeats=1, num_filters=64)
    paper_like = nasfpn.NASFPN(input_specs=specs, num_repeats=1, num_filters=64, merge_filters=None)
    # Merging at 64 channels needs no 64 -> 256 projections and a narrower 3x3 conv.
    self.assertLess(_trainable_count(paper_like), _trainable_count(reference_like) / 2)
    convs = [l for l in paper_like.layers if isinstance(l, tf_keras.layers.Conv2D)]
    self.assertTrue(all(c.filters == 64 for c in convs))


class NASFPNRepeatsTest(tf.test.TestCase):
  def test_all_repeats_and_early_exit(self):
    specs = _input_specs(RESNET_LIKE)
    default = _small(specs, num_repeats=2)
    everything = _small(specs, num_repeats=2, return_all_repeats=True)
    default.set_weights(reference_utils.random_weights(default.get_weights(), seed=5))
    path = tf.train.Checkpoint(decoder=default).write(os.path.join(self.get_temp_dir(), 'd'))
    # The flag changes neither the weights nor the checkpoint layout.
    tf.train.Checkpoint(decoder=everything).read(path).assert_consumed()
    x = _features(specs, batch=1)
    pyramids = everything(x, training=False)
    self.assertLen(pyramids, 2)
    final = default(x, training=False)
    for key in final:
      self.assertAllEqual(pyramids[-1][key], final[key])
    self.assertNotAllClose(pyramids[0]['3'], pyramids[1]['3'])
    early = default.early_exit_model(1)
    self.assertIs(default.early_exit_model(1), early)
    self.assertLess(len(early.layers), len(default.layers) * 0.6)  # Runs one repeat.
    early_out = early(x, training=False)
    for key in early_out:
      self.assertAllEqual(early_out[key], pyramids[0][key])
    self.assertLen(default.layers, len(everything.layers))
    with self.assertRaisesRegex(ValueError, r'num_repeats must be in \[1, 2\]'):
      default.early_exit_model(0)

  def test_dropblock(self):
    specs = _input_specs(RESNET_LIKE)
    plain = _small(specs)
    dropping = _small(specs, dropblock_drop_rate=0.3, dropblock_size=3)
    # One DropBlock after each of the 7 cells.
    self.assertLen([l for l in dropping.layers if isinstance(l, dropblock.DropBlock)], 7)
    self.assertEmpty([l for l in plain.layers if isinstance(l, dropblock.DropBlock)])
    plain.set_weights(reference_utils.random_weights(plain.get_weights(), seed=6))
    path = tf.train.Checkpoint(decoder=plain).write(os.path.join(self.get_temp_dir(), 'p'))
    tf.train.Checkpoint(decoder=dropping).read(path).assert_consumed()
    x = _features(specs, batch=1)
    self.assertEqual(
      reference_utils.max_relative_difference(
        plain(x, training=False), dropping(x, training=False)
      ),
      0.0,
    )
    self.assertGreater(
      reference_utils.max_relative_difference(plain(x, training=True), dropping(x, training=True)),
      0.0,
    )


class NASFPNErrorsTest(tf.test.TestCase):
  def test_size_not_divisible(self):
    with self.assertRaisesRegex(
      ValueError,
      r'level-3 input height 25 comes from an image '
      r'height of 200, which is not divisible by 2\^max_level = 128',
    ):
      _small(_input_specs(RESNET_LIKE, 200, 256))
    model = _small({str(l): [None, None, None, c] for l, c in RESNET_LIKE.items()})
    with self.assertRaisesRegex(ValueError, r'image width of 320, which is not divisible'):
      model(_features(_input_specs(RESNET_LIKE, 128, 320), batch=1))
    with self.assertRaisesRegex(
      ValueError, 'imply different image heights: level 3: 128, level 4: 256'
    ):
      _small({'3': [None, 16, 16, 8], '4': [None, 16, 16, 8]})

  def test_missing_levels(self):
    with self.assertRaisesRegex(
      ValueError,
      r'needs the backbone features of min_level 3; '
      r"got levels \['4', '5'\]",
    ):
      _small({'4': [None, 8, 8, 8], '5': [None, 4, 4, 8]})
    model = _small()
    features = _features(_input_specs(RESNET_LIKE), batch=1)
    del features['4']
    with self.assertRaisesRegex(ValueError, 'Missing data for input "4"'):
      model(features)

  def test_bad_specs_and_arguments(self):
    default = [list(s) for s in nasfpn_specs.NASFPN_CELL_SPECS]
    cases = [
      (
        'Cell spec 1 has input 9, out of range',
        [default[0], (4, 'sum', (1, 9), False)] + default[2:],
      ),
      ("binary_op 'product'", [(4, 'product', (1, 3), False)] + default[1:]),
      ('level 8, outside the pyramid levels', [(8, 'sum', (1, 3), False)] + default[1:]),
      ('takes node 1 twice', [(4, 'sum', (1, 1), False)] + default[1:]),
      ('must be exactly the last 5 cells', [(4, 'sum', (1, 3), True)] + default[1:]),
      ('both output cells of level 3', default[:6] + [(3, 'sum', (9, 10), True)]),
      ('cannot give 5 output levels', default[:3]),
    ]
    for message, cells in cases:
      with self.assertRaisesRegex(ValueError, message):
        _small(cell_specs=cells)
    with self.assertRaisesRegex(ValueError, 'num_repeats must be a positive int'):
      _small(num_repeats=0)
    with self.assertRaisesRegex(ValueError, 'Unknown activation'):
      _small(activation='relu7')
    with self.assertRaisesRegex(ValueError, 'drop_rate'):
      _small(dropblock_drop_rate=1.5)


class NASFPNConfigTest(tf.test.TestCase):
  def test_get_config_returns_constructor_arguments(self):
    kwargs = dict(
      input_specs=_input_specs(RESNET_LIKE),
      min_level=3,
      max_level=7,
      cell_specs=[s.to_dict() for s in nasfpn_specs.build_cell_specs()],
      num_filters=16,
      num_repeats=1,
      use_separable_conv=True,
      merge_filters=None,
      activation='swish',
      use_sync_bn=False,
      norm_momentum=0.97,
      norm_epsilon=0.001,
      kernel_initializer=None,
      kernel_regularizer=None,
      bias_regularizer=None,
      dropblock_drop_rate=0.1,
      dropblock_size=3,
      return_all_repeats=False,
    )
    model = nasfpn.NASFPN(**kwargs)
    self.assertEqual(model.get_config(), kwargs)
    clone = nasfpn.NASFPN.from_config(model.get_config())
    self.assertEqual(clone.get_config(), kwargs)
    self.assertEqual(_trainable_count(clone), _trainable_count(model))
    self.assertEqual(json.loads(model.to_json())['config'], kwargs)
    self.assertEqual(
      tf_keras.layers.deserialize(tf_keras.layers.serialize(model)).get_config(), kwargs
    )
    self.assertEqual(model.num_repeats, 1)

  def test_initializer_and_regularizer_round_trip(self):
    model = _small(
      kernel_regularizer=tf_keras.regularizers.l2(1e-4),
      kernel_initializer=tf_keras.initializers.RandomNormal(stddev=0.02),
    )
    clone = nasfpn.NASFPN.from_config(json.loads(json.dumps(model.get_config())))
    self.assertNotEmpty(model.losses)
    self.assertLen(clone.losses, len(model.losses))
    conv = [l for l in clone.layers if isinstance(l, tf_keras.layers.Conv2D)][0]
    self.assertIsInstance(conv.kernel_initializer, tf_keras.initializers.RandomNormal)
    default_conv = [l for l in _small().layers if isinstance(l, tf_keras.layers.Conv2D)][0]
    self.assertEqual(default_conv.kernel_initializer.get_config()['mode'], 'fan_out')

  def test_cell_specs_json(self):
    path = os.path.join(self.get_temp_dir(), 'cells.json')
    nasfpn_specs.save_cell_specs(nasfpn_specs.NASFPN_CELL_SPECS, path)
    self.assertEqual(nasfpn_specs.load_cell_specs(path), nasfpn_specs.build_cell_specs())
    from_file = _small(cell_specs=path)
    self.assertEqual(from_file.get_config(), _small().get_config())
    # Model Garden's table (op 'attention') reads as ours.
    self.assertEqual(
      nasfpn_specs.build_cell_specs(reference_nasfpn.NASFPN_BLOCK_SPECS),
      nasfpn_specs.build_cell_specs(),
    )
    with open(path, 'w') as f:
      json.dump({'cell_specs': [{'level': 4, 'binary_op': 'sum'}]}, f)
    with self.assertRaisesRegex(
      ValueError,
      r"entry 0: .*lacks the keys \['input_offsets', "
      r"'is_output'\]",
    ):
      nasfpn_specs.load_cell_specs(path)
    with self.assertRaisesRegex(ValueError, 'does not exist'):
      nasfpn_specs.load_cell_specs(os.path.join(self.get_temp_dir(), 'missing.json'))


class NASFPNStatsTest(tf.test.TestCase):
  @pytest.mark.slow
  def test_r50_nasfpn_7_at_256_row(self):
    from official_spinenet.modeling import published_models  # pylint: disable=g-import-not-at-top

    (row,) = published_models.compute_rows(
      ['r50-nasfpn-7@256'], ['retinanet'], resolution_override=256
    )
    self.assertEqual(row['name'], 'R50-NAS-FPN 7@256')
    self.assertEqual((row['published_params_m'], row['published_multiply_adds_b']), (60.3, 140.6))
    # ResNet-50 23.51M + NAS-FPN 29.86M (tf-models-official's count) + head 6.71M.
    self.assertEqual(row['breakdown']['decoder_params'], 29858816)
    self.assertBetween(row['params_m'], 60.0, 60.2)
    # 140.3B at 640 scales to 256 by (256/640)^2.
    self.assertBetween(row['multiply_adds_b'], 140.0 * 0.16, 140.6 * 0.16)


def _imported_modules(module: str, seen=None) -> set:
  """Every module `module` imports, following our own modules' imports (from source)."""
  seen = set() if seen is None else seen
  path = os.path.join(REPO, *module.split('.')) + '.py'
  if module in seen or not os.path.exists(path):
    return seen
  seen.add(module)
  with open(path) as f:
    tree = ast.parse(f.read())
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      names = [node.module] + [f'{node.module}.{alias.name}' for alias in node.names]
    for name in names:
      if name.startswith('official_spinenet'):
        _imported_modules(name, seen)
      else:
        seen.add(name)
  return seen


class ImportTest(tf.test.TestCase):
  def test_package_imports_neither_gin_nor_the_reference(self):
    modules = set()
    for module in (
      'official_spinenet.modeling.decoders.nasfpn',
      'official_spinenet.modeling.layers.dropblock',
      'official_spinenet.modeling.layers.blocks',
    ):
      modules |= _imported_modules(module)
    self.assertIn('official_spinenet.modeling.decoders.merging_cells', modules)
    self.assertEqual(sorted(m for m in modules if m.split('.')[0] in ('gin', 'official')), [])


if __name__ == '__main__':
  tf.test.main()

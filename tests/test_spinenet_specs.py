"""Tests of block specs: tables, validation messages, JSON round trip."""

import os

import tensorflow as tf

from official_spinenet.modeling.backbones import spinenet_specs as specs_lib


def _specs(table=specs_lib.SPINENET_BLOCK_SPECS):
  return specs_lib.build_block_specs(table)


class SpecsTest(tf.test.TestCase):

  def test_published_tables_validate(self):
    specs_lib.validate_block_specs(_specs(), 2, 3, 7)
    specs_lib.validate_block_specs(_specs(specs_lib.SPINENET_MOBILE_BLOCK_SPECS), 2, 3, 7)
    self.assertLen(_specs(), 16)

  def test_parent_out_of_range(self):
    bad = _specs()
    bad[3] = specs_lib.BlockSpec(4, 'bottleneck', (2, 5), False)
    with self.assertRaisesRegex(ValueError, 'Block spec 3 has parent 5, out of range.*0..4'):
      specs_lib.validate_block_specs(bad, 2, 3, 7)

  def test_duplicate_output_level(self):
    bad = _specs()
    bad[9] = specs_lib.BlockSpec(4, 'bottleneck', (8, 10), True)
    with self.assertRaisesRegex(ValueError, 'both output blocks of level 4'):
      specs_lib.validate_block_specs(bad, 2, 3, 7)

  def test_level_outside_range_and_missing_output(self):
    bad = _specs()
    bad[4] = specs_lib.BlockSpec(8, 'residual', (3, 5), False)
    with self.assertRaisesRegex(ValueError, 'level 8, outside'):
      specs_lib.validate_block_specs(bad, 2, 3, 7)
    with self.assertRaisesRegex(ValueError, r'No output block for levels \[8\]'):
      specs_lib.validate_block_specs(_specs(), 2, 3, 8, max_block_level=8)

  def test_unknown_block_fn(self):
    bad = _specs()
    bad[0] = specs_lib.BlockSpec(2, 'dense', (0, 1), False)
    with self.assertRaisesRegex(ValueError, "block_fn 'dense'"):
      specs_lib.validate_block_specs(bad, 2, 3, 7)

  def test_input_size(self):
    specs_lib.validate_input_size([None, 256, 384, 3], 7)
    with self.assertRaisesRegex(ValueError, 'input width 200 is not divisible by 2\\^max_level = 128.*256'):
      specs_lib.validate_input_size([None, 256, 200, 3], 7)

  def test_json_round_trip(self):
    path = os.path.join(self.get_temp_dir(), 'arch.json')
    specs_lib.save_block_specs(_specs(), path)
    self.assertEqual(specs_lib.load_block_specs(path), _specs())

  def test_bad_json(self):
    path = os.path.join(self.get_temp_dir(), 'bad.json')
    with open(path, 'w') as f:
      f.write('[{"level": 2, "block_fn": "bottleneck"}]')
    with self.assertRaisesRegex(ValueError, "bad.json.*entry 0.*lacks the keys \\['input_offsets', 'is_output'\\]"):
      specs_lib.load_block_specs(path)
    with open(path, 'w') as f:
      f.write('{not json')
    with self.assertRaisesRegex(ValueError, 'not valid JSON'):
      specs_lib.load_block_specs(path)
    with self.assertRaisesRegex(ValueError, 'does not exist'):
      specs_lib.load_block_specs(path + '.missing')

  def test_unknown_model_id(self):
    with self.assertRaisesRegex(ValueError, "Unknown SpineNet model_id '50'.*'143L'"):
      specs_lib.lookup_model_id('50', specs_lib.SPINENET_SCALING, 'SpineNet')
    self.assertEqual(specs_lib.lookup_model_id('143l', specs_lib.SPINENET_SCALING, 'SpineNet'),
                     specs_lib.SPINENET_SCALING['143L'])

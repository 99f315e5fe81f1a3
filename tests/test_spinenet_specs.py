"""Tests of block specs and the topology rules: tables, validation, merges, JSON."""

import json
import os

import tensorflow as tf

from official_spinenet.modeling import topology
from official_spinenet.modeling.backbones import spinenet_specs as specs_lib
from official_spinenet.modeling.decoders import nasfpn_specs
from official_spinenet.modeling.layers import blocks


def _specs(table=specs_lib.SPINENET_BLOCK_SPECS):
  return specs_lib.build_block_specs(table)


class SpecsTest(tf.test.TestCase):
  def test_published_tables_validate(self):
    specs_lib.validate_block_specs(_specs(), 2, 3, 7)
    specs_lib.validate_block_specs(_specs(specs_lib.SPINENET_MOBILE_BLOCK_SPECS), 2, 3, 7)
    self.assertLen(_specs(), 16)

  def _assert_rejected(self, index, spec, message):
    """validate_block_specs names the problem of SpineNet-49 with spec `index` replaced."""
    bad = _specs()
    bad[index] = spec
    with self.assertRaisesRegex(ValueError, message):
      specs_lib.validate_block_specs(bad, 2, 3, 7)

  def test_parent_out_of_range(self):
    self._assert_rejected(
      3,
      specs_lib.BlockSpec(4, 'bottleneck', (2, 5), False),
      'Block spec 3 has parent 5, out of range.*0..4',
    )

  def test_duplicate_output_level(self):
    self._assert_rejected(
      9, specs_lib.BlockSpec(4, 'bottleneck', (8, 10), True), 'both output blocks of level 4'
    )

  def test_level_outside_range_and_missing_output(self):
    self._assert_rejected(4, specs_lib.BlockSpec(8, 'residual', (3, 5), False), 'level 8, outside')
    with self.assertRaisesRegex(ValueError, r'No output block for levels \[8\]'):
      specs_lib.validate_block_specs(_specs(), 2, 3, 8, max_block_level=8)

  def test_unknown_block_fn(self):
    self._assert_rejected(0, specs_lib.BlockSpec(2, 'dense', (0, 1), False), "block_fn 'dense'")

  def test_input_size(self):
    specs_lib.validate_input_size([None, 256, 384, 3], 7)
    with self.assertRaisesRegex(
      ValueError, 'input width 200 is not divisible by 2\\^max_level = 128.*256'
    ):
      specs_lib.validate_input_size([None, 256, 200, 3], 7)

  def test_json_round_trip(self):
    path = os.path.join(self.get_temp_dir(), 'arch.json')
    specs_lib.save_block_specs(_specs(), path)
    self.assertEqual(specs_lib.load_block_specs(path), _specs())

  def test_bad_json(self):
    path = os.path.join(self.get_temp_dir(), 'bad.json')
    with open(path, 'w') as f:
      f.write('[{"level": 2, "block_fn": "bottleneck"}]')
    with self.assertRaisesRegex(
      ValueError, "bad.json.*entry 0.*lacks the keys \\['input_offsets', 'is_output'\\]"
    ):
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
    self.assertEqual(
      specs_lib.lookup_model_id('143l', specs_lib.SPINENET_SCALING, 'SpineNet'),
      specs_lib.SPINENET_SCALING['143L'],
    )


class TopologyTest(tf.test.TestCase):
  def _spinenet_nodes(self, specs):
    """(stem nodes, node_of) with SpineNet-49's widths, as the backbone computes them."""

    def node(level, block_fn):
      filters = specs_lib.SPINENET_FILTER_SIZE_MAP[level]
      return topology.Node(level, specs_lib.block_output_channels(block_fn, filters))

    return [node(2, 'bottleneck')] * 2, lambda spec: node(spec.level, spec.block_fn)

  def test_spinenet49_merges(self):
    specs = _specs()
    stem, node_of = self._spinenet_nodes(specs)
    merges = topology.merge_unconsumed(specs, stem, node_of)
    # Block 11 (spec 9, level 5) joins the level-5 output (spec 12); nothing else.
    self.assertEqual({i: m for i, m in enumerate(merges) if m}, {12: (11,)})
    # The level-2 output only serves a P2 endpoint.
    self.assertEqual(topology.unused_nodes(specs, stem, node_of, 3, 7), [17])

  def test_nasfpn_merges_compare_levels(self):
    cells = nasfpn_specs.build_cell_specs()
    merges = topology.merge_unconsumed(cells, [topology.Node(l) for l in range(3, 8)])
    # P5 (node 2) and P7 (node 4) of the input pyramid feed no cell.
    self.assertEqual(merges, [(), (), (), (), (2,), (4,), ()])

  def test_channels_must_match(self):
    specs = specs_lib.build_block_specs(
      [
        (3, 'residual', (0, 1), False),
        (3, 'bottleneck', (0, 1), True),
        (3, 'residual', (0, 1), True),
      ]
    )
    stem, node_of = self._spinenet_nodes(specs)
    self.assertEqual(topology.merge_unconsumed(specs, stem, node_of), [(), (), (2,)])

  def test_block_channels_match_the_layers(self):
    for block_fn in blocks.RESIDUAL_BLOCKS:
      self.assertEqual(
        specs_lib.block_output_channels(block_fn, 24), blocks.block_output_filters(block_fn, 24)
      )

  def test_spec_forms(self):
    spec = specs_lib.BlockSpec(4, 'residual', (1, 2), True)
    self.assertEqual(spec.block_fn, 'residual')
    self.assertEqual(
      spec.to_dict(),
      {'level': 4, 'block_fn': 'residual', 'input_offsets': [1, 2], 'is_output': True},
    )
    self.assertEqual(specs_lib.BlockSpec.from_any(spec.to_dict()), spec)
    self.assertEqual(specs_lib.BlockSpec.from_any((4, 'residual', [1, 2], 1)), spec)
    cell = nasfpn_specs.CellSpec.from_any((4, 'attention', (1, 3), False))
    self.assertEqual(cell.binary_op, 'global_attention')
    self.assertNotEqual(cell, specs_lib.BlockSpec(4, 'global_attention', (1, 3), False))
    with self.assertRaisesRegex(ValueError, r'Cell spec \(4, 1\) must be \(level, binary_op'):
      nasfpn_specs.CellSpec.from_any((4, 1))
    with self.assertRaisesRegex(ValueError, 'exactly two input offsets'):
      specs_lib.BlockSpec.from_any((4, 'residual', (1,), True))

  def test_save_is_atomic_and_load_takes_a_wrapping_dict(self):
    path = os.path.join(self.get_temp_dir(), 'nested', 'cells.json')
    nasfpn_specs.save_cell_specs(nasfpn_specs.NASFPN_CELL_SPECS, path)
    self.assertEqual(os.listdir(os.path.dirname(path)), ['cells.json'])  # No temporary left.
    with open(path) as f:
      cells = json.load(f)
    with open(path, 'w') as f:
      json.dump({'cell_specs': cells}, f)
    self.assertEqual(nasfpn_specs.load_cell_specs(path), nasfpn_specs.build_cell_specs())
    with open(path, 'w') as f:
      json.dump({'block_specs': cells}, f)
    with self.assertRaisesRegex(ValueError, 'must hold a JSON list of cell specs'):
      nasfpn_specs.load_cell_specs(path)

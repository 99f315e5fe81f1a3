"""Tests for the architecture drawing (official_spinenet.visualize.architecture)."""

import os
import xml.etree.ElementTree as ET

from PIL import Image
import pytest
import tf_keras

from official_spinenet.modeling.backbones import spinenet
from official_spinenet.modeling.backbones import spinenet_specs
from official_spinenet.visualize import architecture
from tests import binaries

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# figsize (14, 5) inches at dpi 150.
EXPECTED_PNG_SIZE = (2100, 750)
SPINENET_STEM = (2, 2)


def _check_outputs(paths, prefix):
  """The drawing wrote a valid PNG of the expected size and a parseable SVG."""
  assert paths == [f'{prefix}.png', f'{prefix}.svg']
  png, svg = paths
  with open(png, 'rb') as f:
    assert f.read(8) == PNG_SIGNATURE
  with Image.open(png) as image:
    assert image.size == EXPECTED_PNG_SIZE
  assert os.path.getsize(svg) > 0
  root = ET.parse(svg).getroot()
  assert root.tag.endswith('svg')


@pytest.mark.parametrize('name', sorted(architecture.ARCHITECTURES))
def test_draws_published_architectures(tmp_path, name):
  preset = architecture.ARCHITECTURES[name]
  prefix = str(tmp_path / 'nested' / name)
  paths = architecture.draw_architecture(
    preset.block_specs, preset.stem_levels, preset.stem_block_fn, prefix, title=preset.title
  )
  _check_outputs(paths, prefix)


def test_draws_specs_from_json_file(tmp_path):
  json_path = str(tmp_path / 'specs.json')
  spinenet_specs.save_block_specs(
    spinenet_specs.build_block_specs(spinenet_specs.SPINENET_BLOCK_SPECS), json_path
  )
  specs = spinenet_specs.load_block_specs(json_path)
  prefix = str(tmp_path / 'from_json')
  paths = architecture.draw_architecture(specs, SPINENET_STEM, 'bottleneck', prefix)
  _check_outputs(paths, prefix)
  # Same specs, same figure: the SVG is deterministic.
  table_prefix = str(tmp_path / 'from_table')
  architecture.draw_architecture(
    spinenet_specs.SPINENET_BLOCK_SPECS, SPINENET_STEM, 'bottleneck', table_prefix
  )
  with open(f'{prefix}.svg') as a, open(f'{table_prefix}.svg') as b:
    assert a.read() == b.read()


def test_binary_smoke(tmp_path):
  json_path = str(tmp_path / 'mobile.json')
  spinenet_specs.save_block_specs(
    spinenet_specs.build_block_specs(spinenet_specs.SPINENET_MOBILE_BLOCK_SPECS), json_path
  )
  prefix = str(tmp_path / 'tool')
  result = binaries.run_binary(
    'draw_architecture',
    '--model=spinenet_mobile',
    f'--block_specs_json={json_path}',
    f'--output={prefix}',
    '--title=smoke',
    cwd=str(tmp_path),
    timeout=300,
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == [f'{prefix}.png', f'{prefix}.svg']
  _check_outputs(result.stdout.split(), prefix)


def test_unused_blocks_spinenet49():
  specs = spinenet_specs.SPINENET_BLOCK_SPECS
  last = len(SPINENET_STEM) + len(specs) - 1
  # The level-2 output (last spec) only serves a P2 endpoint.
  assert architecture.unused_blocks(specs, SPINENET_STEM, 3, 7) == [last]
  assert architecture.unused_blocks(specs, SPINENET_STEM, 2, 7) == []


def test_unused_blocks_follows_parents_and_merges():
  # Block 3 feeds only the level-2 output 4; with min_level 3 both are unused.
  specs = [
    (3, 'bottleneck', (0, 1), True),
    (2, 'bottleneck', (0, 1), False),
    (2, 'bottleneck', (3, 0), True),
  ]
  assert architecture.unused_blocks(specs, (2, 2), 3, 3) == [3, 4]
  assert architecture.unused_blocks(specs, (2, 2), 2, 3) == []


def test_zero_out_degree_merges_spinenet49():
  merges = architecture.zero_out_degree_merges(spinenet_specs.SPINENET_BLOCK_SPECS, SPINENET_STEM)
  # Block 11 (spec 9, level 5) has no consumer when output spec 12 (net 14, the
  # level-5 output) is built, so it is summed into it.
  assert merges == [(11, 14)]


def test_zero_out_degree_merges_counts_own_parents_and_merged_blocks():
  specs = [
    (3, 'bottleneck', (0, 1), False),  # net 2
    (3, 'bottleneck', (0, 1), True),  # net 3: merges 2
    (3, 'bottleneck', (0, 1), False),  # net 4
    (3, 'bottleneck', (4, 3), True),
  ]  # net 5: 4 is its parent, no merge
  assert architecture.zero_out_degree_merges(specs, (2, 2)) == [(2, 3)]


def test_edge_kind():
  assert architecture.edge_kind(2, 4) == 'down'
  assert architecture.edge_kind(5, 3) == 'up'
  assert architecture.edge_kind(4, 4) == 'same'


def test_merges_compare_channels_not_only_levels():
  # A residual block (1x width) is not absorbed by a bottleneck output block (4x
  # width) of its level, as in the backbone; a residual output block absorbs it.
  specs = [
    (3, 'residual', (0, 1), False),  # net 2: unconsumed
    (3, 'bottleneck', (0, 1), True),  # net 3: 4x wider, leaves 2 alone
    (4, 'residual', (0, 1), False),  # net 4: unconsumed
    (4, 'residual', (0, 1), True),
  ]  # net 5: merges 4
  assert architecture.zero_out_degree_merges(specs, SPINENET_STEM) == [(4, 5)]
  assert architecture.unused_blocks(specs, SPINENET_STEM, 3, 4) == [2]
  # The same rule decides in the backbone: only net 5 sums 3 inputs, and net 2,
  # which feeds nothing, is not part of the model.
  model = spinenet.SpineNet(
    input_specs=[None, 64, 64, 3],
    min_level=3,
    max_level=4,
    block_specs=specs,
    filter_size_scale=0.25,
    endpoints_num_filters=8,
  )
  add_inputs = sorted(
    len(layer.input) for layer in model.layers if isinstance(layer, tf_keras.layers.Add)
  )
  assert add_inputs == [2, 2, 3]


def test_draw_published_names_the_figure(tmp_path):
  prefix = str(tmp_path / 'mobile')
  paths = architecture.draw_published('spinenet_mobile', prefix)
  _check_outputs(paths, prefix)
  with pytest.raises(ValueError, match="Unknown architecture family 'resnet'"):
    architecture.draw_published('resnet', prefix)

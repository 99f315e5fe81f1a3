"""Block specifications of scale-permuted networks: topology as data.

A scale-permuted network (SpineNet, Du et al., CVPR 2020, Sec. 3.1) is a list of
blocks. Each block has a feature level L (its resolution is 1/2^L of the input), a
block type, two parent blocks and a flag that marks it as one of the output blocks.
The stem provides the first blocks (SpineNet: two level-2 bottleneck groups;
SpineNet-Mobile: a level-1 and a level-2 inverted bottleneck). Parents index into the
list `stem blocks + blocks built so far`, so block i (0-based) may take any parent
`< num_stem_blocks + i`.

This module holds the published tables, a validator with clear messages and JSON
read/write (`topology.SpecBase`), so that an architecture found by the search is a
file a config can name.
"""

import dataclasses
from typing import Iterable, List, Mapping, Optional, Sequence

from official_spinenet.modeling import topology

BOTTLENECK = 'bottleneck'
RESIDUAL = 'residual'
MBCONV = 'mbconv'
BLOCK_TYPES = (BOTTLENECK, RESIDUAL, MBCONV)
# Output channels of a block over its width (Sec. 3.1): a bottleneck expands 4x.
BLOCK_EXPANSION = {BOTTLENECK: 4, RESIDUAL: 1, MBCONV: 1}


class BlockSpec(topology.SpecBase, node='block', input_name='parent', op_field='block_fn'):
  """One block of a scale-permuted network (`topology.SpecBase`).

  Its op is `block_fn`: 'bottleneck', 'residual' or 'mbconv'; its inputs are its two
  parents in `stem blocks + earlier blocks`.
  """

  @property
  def block_fn(self) -> str:
    return self.op


# SpineNet-49's scale permutation and cross-scale connections (Fig. 4 of the paper),
# in the layout of the reference implementation: indices 0 and 1 are the stem
# blocks. The last, level-2 output block is carried by the reference for
# min_level=2 models; with min_level >= 3 it feeds no endpoint and is not built.
SPINENET_BLOCK_SPECS = (
  (2, BOTTLENECK, (0, 1), False),
  (4, RESIDUAL, (0, 1), False),
  (3, BOTTLENECK, (2, 3), False),
  (4, BOTTLENECK, (2, 4), False),
  (6, RESIDUAL, (3, 5), False),
  (4, BOTTLENECK, (3, 5), False),
  (5, RESIDUAL, (6, 7), False),
  (7, RESIDUAL, (6, 8), False),
  (5, BOTTLENECK, (8, 9), False),
  (5, BOTTLENECK, (8, 10), False),
  (4, BOTTLENECK, (5, 10), True),
  (3, BOTTLENECK, (4, 10), True),
  (5, BOTTLENECK, (7, 12), True),
  (7, BOTTLENECK, (5, 14), True),
  (6, BOTTLENECK, (12, 14), True),
  (2, BOTTLENECK, (2, 13), True),
)

# SpineNet-Mobile (Du et al., "Efficient Scale-Permuted Backbone with Learned
# Resource Distribution", 2020): the SpineNet-49 topology with one more level-2 block
# first, all blocks inverted bottlenecks. Indices 0 and 1 are the L1 and L2 stem, so
# SpineNet-49's parents move up by one; its last (level-2 output) block is left out.
SPINENET_MOBILE_BLOCK_SPECS = ((2, MBCONV, (0, 1), False),) + tuple(
  (level, MBCONV, (parent0 + 1, parent1 + 1), is_output)
  for level, _, (parent0, parent1), is_output in SPINENET_BLOCK_SPECS[:-1]
)

# Block widths per level before `filter_size_scale` (Table 1 / Sec. 3.1). A
# bottleneck block outputs 4x this width, a residual block this width.
SPINENET_FILTER_SIZE_MAP = {1: 32, 2: 64, 3: 128, 4: 256, 5: 256, 6: 256, 7: 256}
SPINENET_MOBILE_FILTER_SIZE_MAP = {0: 8, 1: 16, 2: 24, 3: 40, 4: 80, 5: 112, 6: 112, 7: 112}


@dataclasses.dataclass(frozen=True)
class SpineNetScaling:
  """Width and depth scaling of a SpineNet model id (Sec. 4.1, Table 2)."""

  endpoints_num_filters: int
  filter_size_scale: float
  resample_alpha: float
  block_repeats: int


SPINENET_SCALING = {
  '49S': SpineNetScaling(128, 0.65, 0.5, 1),
  '49': SpineNetScaling(256, 1.0, 0.5, 1),
  '96': SpineNetScaling(256, 1.0, 0.5, 2),
  '143': SpineNetScaling(256, 1.0, 1.0, 3),
  '143L': SpineNetScaling(256, 1.3, 1.0, 3),
  '190': SpineNetScaling(512, 1.3, 1.0, 4),
}


@dataclasses.dataclass(frozen=True)
class SpineNetMobileScaling:
  endpoints_num_filters: int
  filter_size_scale: float


SPINENET_MOBILE_SCALING = {
  '49': SpineNetMobileScaling(48, 1.0),
  '49S': SpineNetMobileScaling(40, 0.65),
  '49XS': SpineNetMobileScaling(24, 0.6),
}


def lookup_model_id(model_id: str, table: Mapping[str, object], family: str):
  """Returns `table[model_id]` (case-insensitive) or raises a ValueError naming the ids."""
  key = str(model_id).upper()
  if key not in table:
    raise ValueError(f'Unknown {family} model_id {model_id!r}; choose one of {sorted(table)}.')
  return table[key]


def block_output_channels(block_fn: str, filters: int) -> int:
  """Channels a block of type `block_fn` and width `filters` outputs."""
  return filters * BLOCK_EXPANSION[block_fn]


def build_block_specs(
  specs: Optional[Iterable] = None, default: Sequence = SPINENET_BLOCK_SPECS
) -> List[BlockSpec]:
  """Turns tuples, dicts or BlockSpecs (default: SpineNet-49) into BlockSpecs."""
  return BlockSpec.build(specs, default)


def validate_block_specs(
  specs: Sequence[BlockSpec],
  num_stem_blocks: int,
  min_level: int,
  max_level: int,
  allowed_block_fns: Sequence[str] = BLOCK_TYPES,
  max_block_level: Optional[int] = None,
) -> None:
  """Raises ValueError with a clear message if the specs cannot form a network.

  Checks: known block types; parents point at stem blocks or earlier blocks; every
  level in [min_level, max_level] has exactly one output block; block levels lie in
  [1, max_block_level].

  Args:
    specs: the block specs.
    num_stem_blocks: how many stem blocks precede the specs (2 for SpineNet).
    min_level: lowest endpoint level.
    max_level: highest endpoint level.
    allowed_block_fns: block types the backbone can build.
    max_block_level: highest level a block may have (default: max_level).
  """
  max_block_level = max_level if max_block_level is None else max_block_level
  BlockSpec.validate_graph(
    specs,
    num_stem_blocks,
    f'{num_stem_blocks} stem blocks',
    (min_level, max_level),
    allowed_block_fns,
    (1, max_block_level),
    'the allowed range',
  )


def validate_input_size(
  input_shape: Sequence[Optional[int]], max_level: int, name: str = 'backbone'
) -> None:
  """Raises if a static input height/width is not divisible by 2^max_level.

  The coarsest feature map is 1/2^max_level of the input; cross-scale sums need every
  level to be an exact power-of-two division (SpineNet Sec. 3.1; NAS-FPN pads to 128).
  """
  stride = 2**max_level
  for axis, size in zip(('height', 'width'), input_shape[1:3]):
    if size is not None and size % stride:
      raise ValueError(
        f'{name}: input {axis} {size} is not divisible by 2^max_level = {stride}; '
        f'resize or pad the image to a multiple of {stride} (e.g. '
        f'{-(-size // stride) * stride}).'
      )


def block_specs_to_json(specs: Sequence[BlockSpec]) -> str:
  return BlockSpec.to_json(specs)


def save_block_specs(specs: Sequence[BlockSpec], path: str) -> None:
  """Writes specs as JSON atomically (a temporary file renamed into place)."""
  BlockSpec.save(specs, path)


def load_block_specs(path: str) -> List[BlockSpec]:
  """Reads block specs written by `save_block_specs` (a JSON list of dicts)."""
  return BlockSpec.load(path)

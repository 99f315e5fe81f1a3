"""Block specifications of scale-permuted networks: topology as data.

A scale-permuted network (SpineNet, Du et al., CVPR 2020, Sec. 3.1) is a list of
blocks. Each block has a feature level L (its resolution is 1/2^L of the input), a
block type, two parent blocks and a flag that marks it as one of the output blocks.
The stem provides the first blocks (SpineNet: two level-2 bottleneck groups;
SpineNet-Mobile: a level-1 and a level-2 inverted bottleneck). Parents index into the
list `stem blocks + blocks built so far`, so block i (0-based) may take any parent
`< num_stem_blocks + i`.

This module holds the published tables, a validator with clear messages and JSON
read/write, so that an architecture found by the search is a file a config can name.
"""

import dataclasses
import json
import os
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple, Union

BOTTLENECK = 'bottleneck'
RESIDUAL = 'residual'
MBCONV = 'mbconv'
BLOCK_TYPES = (BOTTLENECK, RESIDUAL, MBCONV)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One block of a scale-permuted network.

  Attributes:
    level: feature level; the block's output is 1/2^level of the input size.
    block_fn: one of 'bottleneck', 'residual', 'mbconv'.
    input_offsets: indices of the two parents in `stem blocks + earlier blocks`.
    is_output: whether the block gives the endpoint of its level.
  """
  level: int
  block_fn: str
  input_offsets: Tuple[int, int]
  is_output: bool

  def to_dict(self) -> dict:
    return {'level': self.level, 'block_fn': self.block_fn,
            'input_offsets': list(self.input_offsets), 'is_output': self.is_output}

  @classmethod
  def from_any(cls, value: Union['BlockSpec', Mapping, Sequence]) -> 'BlockSpec':
    """Accepts a BlockSpec, a dict (JSON form) or a (level, fn, (a, b), out) tuple."""
    if isinstance(value, BlockSpec):
      return value
    if isinstance(value, Mapping) or hasattr(value, 'keys'):  # Keras wraps dicts.
      missing = {'level', 'block_fn', 'input_offsets', 'is_output'} - set(value)
      if missing:
        raise ValueError(f'Block spec {dict(value)} lacks the keys {sorted(missing)}.')
      level, block_fn = value['level'], value['block_fn']
      offsets, is_output = value['input_offsets'], value['is_output']
    else:
      if len(value) != 4:
        raise ValueError(f'Block spec {value!r} must be (level, block_fn, '
                         '(input0, input1), is_output).')
      level, block_fn, offsets, is_output = value
    if len(offsets) != 2:
      raise ValueError(f'Block spec {value!r} must have exactly two input offsets.')
    return cls(int(level), str(block_fn), (int(offsets[0]), int(offsets[1])),
               bool(is_output))


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
# Resource Distribution", 2020): the SpineNet-49 topology with one more level-2
# block, all blocks inverted bottlenecks. Indices 0 and 1 are the L1 and L2 stem.
SPINENET_MOBILE_BLOCK_SPECS = (
    (2, MBCONV, (0, 1), False),
    (2, MBCONV, (1, 2), False),
    (4, MBCONV, (1, 2), False),
    (3, MBCONV, (3, 4), False),
    (4, MBCONV, (3, 5), False),
    (6, MBCONV, (4, 6), False),
    (4, MBCONV, (4, 6), False),
    (5, MBCONV, (7, 8), False),
    (7, MBCONV, (7, 9), False),
    (5, MBCONV, (9, 10), False),
    (5, MBCONV, (9, 11), False),
    (4, MBCONV, (6, 11), True),
    (3, MBCONV, (5, 11), True),
    (5, MBCONV, (8, 13), True),
    (7, MBCONV, (6, 15), True),
    (6, MBCONV, (13, 15), True),
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
    raise ValueError(f'Unknown {family} model_id {model_id!r}; choose one of '
                     f'{sorted(table)}.')
  return table[key]


def build_block_specs(specs: Optional[Iterable] = None,
                      default: Sequence = SPINENET_BLOCK_SPECS) -> List[BlockSpec]:
  """Turns tuples, dicts or BlockSpecs (default: SpineNet-49) into BlockSpecs."""
  return [BlockSpec.from_any(s) for s in (default if specs is None else specs)]


def validate_block_specs(specs: Sequence[BlockSpec], num_stem_blocks: int,
                         min_level: int, max_level: int,
                         allowed_block_fns: Sequence[str] = BLOCK_TYPES,
                         max_block_level: Optional[int] = None) -> None:
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
  if not specs:
    raise ValueError('block_specs is empty.')
  if min_level > max_level:
    raise ValueError(f'min_level {min_level} is greater than max_level {max_level}.')
  max_block_level = max_level if max_block_level is None else max_block_level
  output_levels = {}
  for i, spec in enumerate(specs):
    if spec.block_fn not in allowed_block_fns:
      raise ValueError(f'Block spec {i} has block_fn {spec.block_fn!r}; this backbone '
                       f'builds {list(allowed_block_fns)}.')
    if not 1 <= spec.level <= max_block_level:
      raise ValueError(f'Block spec {i} has level {spec.level}, outside the allowed '
                       f'range [1, {max_block_level}].')
    limit = num_stem_blocks + i
    for offset in spec.input_offsets:
      if not 0 <= offset < limit:
        raise ValueError(
            f'Block spec {i} has parent {offset}, out of range: it may use the '
            f'{num_stem_blocks} stem blocks and the blocks before it (0..{limit - 1}).')
    if spec.is_output:
      if spec.level in output_levels:
        raise ValueError(f'Block specs {output_levels[spec.level]} and {i} are both '
                         f'output blocks of level {spec.level}.')
      output_levels[spec.level] = i
  missing = [l for l in range(min_level, max_level + 1) if l not in output_levels]
  if missing:
    raise ValueError(f'No output block for levels {missing}; the endpoints need one '
                     f'output block per level in [{min_level}, {max_level}].')


def validate_input_size(input_shape: Sequence[Optional[int]], max_level: int,
                        name: str = 'backbone') -> None:
  """Raises if a static input height/width is not divisible by 2^max_level.

  The coarsest feature map is 1/2^max_level of the input; cross-scale sums need every
  level to be an exact power-of-two division (SpineNet Sec. 3.1; NAS-FPN pads to 128).
  """
  stride = 2 ** max_level
  for axis, size in zip(('height', 'width'), input_shape[1:3]):
    if size is not None and size % stride:
      raise ValueError(
          f'{name}: input {axis} {size} is not divisible by 2^max_level = {stride}; '
          f'resize or pad the image to a multiple of {stride} (e.g. '
          f'{-(-size // stride) * stride}).')


def block_specs_to_json(specs: Sequence[BlockSpec]) -> str:
  return json.dumps([BlockSpec.from_any(s).to_dict() for s in specs], indent=1)


def save_block_specs(specs: Sequence[BlockSpec], path: str) -> None:
  """Writes specs as JSON atomically (a temporary file renamed into place)."""
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(block_specs_to_json(specs))
  os.replace(tmp, path)


def load_block_specs(path: str) -> List[BlockSpec]:
  """Reads block specs written by `save_block_specs` (a JSON list of dicts)."""
  try:
    with open(path) as f:
      data = json.load(f)
  except FileNotFoundError as e:
    raise ValueError(f'Block spec file {path!r} does not exist.') from e
  except json.JSONDecodeError as e:
    raise ValueError(f'Block spec file {path!r} is not valid JSON: {e}') from e
  if isinstance(data, Mapping) and 'block_specs' in data:
    data = data['block_specs']
  if not isinstance(data, list):
    raise ValueError(f'Block spec file {path!r} must hold a JSON list of block specs.')
  specs = []
  for i, item in enumerate(data):
    try:
      specs.append(BlockSpec.from_any(item))
    except (ValueError, TypeError) as e:
      raise ValueError(f'Block spec file {path!r}, entry {i}: {e}') from e
  return specs

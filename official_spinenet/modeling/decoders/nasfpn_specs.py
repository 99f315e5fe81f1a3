"""Merging-cell specifications of NAS-FPN: topology as data.

NAS-FPN (Ghiasi, Lin, Le, CVPR 2019, Sec. 3.1 and Fig. 3) builds one pyramid network
from merging cells. The network starts from the input pyramid, one feature map per
level min_level..max_level (node indices 0 .. num_levels - 1, finest first). Each
merging cell picks two earlier nodes (`input_offsets`), resamples both to its output
level, combines them with a binary operation ('sum', or 'global_attention': the
paper's "global pooling" op, Fig. 4) and appends its output as the next node. The
last num_levels cells are the output cells, one per level; they form the output
pyramid {P_min_level, ..., P_max_level} (Sec. 3.1) and absorb the nodes of
their level that no cell consumed.

This module holds the cell the paper's search discovered (Fig. 6; the same table as
tf-models-official's NAS-FPN), a validator with clear messages and JSON read/write, so
that a searched cell is a file a config can name.
"""

import dataclasses
import json
import os
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple, Union

SUM = 'sum'
GLOBAL_ATTENTION = 'global_attention'
BINARY_OPS = (SUM, GLOBAL_ATTENTION)
# Other names of the binary ops: tf-models-official's tables say 'attention'.
_OP_ALIASES = {'attention': GLOBAL_ATTENTION}
_KEYS = ('level', 'binary_op', 'input_offsets', 'is_output')


@dataclasses.dataclass(frozen=True)
class CellSpec:
  """One merging cell.

  Attributes:
    level: output level; the cell's output is 1/2^level of the image size.
    binary_op: 'sum' or 'global_attention' (Sec. 3.1, Fig. 4).
    input_offsets: indices of the two inputs in `input pyramid + earlier cells`.
    is_output: whether the cell gives the output of its level.
  """
  level: int
  binary_op: str
  input_offsets: Tuple[int, int]
  is_output: bool

  def to_dict(self) -> dict:
    return {**dataclasses.asdict(self), 'input_offsets': list(self.input_offsets)}

  @classmethod
  def from_any(cls, value: Union['CellSpec', Mapping, Sequence]) -> 'CellSpec':
    """Accepts a CellSpec, a dict (JSON form) or a (level, op, (a, b), out) tuple.

    tf-models-official's op name 'attention' is read as 'global_attention'.
    """
    if isinstance(value, CellSpec):
      return value
    is_mapping = isinstance(value, Mapping) or hasattr(value, 'keys')  # Keras wraps dicts.
    if not is_mapping and len(value) != len(_KEYS):
      raise ValueError(f'Cell spec {value!r} must be (level, binary_op, (input0, input1), '
                       'is_output).')
    fields = dict(value) if is_mapping else dict(zip(_KEYS, value))
    missing = sorted(set(_KEYS) - set(fields))
    if missing:
      raise ValueError(f'Cell spec {fields} lacks the keys {missing}.')
    offsets, op = fields['input_offsets'], str(fields['binary_op'])
    if len(offsets) != 2:
      raise ValueError(f'Cell spec {value!r} must have exactly two input offsets.')
    return cls(int(fields['level']), _OP_ALIASES.get(op, op),
               (int(offsets[0]), int(offsets[1])), bool(fields['is_output']))


# The merging cells found by the search (NAS-FPN Fig. 6), for levels 3..7: nodes 0-4
# are P3..P7 of the input pyramid. Two intermediate cells, then the output cells of
# P3, P4, P5, P7 and P6.
NASFPN_CELL_SPECS = (
    (4, GLOBAL_ATTENTION, (1, 3), False),
    (4, SUM, (1, 5), False),
    (3, SUM, (0, 6), True),
    (4, SUM, (6, 7), True),
    (5, GLOBAL_ATTENTION, (7, 8), True),
    (7, GLOBAL_ATTENTION, (6, 9), True),
    (6, GLOBAL_ATTENTION, (9, 10), True),
)


def build_cell_specs(specs: Optional[Iterable] = None) -> List[CellSpec]:
  """Turns tuples, dicts or CellSpecs (default: the paper's cell) into CellSpecs."""
  return [CellSpec.from_any(s) for s in (NASFPN_CELL_SPECS if specs is None else specs)]


def resolve_cell_specs(specs) -> List[CellSpec]:
  """Cell specs from None (the paper's cell), a JSON path, or a list of specs."""
  if isinstance(specs, str):
    return load_cell_specs(specs)
  return build_cell_specs(specs)


def validate_cell_specs(specs: Sequence[CellSpec], min_level: int, max_level: int) -> None:
  """Raises ValueError with a clear message if the cells cannot form a pyramid network.

  Checks: known binary ops; cell levels within [min_level, max_level]; two distinct
  inputs, each an input-pyramid node or an earlier cell; the output cells are the
  last num_levels cells, one per level.

  Args:
    specs: the cell specs.
    min_level: lowest pyramid level.
    max_level: highest pyramid level.
  """
  if min_level > max_level:
    raise ValueError(f'min_level {min_level} is greater than max_level {max_level}.')
  num_levels = max_level - min_level + 1
  if len(specs) < num_levels:
    raise ValueError(f'{len(specs)} cell specs cannot give {num_levels} output levels '
                     f'[{min_level}, {max_level}]: the last {num_levels} cells are the '
                     'output cells, one per level.')
  first_output = len(specs) - num_levels
  output_cells = {}
  for i, spec in enumerate(specs):
    if spec.binary_op not in BINARY_OPS:
      raise ValueError(f'Cell spec {i} has binary_op {spec.binary_op!r}; choose one of '
                       f'{list(BINARY_OPS)}.')
    if not min_level <= spec.level <= max_level:
      raise ValueError(f'Cell spec {i} has level {spec.level}, outside the pyramid '
                       f'levels [{min_level}, {max_level}].')
    limit = num_levels + i
    for offset in spec.input_offsets:
      if not 0 <= offset < limit:
        raise ValueError(
            f'Cell spec {i} has input {offset}, out of range: it may use the '
            f'{num_levels} input levels and the cells before it (0..{limit - 1}).')
    if spec.input_offsets[0] == spec.input_offsets[1]:
      raise ValueError(f'Cell spec {i} takes node {spec.input_offsets[0]} twice; a '
                       'merging cell combines two different nodes.')
    if spec.is_output != (i >= first_output):
      raise ValueError(
          f'Cell spec {i} has is_output={spec.is_output}, but the output cells must be '
          f'exactly the last {num_levels} cells (specs {first_output}..{len(specs) - 1}), '
          'one per pyramid level.')
    if spec.is_output:
      if spec.level in output_cells:
        raise ValueError(f'Cell specs {output_cells[spec.level]} and {i} are both output '
                         f'cells of level {spec.level}.')
      output_cells[spec.level] = i
  missing = [l for l in range(min_level, max_level + 1) if l not in output_cells]
  if missing:
    raise ValueError(f'No output cell for levels {missing}; the output cells need one '
                     f'cell per level in [{min_level}, {max_level}].')


def cell_specs_to_json(specs: Sequence) -> str:
  return json.dumps([CellSpec.from_any(s).to_dict() for s in specs], indent=1)


def save_cell_specs(specs: Sequence, path: str) -> None:
  """Writes specs as JSON atomically (a temporary file renamed into place)."""
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(cell_specs_to_json(specs))
  os.replace(tmp, path)


def load_cell_specs(path: str) -> List[CellSpec]:
  """Reads cell specs written by `save_cell_specs` (a JSON list of dicts).

  A dict with the list under 'cell_specs' is accepted too.
  """
  where = f'Cell spec file {path!r}'
  try:
    with open(path) as f:
      data = json.load(f)
  except (FileNotFoundError, json.JSONDecodeError) as e:
    problem = 'does not exist' if isinstance(e, FileNotFoundError) else f'is not valid JSON: {e}'
    raise ValueError(f'{where} {problem}.') from e
  data = data.get('cell_specs') if isinstance(data, Mapping) else data
  if not isinstance(data, list):
    raise ValueError(f'{where} must hold a JSON list of cell specs.')
  specs = []
  for i, item in enumerate(data):
    try:
      specs.append(CellSpec.from_any(item))
    except (ValueError, TypeError) as e:
      raise ValueError(f'{where}, entry {i}: {e}') from e
  return specs

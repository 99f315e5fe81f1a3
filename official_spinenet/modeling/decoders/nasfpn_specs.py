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
tf-models-official's NAS-FPN), a validator with clear messages and JSON read/write
(`topology.SpecBase`), so that a searched cell is a file a config can name.
"""

from typing import Iterable, List, Optional, Sequence

from official_spinenet.modeling import topology

SUM = 'sum'
GLOBAL_ATTENTION = 'global_attention'
BINARY_OPS = (SUM, GLOBAL_ATTENTION)

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


class CellSpec(
  topology.SpecBase,
  node='cell',
  input_name='input',
  op_field='binary_op',
  op_aliases={'attention': GLOBAL_ATTENTION},
):
  """One merging cell (`topology.SpecBase`).

  Its op is `binary_op`: 'sum' or 'global_attention' (Sec. 3.1, Fig. 4); `from_any`
  reads tf-models-official's name 'attention' as 'global_attention'. Its inputs are
  two nodes of `input pyramid + earlier cells`.
  """

  @property
  def binary_op(self) -> str:
    return self.op


def build_cell_specs(specs: Optional[Iterable] = None) -> List[CellSpec]:
  """Turns tuples, dicts or CellSpecs (default: the paper's cell) into CellSpecs."""
  return CellSpec.build(specs, NASFPN_CELL_SPECS)


def resolve_cell_specs(specs) -> List[CellSpec]:
  """Cell specs from None (the paper's cell), a JSON path, or a list of specs."""
  return CellSpec.resolve(specs, NASFPN_CELL_SPECS)


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
  topology.check_level_order(min_level, max_level)
  num_levels = max_level - min_level + 1
  if len(specs) < num_levels:
    raise ValueError(
      f'{len(specs)} cell specs cannot give {num_levels} output levels '
      f'[{min_level}, {max_level}]: the last {num_levels} cells are the '
      'output cells, one per level.'
    )
  first_output = len(specs) - num_levels
  for i, spec in enumerate(specs):
    if spec.input_offsets[0] == spec.input_offsets[1]:
      raise ValueError(
        f'Cell spec {i} takes node {spec.input_offsets[0]} twice; a '
        'merging cell combines two different nodes.'
      )
    if spec.is_output != (i >= first_output):
      raise ValueError(
        f'Cell spec {i} has is_output={spec.is_output}, but the output cells must be '
        f'exactly the last {num_levels} cells (specs {first_output}..{len(specs) - 1}), '
        'one per pyramid level.'
      )
  CellSpec.validate_graph(
    specs,
    num_levels,
    f'{num_levels} input levels',
    (min_level, max_level),
    BINARY_OPS,
    (min_level, max_level),
    'the pyramid levels',
  )


def cell_specs_to_json(specs: Sequence) -> str:
  return CellSpec.to_json(specs)


def save_cell_specs(specs: Sequence, path: str) -> None:
  """Writes specs as JSON atomically (a temporary file renamed into place)."""
  CellSpec.save(specs, path)


def load_cell_specs(path: str) -> List[CellSpec]:
  """Reads cell specs written by `save_cell_specs` (a JSON list of dicts).

  A dict with the list under 'cell_specs' is accepted too.
  """
  return CellSpec.load(path)

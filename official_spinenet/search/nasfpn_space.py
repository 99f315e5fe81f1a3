"""The search space of NAS-FPN merging cells (Ghiasi, Lin, Le, CVPR 2019, Sec. 3.1).

A point is a list of `nasfpn_specs.CellSpec`: the pyramid network starts from the
input pyramid (levels min_level..max_level, nodes 0..num_levels - 1) and adds one
node per merging cell. Each cell (Sec. 3.1, Fig. 3) picks

  step 1-2  two distinct input nodes among the input pyramid and the earlier cells
            (ascending: `merging_cells.merge` orders the inputs of global attention
            by level itself, the first gating on a tie, and sums are symmetric);
  step 3    its output level; the paper forbids stride 8 (level 3) for the
            intermediate cells to keep the computation down
            (`allow_stride8_intermediate` lifts it);
  step 4    its binary op: 'sum' or 'global_attention' (the paper's global pooling).

The last num_levels cells are the output cells; their levels are a searched order of
min_level..max_level (the paper's controller predicts it), so every point has
P3..P7 (default levels) and passes `nasfpn_specs.validate_cell_specs`. The paper's
cell (`NASFPN_CELL_SPECS`, 2 intermediate cells) is a point.

Size with the defaults (2 intermediate cells of 4 levels x 2 ops x C(n, 2) inputs,
then 5! orders and 2 x C(n, 2) per output cell): about 3.0e18 DNAs
(`space.space_size` gives it exactly), each a distinct network.
"""

from typing import Any, Dict, List, Mapping, Sequence

from official_spinenet.modeling.decoders import nasfpn_specs
from official_spinenet.search import choice_space

STRIDE8_LEVEL = 3


class NASFPNSpace(choice_space.SearchSpace):
  """NAS-FPN's merging-cell space (see the module docstring)."""

  spec_class = nasfpn_specs.CellSpec
  builder = 'nasfpn'
  specs_argument = 'cell_specs'

  def __init__(
    self,
    min_level: int = 3,
    max_level: int = 7,
    num_intermediate_cells: int = 2,
    allow_stride8_intermediate: bool = False,
  ):
    """The space of NAS-FPN cells.

    Args:
      min_level: lowest pyramid level; must match the model's.
      max_level: highest pyramid level; must match the model's.
      num_intermediate_cells: cells before the output cells (2 in the paper's cell).
      allow_stride8_intermediate: let intermediate cells have level 3.
    """
    options = dict(
      min_level=min_level,
      max_level=max_level,
      num_intermediate_cells=num_intermediate_cells,
      allow_stride8_intermediate=allow_stride8_intermediate,
    )
    if not (isinstance(min_level, int) and isinstance(max_level, int) and min_level <= max_level):
      raise ValueError(f'nasfpn search space: need min_level <= max_level, got {options}.')
    if not isinstance(num_intermediate_cells, int) or num_intermediate_cells < 0:
      raise ValueError(
        f'nasfpn search space: num_intermediate_cells {num_intermediate_cells!r} must be '
        'an int >= 0.'
      )
    self.levels = tuple(range(min_level, max_level + 1))
    self.intermediate_levels = tuple(
      l for l in self.levels if allow_stride8_intermediate or l != STRIDE8_LEVEL
    )
    if num_intermediate_cells and not self.intermediate_levels:
      raise ValueError(f'nasfpn search space: no level left for intermediate cells: {options}.')
    self.num_intermediate = num_intermediate_cells
    super().__init__('nasfpn', options, self._make_choices())

  def _make_choices(self) -> List[choice_space.Choice]:
    choice = choice_space.Choice
    num_levels, n = len(self.levels), self.num_intermediate
    choices = []
    for i in range(n):
      choices += [
        choice(f'cell{i}_level', self.intermediate_levels, specs=(i,)),
        choice(f'cell{i}_binary_op', nasfpn_specs.BINARY_OPS, specs=(i,)),
        choice(f'cell{i}_inputs', tuple(range(num_levels + i)), 2, True, (i,)),
      ]
    choices.append(
      choice('output_levels', self.levels, num_levels, specs=tuple(range(n, n + num_levels)))
    )
    for j in range(num_levels):
      choices += [
        choice(f'output{j}_binary_op', nasfpn_specs.BINARY_OPS, specs=(n + j,)),
        choice(f'output{j}_inputs', tuple(range(num_levels + n + j)), 2, True, (n + j,)),
      ]
    return choices

  def _specs(self, values: Mapping[str, Any]) -> List[nasfpn_specs.CellSpec]:
    cells = [
      (values[f'cell{i}_level'], values[f'cell{i}_binary_op'], values[f'cell{i}_inputs'], False)
      for i in range(self.num_intermediate)
    ]
    cells += [
      (level, values[f'output{j}_binary_op'], values[f'output{j}_inputs'], True)
      for j, level in enumerate(values['output_levels'])
    ]
    return [nasfpn_specs.CellSpec(l, op, tuple(inputs), out) for l, op, inputs, out in cells]

  def _values(self, specs: Sequence[nasfpn_specs.CellSpec]) -> Dict[str, Any]:
    n, num_levels = self.num_intermediate, len(self.levels)
    if len(specs) != n + num_levels:
      raise ValueError(
        f'{len(specs)} cell specs are outside the nasfpn space: it has {n} intermediate '
        f'cells, then {num_levels} output cells.'
      )
    values = {}
    for i, spec in enumerate(specs):
      if spec.is_output != (i >= n):
        raise ValueError(
          f'{choice_space.describe_specs(specs, [i])} is outside the nasfpn space: its '
          f'first {n} cells are intermediate, the last {num_levels} output cells.'
        )
      prefix = f'cell{i}' if i < n else f'output{i - n}'
      if i < n:
        values[f'{prefix}_level'] = spec.level
      values[f'{prefix}_binary_op'] = spec.binary_op
      values[f'{prefix}_inputs'] = list(spec.input_offsets)
    values['output_levels'] = [spec.level for spec in specs[n:]]
    return values

  def validate(self, specs: Sequence[nasfpn_specs.CellSpec]) -> None:
    nasfpn_specs.validate_cell_specs(specs, self.levels[0], self.levels[-1])

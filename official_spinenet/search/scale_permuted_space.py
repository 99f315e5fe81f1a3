"""Search spaces of scale-permuted backbones: SpineNet, the R-SP ResNets, SpineNet-Mobile.

SpineNet's search space (Du et al., CVPR 2020, Sec. 3.1), a point of which is a list
of `spinenet_specs.BlockSpec` after a fixed stem:

  scale permutation   the N - 5 intermediate blocks take their base levels in a
                      searched order (a permutation of a fixed multiset of levels),
                      then the 5 output blocks take levels 3..7 in a searched order;
  cross-scale         each block picks two distinct parents (ascending: the sum
  connections         of Sec. 3.2 is symmetric) among the earlier blocks; for the
                      intermediate blocks only among the `window` latest (5, the
                      restriction of the paper's search implementation; None
                      lifts it), for the output blocks among all;
  block adjustments   each intermediate block moves its level by an offset in
                      {-1, 0, 1, 2} and each block picks its type, bottleneck or
                      residual. A level outside [1, max_level] after the offset
                      is repaired by clamping it into that range (with the
                      defaults no level leaves it: bases are 2..5).

The multiset of intermediate base levels is R0-SP53's allocation (Sec. 3.3, Table 1:
stem {L2..L5} = {2, 0, 0, 0}, scale-permuted {L2..L7} = {1, 4, 6, 2, 1, 1}) less one
block per output level 3..7: {L2: 1, L3: 3, L4: 5, L5: 1}. SpineNet-49 is a point
(`spaces.PUBLISHED_POINTS`). The space holds 1.6e37 DNAs (`space.space_size`; sizes
of all spaces in `spaces.py`).

The scale-permuted ResNets R35-SP18, R23-SP30, R14-SP39 and R0-SP53 (Sec. 3.3) are
the same space with a longer stem of ResNet bottleneck groups (`SpineNet`'s
`stem_block_levels`), their own allocations, and no block adjustments (offset 0,
bottleneck only), as in the paper's ablation. Their searched block specs were
published only as drawings, so the point each preset names is its scale-decreasing
order: intermediate blocks sorted by level, then the outputs L3..L7, each block
taking the two latest blocks as parents.

SpineNet-Mobile (Du et al., ECCV 2020) has a level-1 and a level-2 stem block and
inverted bottlenecks ('mbconv') only; its space adds one level-2 intermediate
block to SpineNet's allocation, so that SpineNet-Mobile-49 is a point.

A DNA is the permutation of intermediate base levels, then per intermediate block
(level offset, type, parents), then the permutation of output levels, then per
output block (type, parents); a choice with one option is left out. As the base
levels repeat, several DNAs decode to one architecture (e.g. swapping two level-4
bases); `encode` picks one deterministically.
"""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from official_spinenet.modeling.backbones import spinenet
from official_spinenet.modeling.backbones import spinenet_mobile
from official_spinenet.modeling.backbones import spinenet_specs
from official_spinenet.search import choice_space

MIN_LEVEL, MAX_LEVEL = 3, 7
LEVEL_OFFSETS = (-1, 0, 1, 2)
WINDOW = 5
SPINENET_BLOCK_FNS = (spinenet_specs.BOTTLENECK, spinenet_specs.RESIDUAL)
MOBILE_BLOCK_FNS = (spinenet_specs.MBCONV,)


def levels_of(counts: Sequence[int], first_level: int = 2) -> Tuple[int, ...]:
  """(2, 0, 0, 0) -> (2, 2): the levels of blocks counted per level from first_level."""
  return tuple(level for level, n in enumerate(counts, first_level) for _ in range(n))


def intermediate_levels_of(permuted_counts: Sequence[int]) -> Tuple[int, ...]:
  """The scale-permuted blocks {L2..L7} less one output block per level 3..7."""
  levels = list(levels_of(permuted_counts))
  for level in range(MIN_LEVEL, MAX_LEVEL + 1):
    levels.remove(level)
  return tuple(levels)


# Sec. 3.3, Table 1: (stem {L2, L3, L4, L5}, scale-permuted {L2, ..., L7}) counts.
RSP_ALLOCATIONS = {
  'r35_sp18': ((2, 3, 5, 1), (1, 1, 1, 1, 1, 1)),
  'r23_sp30': ((2, 2, 2, 1), (1, 2, 4, 1, 1, 1)),
  'r14_sp39': ((1, 1, 1, 1), (2, 3, 5, 1, 1, 1)),
  'r0_sp53': ((2, 0, 0, 0), (1, 4, 6, 2, 1, 1)),
}
SPINENET_INTERMEDIATE_LEVELS = intermediate_levels_of(RSP_ALLOCATIONS['r0_sp53'][1])
MOBILE_INTERMEDIATE_LEVELS = (2,) + SPINENET_INTERMEDIATE_LEVELS


class ScalePermutedSpace(choice_space.SearchSpace):
  """The space of one scale-permuted family (see the module docstring).

  Attributes (besides `SearchSpace`'s):
    stem_levels: levels of the stem blocks, the input nodes.
    intermediate_levels: the base levels the intermediate blocks permute.
    level_offsets: the level adjustments of an intermediate block.
    block_fns: the block types a block picks from.
    window: how many latest blocks an intermediate block picks parents from
      (None: all earlier blocks).
  """

  spec_class = spinenet_specs.BlockSpec
  specs_argument = 'block_specs'

  def __init__(
    self,
    name: str,
    builder: str,
    options: Mapping[str, Any],
    stem_levels: Sequence[int],
    intermediate_levels: Sequence[int],
    level_offsets: Sequence[int],
    block_fns: Sequence[str],
    window: Optional[int],
    builder_block_fns: Sequence[str],
    stem_override: bool = False,
  ):
    self.builder = builder
    self.stem_levels = tuple(stem_levels)
    self.intermediate_levels = tuple(sorted(int(level) for level in intermediate_levels))
    self.level_offsets = tuple(int(offset) for offset in level_offsets)
    self.block_fns = tuple(block_fns)
    self.window = window
    self._builder_block_fns = tuple(builder_block_fns)
    self._stem_override = stem_override
    self._check_options()
    super().__init__(name, options, self._make_choices())

  def _check_options(self) -> None:
    where = f'{self.builder} search space'
    if not self.level_offsets or len(set(self.level_offsets)) != len(self.level_offsets):
      raise ValueError(
        f'{where}: level_offsets {self.level_offsets} must be distinct ints, >= 1 of them.'
      )
    bad_fns = [fn for fn in self.block_fns if fn not in self._builder_block_fns]
    if not self.block_fns or bad_fns or len(set(self.block_fns)) != len(self.block_fns):
      raise ValueError(
        f'{where}: block_fns {self.block_fns} must be distinct types the builder has: '
        f'{list(self._builder_block_fns)}.'
      )
    if self.window is not None and (not isinstance(self.window, int) or self.window < 2):
      raise ValueError(f'{where}: window {self.window!r} must be None or an int >= 2.')
    bad_levels = [l for l in self.intermediate_levels if not 1 <= l <= MAX_LEVEL]
    if bad_levels:
      raise ValueError(
        f'{where}: intermediate_block_levels {bad_levels} lie outside [1, {MAX_LEVEL}].'
      )

  @property
  def num_intermediate(self) -> int:
    return len(self.intermediate_levels)

  def _make_choices(self) -> List[choice_space.Choice]:
    """The choices in DNA order (see the module docstring)."""
    choice = choice_space.Choice
    n, num_inputs = self.num_intermediate, len(self.stem_levels)
    choices = [choice('intermediate_levels', self.intermediate_levels, n, specs=tuple(range(n)))]
    for i in range(n):
      first = 0 if self.window is None else max(0, num_inputs + i - self.window)
      choices += [
        choice(f'block{i}_level_offset', self.level_offsets, specs=(i,)),
        choice(f'block{i}_block_fn', self.block_fns, specs=(i,)),
        choice(f'block{i}_parents', tuple(range(first, num_inputs + i)), 2, True, (i,)),
      ]
    output_levels = tuple(range(MIN_LEVEL, MAX_LEVEL + 1))
    num_outputs = len(output_levels)
    choices.append(
      choice('output_levels', output_levels, num_outputs, specs=tuple(range(n, n + num_outputs)))
    )
    for j in range(num_outputs):
      choices += [
        choice(f'output{j}_block_fn', self.block_fns, specs=(n + j,)),
        choice(f'output{j}_parents', tuple(range(num_inputs + n + j)), 2, True, (n + j,)),
      ]
    return choices

  def level(self, base: int, offset: int) -> int:
    """A block's level: base + offset, clamped into [1, MAX_LEVEL] (the repair)."""
    return min(max(base + offset, 1), MAX_LEVEL)

  def _specs(self, values: Mapping[str, Any]) -> List[spinenet_specs.BlockSpec]:
    specs = []
    for i, base in enumerate(values['intermediate_levels']):
      specs.append(
        spinenet_specs.BlockSpec(
          self.level(base, values[f'block{i}_level_offset']),
          values[f'block{i}_block_fn'],
          tuple(values[f'block{i}_parents']),
          False,
        )
      )
    for j, level in enumerate(values['output_levels']):
      specs.append(
        spinenet_specs.BlockSpec(
          level, values[f'output{j}_block_fn'], tuple(values[f'output{j}_parents']), True
        )
      )
    return specs

  def _values(self, specs: Sequence[spinenet_specs.BlockSpec]) -> Dict[str, Any]:
    n, num_outputs = self.num_intermediate, MAX_LEVEL - MIN_LEVEL + 1
    if len(specs) != n + num_outputs:
      raise ValueError(
        f'{len(specs)} block specs are outside the {self.name!r} space: it has {n} '
        f'intermediate blocks, then {num_outputs} output blocks.'
      )
    for i, spec in enumerate(specs):
      if spec.is_output != (i >= n):
        raise ValueError(
          f'{choice_space.describe_specs(specs, [i])} is outside the {self.name!r} space: '
          f'its first {n} blocks are intermediate, the last {num_outputs} output blocks.'
        )
    bases = self._base_levels(specs[:n])
    values = {'intermediate_levels': [base for base, _ in bases]}
    for i, (spec, (_, offset)) in enumerate(zip(specs, bases)):
      values[f'block{i}_level_offset'] = offset
      values[f'block{i}_block_fn'] = spec.block_fn
      values[f'block{i}_parents'] = list(spec.input_offsets)
    values['output_levels'] = [spec.level for spec in specs[n:]]
    for j, spec in enumerate(specs[n:]):
      values[f'output{j}_block_fn'] = spec.block_fn
      values[f'output{j}_parents'] = list(spec.input_offsets)
    return values

  def _base_levels(self, specs: Sequence[spinenet_specs.BlockSpec]) -> List[Tuple[int, int]]:
    """(base level, offset) per intermediate spec: an assignment of the bases.

    Depth-first over the specs in order, offsets by preference 0, -1, 1, 2 (the
    smallest adjustment first), bases ascending; deterministic, so one DNA per point.

    Raises:
      ValueError: no assignment exists; names a spec no base reaches if there is one.
    """
    counts = {}
    for base in self.intermediate_levels:
      counts[base] = counts.get(base, 0) + 1
    offsets = sorted(self.level_offsets, key=lambda offset: (abs(offset), offset))
    failed = set()

    def assign(i: int, remaining: Tuple[Tuple[int, int], ...]):
      if i == len(specs):
        return []
      if (i, remaining) in failed:
        return None
      for offset in offsets:
        for base, count in remaining:
          if count and self.level(base, offset) == specs[i].level:
            rest = tuple((b, c - (b == base)) for b, c in remaining)
            tail = assign(i + 1, rest)
            if tail is not None:
              return [(base, offset)] + tail
      failed.add((i, remaining))
      return None

    bases = assign(0, tuple(sorted(counts.items())))
    if bases is not None:
      return bases
    for i, spec in enumerate(specs):
      if not any(self.level(b, o) == spec.level for b in counts for o in offsets):
        raise ValueError(
          f'{choice_space.describe_specs(specs, [i])} is outside the {self.name!r} space: '
          f'no base level {sorted(counts)} with an offset in {list(self.level_offsets)} '
          f'gives level {spec.level}.'
        )
    raise ValueError(
      f'The intermediate block specs (levels {[s.level for s in specs]}) are outside the '
      f'{self.name!r} space: they are not a permutation of the base levels '
      f'{list(self.intermediate_levels)}, each moved by an offset in {list(self.level_offsets)}.'
    )

  def validate(self, specs: Sequence[spinenet_specs.BlockSpec]) -> None:
    spinenet_specs.validate_block_specs(
      specs,
      len(self.stem_levels),
      MIN_LEVEL,
      MAX_LEVEL,
      allowed_block_fns=self._builder_block_fns,
      max_block_level=MAX_LEVEL,
    )

  def builder_overrides(self) -> Dict[str, Any]:
    return {'stem_block_levels': self.stem_levels} if self._stem_override else {}

  def scale_decreasing_point(self) -> List[spinenet_specs.BlockSpec]:
    """Intermediate blocks by level, then outputs L3..L7; parents: the two latest blocks.

    The point an R-SP preset names (its published block specs are drawings only).
    """
    levels = [(l, False) for l in self.intermediate_levels]
    levels += [(l, True) for l in range(MIN_LEVEL, MAX_LEVEL + 1)]
    n = len(self.stem_levels)
    return [
      spinenet_specs.BlockSpec(level, self.block_fns[0], (n + i - 2, n + i - 1), is_output)
      for i, (level, is_output) in enumerate(levels)
    ]


def spinenet_space(
  name: str = 'spinenet',
  stem_block_levels: Optional[Sequence[int]] = None,
  intermediate_block_levels: Sequence[int] = SPINENET_INTERMEDIATE_LEVELS,
  level_offsets: Sequence[int] = LEVEL_OFFSETS,
  block_fns: Sequence[str] = SPINENET_BLOCK_FNS,
  window: Optional[int] = WINDOW,
) -> ScalePermutedSpace:
  """SpineNet's space (Sec. 3.1); every option as the paper's search by default.

  Args:
    name: the space's name.
    stem_block_levels: `SpineNet.stem_block_levels` (None: SpineNet's (2, 2)); a
      given stem is bound with every point (`builder_overrides`).
    intermediate_block_levels: the multiset of intermediate base levels.
    level_offsets: the level adjustments an intermediate block picks from.
    block_fns: the block types each block picks from.
    window: intermediate blocks pick parents among the `window` latest blocks.
  """
  stem = spinenet.DEFAULT_STEM_BLOCK_LEVELS if stem_block_levels is None else stem_block_levels
  options = dict(
    stem_block_levels=stem_block_levels,
    intermediate_block_levels=tuple(intermediate_block_levels),
    level_offsets=tuple(level_offsets),
    block_fns=tuple(block_fns),
    window=window,
  )
  return ScalePermutedSpace(
    name,
    'spinenet',
    options,
    spinenet.check_stem_block_levels(stem, MAX_LEVEL),
    intermediate_block_levels,
    level_offsets,
    block_fns,
    window,
    spinenet.SpineNet.BLOCK_FNS,
    stem_override=stem_block_levels is not None,
  )


def rsp_space(name: str, window: Optional[int] = WINDOW) -> ScalePermutedSpace:
  """A scale-permuted ResNet's space (Sec. 3.3): permutations and connections only."""
  stem_counts, permuted_counts = RSP_ALLOCATIONS[name]
  return spinenet_space(
    name,
    stem_block_levels=levels_of(stem_counts),
    intermediate_block_levels=intermediate_levels_of(permuted_counts),
    level_offsets=(0,),
    block_fns=(spinenet_specs.BOTTLENECK,),
    window=window,
  )


def spinenet_mobile_space(
  intermediate_block_levels: Sequence[int] = MOBILE_INTERMEDIATE_LEVELS,
  level_offsets: Sequence[int] = LEVEL_OFFSETS,
  window: Optional[int] = WINDOW,
) -> ScalePermutedSpace:
  """SpineNet-Mobile's space: SpineNet's with its L1, L2 stem and 'mbconv' blocks."""
  options = dict(
    intermediate_block_levels=tuple(intermediate_block_levels),
    level_offsets=tuple(level_offsets),
    window=window,
  )
  return ScalePermutedSpace(
    'spinenet_mobile',
    'spinenet_mobile',
    options,
    spinenet_mobile.STEM_LEVELS,
    intermediate_block_levels,
    level_offsets,
    MOBILE_BLOCK_FNS,
    window,
    spinenet_mobile.SpineNetMobile.BLOCK_FNS,
  )

"""The decision points of a flat categorical PyGlove space, and which candidates stay valid.

A PyGlove `DNASpec` lists its decision points in order (`dna_spec.decision_points`); a
multi-choice (`pg.sublist_of`, `pg.permutate`) contributes one decision point per
sub-choice. `DNA.to_numbers()` gives one candidate index per decision point in that order.
The PPO controller (one softmax per decision point) and the evolution mutator both work on
these numbers and need the same rules about what a sub-choice may pick given the earlier
sub-choices of its group:

- distinct: no candidate twice in a group (a permutation stays a permutation);
- sorted: candidates in increasing order, leaving room for the sub-choices still to come
  (the j-th of k distinct sorted picks among n is at most n - k + j).

Only flat spaces are supported: every candidate is a constant (no conditional sub-space)
and every decision point is categorical, which is what the SpineNet and NAS-FPN spaces are.
"""

import dataclasses
from typing import List, Sequence

import numpy as np
import pyglove as pg


@dataclasses.dataclass(frozen=True)
class DecisionLayout:
  """Per decision point t (in `dna_spec.decision_points` order), arrays of shape [T].

  Attributes:
    num_candidates: candidates of point t.
    group_start: index of the first decision point of t's multi-choice (t for a one_of).
    group_size: number of sub-choices of t's multi-choice (1 for a one_of).
    distinct: the group's picks must differ.
    sorted: the group's picks must increase.
  """

  num_candidates: np.ndarray
  group_start: np.ndarray
  group_size: np.ndarray
  distinct: np.ndarray
  sorted: np.ndarray

  @property
  def num_decisions(self) -> int:
    return len(self.num_candidates)

  @property
  def max_candidates(self) -> int:
    return self._max_candidates

  def __post_init__(self):
    object.__setattr__(self, '_max_candidates', int(self.num_candidates.max()))

  def fingerprint(self) -> List[List[int]]:
    """A JSON-able summary used to check that a saved state belongs to this space."""
    return [
      [int(n), int(s), int(d), int(o)]
      for n, s, d, o in zip(self.num_candidates, self.group_size, self.distinct, self.sorted)
    ]


def decision_layout(dna_spec: pg.DNASpec) -> DecisionLayout:
  """Reads the decision points of `dna_spec`; ValueError for spaces this module cannot walk."""
  points = list(dna_spec.decision_points)
  if not points:
    raise ValueError('The search space has no decision point.')
  num_candidates, group_start, group_size, distinct, is_sorted = [], [], [], [], []
  for t, point in enumerate(points):
    if not isinstance(point, pg.geno.Choices):
      raise ValueError(
        f'Decision point {point.id} is not categorical ({type(point).__name__}); only '
        'pg.one_of / pg.sublist_of / pg.permutate / pg.manyof spaces are supported.'
      )
    if not all(c.is_constant for c in point.candidates):
      raise ValueError(
        f'Decision point {point.id} has a conditional sub-space; only flat spaces are supported.'
      )
    index = point.subchoice_index or 0
    start = t - index
    if index and points[t - 1].subchoice_index != index - 1:
      raise ValueError(f'Sub-choice {point.id} does not follow its multi-choice siblings.')
    num_candidates.append(len(point.candidates))
    group_start.append(start)
    parent = point.parent_spec if point.is_subchoice else point
    group_size.append(parent.num_choices)
    distinct.append(bool(point.distinct) and parent.num_choices > 1)
    is_sorted.append(bool(point.sorted) and parent.num_choices > 1)
  return DecisionLayout(
    num_candidates=np.array(num_candidates, np.int64),
    group_start=np.array(group_start, np.int64),
    group_size=np.array(group_size, np.int64),
    distinct=np.array(distinct, bool),
    sorted=np.array(is_sorted, bool),
  )


def valid_candidates(layout: DecisionLayout, numbers: Sequence[int], t: int) -> np.ndarray:
  """Boolean mask [max_candidates] of the candidates point t may pick after `numbers[:t]`."""
  n = int(layout.num_candidates[t])
  mask = np.zeros(layout.max_candidates, bool)
  mask[:n] = True
  start = int(layout.group_start[t])
  earlier = [int(v) for v in numbers[start:t]]
  if layout.distinct[t] and earlier:
    mask[earlier] = False
  if layout.sorted[t]:
    if earlier:
      lowest = earlier[-1] + 1 if layout.distinct[t] else earlier[-1]
      mask[:lowest] = False
    if layout.distinct[t]:
      later = int(layout.group_size[t]) - (t - start) - 1
      mask[n - later : n] = False
  return mask


def valid_masks(layout: DecisionLayout, numbers: Sequence[int]) -> np.ndarray:
  """[T, max_candidates] masks of every point along one complete `numbers` (teacher forcing)."""
  return np.stack([valid_candidates(layout, numbers, t) for t in range(layout.num_decisions)])


def check_numbers(layout: DecisionLayout, numbers: Sequence[int]) -> List[int]:
  """`numbers` as ints if they are a point of the space; ValueError naming the first bad one."""
  numbers = [int(v) for v in numbers]
  if len(numbers) != layout.num_decisions:
    raise ValueError(
      f'DNA {numbers} has {len(numbers)} decisions; the space has {layout.num_decisions}.'
    )
  for t, value in enumerate(numbers):
    if not 0 <= value < layout.num_candidates[t] or not valid_candidates(layout, numbers, t)[value]:
      raise ValueError(f'DNA {numbers}: choice {value} at decision point {t} is not allowed.')
  return numbers


def dna_from_numbers(numbers: Sequence[int], dna_spec: pg.DNASpec) -> pg.DNA:
  """`pg.DNA.from_numbers` for numbers already checked against the layout, ~3x faster.

  PyGlove's runtime type checks and change notifications cost about two thirds of building
  a DNA (roughly 1 ms per decision point on this machine); the numbers were produced under
  the masks (or passed `check_numbers`), so the checks cannot fail here.
  """
  with pg.enable_type_check(False), pg.notify_on_change(False):
    return pg.DNA.from_numbers(list(numbers), dna_spec)

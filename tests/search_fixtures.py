"""Small PyGlove spaces and fast helpers for the search algorithm tests.

The spaces have the kinds of decisions the SpineNet / NAS-FPN spaces have (one_of, sorted
distinct pairs, permutations, ordered sub-lists), without depending on search/spaces.py.
"""

import random
import time
from typing import Callable, List, Sequence

import numpy as np
import pyglove as pg


def mixed_space(scale: int = 1) -> pg.DNASpec:
  """A flat space of every decision kind; 17 * scale decision points.

  Per unit: 4 one_of(3), 2 sorted distinct pairs of 5 (the 'two parents' of a block), a
  permutation of 4 (the block order), an ordered distinct sub-list of 2 of 3 and a sorted
  distinct triple of 4 (the first pick must leave room for two more).
  """
  items = []
  for _ in range(scale):
    items += [pg.one_of(list(range(3))) for _ in range(4)]
    items += [
      pg.sublist_of(2, list(range(5)), choices_distinct=True, choices_sorted=True) for _ in range(2)
    ]
    items += [pg.permutate(list(range(4)))]
    items += [pg.sublist_of(2, list(range(3)), choices_distinct=True, choices_sorted=False)]
    items += [pg.sublist_of(3, list(range(4)), choices_distinct=True, choices_sorted=True)]
  return pg.dna_spec(pg.List(items))


def learning_space() -> pg.DNASpec:
  """The learning test's space: 48 decision points, ~1e28 points.

  12 one_of(4), 6 sorted pairs of 6, a permutation of 8, a permutation of 6 (as a sub-list
  of 6 of 6), 10 one_of(2).
  """
  items = [pg.one_of(list(range(4))) for _ in range(12)]
  items += [
    pg.sublist_of(2, list(range(6)), choices_distinct=True, choices_sorted=True) for _ in range(6)
  ]
  items += [pg.permutate(list(range(8)))]
  items += [pg.sublist_of(6, list(range(6)), choices_distinct=True, choices_sorted=False)]
  items += [pg.one_of(list(range(2))) for _ in range(10)]
  return pg.dna_spec(pg.List(items))


def groups(dna_spec: pg.DNASpec) -> List[pg.geno.Choices]:
  """The top-level choices of a flat space built by the functions above, in order."""
  return list(dna_spec.elements)


def assert_valid_numbers(dna_spec: pg.DNASpec, numbers: Sequence[int]) -> None:
  """Checks the rules directly (independently of search/decisions.py)."""
  position = 0
  for choice in groups(dna_spec):
    picks = list(numbers[position : position + choice.num_choices])
    position += choice.num_choices
    assert all(0 <= v < len(choice.candidates) for v in picks), (picks, choice)
    if choice.num_choices > 1 and choice.distinct:
      assert len(set(picks)) == len(picks), picks
    if choice.num_choices > 1 and choice.sorted:
      assert picks == sorted(picks), picks
  assert position == len(numbers)


def pyglove_random_numbers(dna_spec: pg.DNASpec, seed: int, count: int) -> List[List[int]]:
  """What `pg.geno.Random(seed)` proposes on these spaces, as numbers, without building DNAs.

  Mirrors `Choices._random_dna` (sample if distinct, else randint; sort if sorted); the
  tests check it against pg.geno.Random itself on the first proposals. PyGlove needs ~1 ms
  per decision point to build a DNA, which would make a 3 x 300-trial baseline take minutes.
  """
  rng = random.Random(seed)
  proposals = []
  for _ in range(count):
    numbers = []
    for choice in groups(dna_spec):
      n = len(choice.candidates)
      if choice.distinct:
        picks = rng.sample(list(range(n)), choice.num_choices)
      else:
        picks = [rng.randint(0, n - 1) for _ in range(choice.num_choices)]
      numbers += sorted(picks) if choice.sorted else picks
    proposals.append(numbers)
  return proposals


def numbers_reward(dna_spec: pg.DNASpec, seed: int) -> Callable[[Sequence[int]], float]:
  """`synthetic_reward.hidden_target_reward` on numbers (checked equal in the tests)."""
  target = np.array(dna_spec.random_dna(random.Random(seed)).to_numbers())
  return lambda numbers: float(np.mean(np.asarray(numbers) == target))


def compare_with_random(
  name: str,
  spec: pg.DNASpec,
  seeds: Sequence[int],
  trials: int,
  algorithm_best: Callable[[int, Callable[[Sequence[int]], float]], float],
):
  """Best synthetic reward of an algorithm and of pg.geno.Random per seed, same budget.

  `algorithm_best(seed, reward)` runs the algorithm for `trials` and returns its best; each
  seed has its own hidden target. Asserts the algorithm wins on every seed and prints both.
  """
  start = time.time()
  best, random_best = [], []
  for seed in seeds:
    reward = numbers_reward(spec, 100 + seed)
    best.append(algorithm_best(seed, reward))
    random_best.append(max(map(reward, pyglove_random_numbers(spec, seed, trials))))
  print(f'best after {trials}: {name} {best} random {random_best} ({time.time() - start:.1f} s)')
  assert all(b > r for b, r in zip(best, random_best)), (name, best, random_best)
  return best, random_best

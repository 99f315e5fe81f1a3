"""A synthetic reward for dry runs and tests of the search: agreement with a hidden target.

It costs nothing to evaluate, has one known optimum (reward 1.0) and rewards partial progress
decision by decision, so it tells whether a search algorithm learns (the controller's test:
its best after a fixed budget beats random search's) without training any proxy model.
"""

import random
from typing import Callable

import pyglove as pg


def hidden_target_reward(dna_spec: pg.DNASpec, seed: int) -> Callable[[pg.DNA], float]:
  """Returns reward(dna) = fraction of decision points whose choice equals a hidden target's.

  Args:
    dna_spec: the search space (`pg.dna_spec(hyper_value)`).
    seed: picks the target, a uniformly random point of the space.

  Returns:
    A function of a DNA of the space, with values in [0, 1]; 1 exactly at the target.
  """
  target = dna_spec.random_dna(random.Random(seed)).to_dict('id', 'choice')
  num_points = len(target)

  def reward(dna: pg.DNA) -> float:
    if dna.spec is not dna_spec:  # e.g. rebuilt from numbers without a spec; also validates
      dna = pg.DNA.from_numbers(dna.to_numbers(), dna_spec)
    choices = dna.to_dict('id', 'choice')
    return sum(choices.get(point) == choice for point, choice in target.items()) / num_points

  return reward

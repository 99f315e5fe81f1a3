"""Search algorithms: building them, evolution's mutator and learning, resuming each one."""

import numpy as np
import pyglove as pg
import pytest

from official_spinenet.search import algorithms
from official_spinenet.search import decisions
from official_spinenet.search import ppo_controller
from tests import search_fixtures


def _built(name, spec, seed=0, **options):
  algorithm = algorithms.build_algorithm(name, seed, **options)
  algorithm.setup(spec)
  return algorithm


def test_build_algorithm_names_and_options():
  assert isinstance(algorithms.build_algorithm('random', 1), pg.geno.Random)
  assert isinstance(algorithms.build_algorithm('evolution', 1), pg.evolution.Evolution)
  ppo = algorithms.build_algorithm('ppo', 1, batch_size=4, learning_rate=0.02)
  assert isinstance(ppo, ppo_controller.PPOController) and ppo.batch_size == 4
  with pytest.raises(ValueError, match=r"'reinforce'.*\('random', 'evolution', 'ppo'\)"):
    algorithms.build_algorithm('reinforce')
  with pytest.raises(ValueError, match=r"\['population'\].*'evolution'.*population_size"):
    algorithms.build_algorithm('evolution', population=10)
  with pytest.raises(ValueError, match=r"\['batch_size'\].*'random'"):
    algorithms.build_algorithm('random', batch_size=4)
  with pytest.raises(ValueError, match='tournament_size'):
    algorithms.build_algorithm('evolution', tournament_size=1)
  with pytest.raises(ValueError, match="'ppo'"):
    algorithms.build_algorithm('ppo', batch_size=0)


def test_mutator_changes_one_decision_and_keeps_the_dna_valid():
  spec = search_fixtures.mixed_space()
  mutator = algorithms.CategoricalMutator(seed=0)
  parent = pg.DNA.from_numbers(search_fixtures.pyglove_random_numbers(spec, 1, 1)[0], spec)
  for _ in range(40):
    child = mutator.mutate(parent)
    spec.validate(child)
    search_fixtures.assert_valid_numbers(spec, child.to_numbers())
    differences = np.sum(np.array(child.to_numbers()) != np.array(parent.to_numbers()))
    assert 1 <= differences <= 3, (parent, child)  # one pick, a swap, or a re-sorted group
    parent = child


def _evolution_best(spec, seed, trials, reward):
  evolution = _built('evolution', spec, seed)
  best = 0.0
  for _ in range(trials):
    dna = evolution.propose()
    value = reward(dna.to_numbers())
    best = max(best, value)
    evolution.feedback(dna, value)
  return best


def _compare_with_random(spec, seeds, trials):
  return search_fixtures.compare_with_random(
    'evolution',
    spec,
    seeds,
    trials,
    lambda seed, reward: _evolution_best(spec, seed, trials, reward),
  )


def test_evolution_beats_random_search():
  """Regularized evolution with the categorical mutator on the synthetic reward (one seed).

  PyGlove takes ~1 ms per decision point to build each child DNA: 34 decisions, 120 trials.
  """
  _compare_with_random(search_fixtures.mixed_space(scale=2), seeds=(0,), trials=120)


@pytest.mark.slow
def test_evolution_beats_random_search_on_the_learning_space():
  """The PPO learning test's setting (48 decisions, 300 trials, 3 seeds) for evolution."""
  evolution_best, random_best = _compare_with_random(
    search_fixtures.learning_space(), seeds=(0, 1, 2), trials=300
  )
  assert np.mean(evolution_best) > np.mean(random_best) + 0.1


def _drive(algorithm, spec, reward, trials, in_flight):
  """Runs `trials` proposals; all but the last `in_flight` get feedback. Returns the history."""
  history = [[algorithm.propose(), None] for _ in range(trials)]
  for entry in history[: trials - in_flight]:
    entry[1] = reward(entry[0].to_numbers())
    # A DNA rebuilt from numbers (without the proposal's metadata), as Ray's trials return.
    algorithm.feedback(decisions.dna_from_numbers(entry[0].to_numbers(), spec), entry[1])
  return [tuple(entry) for entry in history]


@pytest.mark.parametrize('name', algorithms.ALGORITHMS)
def test_restore_state_continues_like_the_uninterrupted_run(name, tmp_path):
  spec = search_fixtures.mixed_space()
  reward = search_fixtures.numbers_reward(spec, 3)
  options = {'evolution': {'population_size': 6, 'tournament_size': 3}, 'ppo': {'batch_size': 4}}
  original = _built(name, spec, 5, **options.get(name, {}))
  history = _drive(original, spec, reward, 14, in_flight=2)
  algorithms.save_state(original, str(tmp_path))
  restored = _built(name, spec, 5, **options.get(name, {}))
  algorithms.restore_state(restored, str(tmp_path), history)
  assert restored.num_proposals == original.num_proposals == 14
  assert restored.num_feedbacks == original.num_feedbacks == 12
  for dna, _ in history[-2:]:  # the in-flight trials finish after the restart
    for algorithm in (original, restored):
      algorithm.feedback(decisions.dna_from_numbers(dna.to_numbers(), spec), 0.5)
  expected = [h[0].to_numbers() for h in _drive(original, spec, reward, 8, in_flight=0)]
  assert [h[0].to_numbers() for h in _drive(restored, spec, reward, 8, in_flight=0)] == expected


@pytest.mark.parametrize('saved', [False, True])
@pytest.mark.parametrize('name', algorithms.ALGORITHMS)
def test_restore_with_history_past_the_saved_state(name, saved, tmp_path):
  """Killed before any save, or some trials after the last one: the history fills the gap.

  Random search is still exact (PyGlove replays its draws); evolution and PPO rebuild their
  population / policy from the history and continue on fresh, deterministic streams instead
  of re-drawing what the lost process proposed.
  """
  spec = search_fixtures.mixed_space()
  reward = search_fixtures.numbers_reward(spec, 3)
  options = {'evolution': {'population_size': 4, 'tournament_size': 2}, 'ppo': {'batch_size': 4}}
  original = _built(name, spec, 5, **options.get(name, {}))
  history = _drive(original, spec, reward, 6, in_flight=0)
  if saved:
    algorithms.save_state(original, str(tmp_path))
  history += _drive(original, spec, reward, 5, in_flight=1)  # after the save: to be recovered
  history[-1] = (history[-1][0], reward(history[-1][0].to_numbers()))  # finished in the crash
  original.feedback(history[-1][0], history[-1][1])
  lost = [h[0].to_numbers() for h in _drive(original, spec, reward, 4, in_flight=0)]
  continued = []
  for _ in range(1 if name == 'ppo' else 2):  # PPO's determinism is pinned elsewhere
    restored = _built(name, spec, 5, **options.get(name, {}))
    algorithms.restore_state(restored, str(tmp_path), history)
    assert (restored.num_proposals, restored.num_feedbacks) == (11, 11)
    continued.append([h[0].to_numbers() for h in _drive(restored, spec, reward, 4, 0)])
  assert continued[0] == continued[-1]  # deterministic
  if name == 'random':
    assert continued[0] == lost
  else:
    assert continued[0] != lost


def test_restore_rejects_a_state_from_another_run(tmp_path):
  spec = search_fixtures.mixed_space()
  reward = search_fixtures.numbers_reward(spec, 3)
  evolution = _built('evolution', spec, 1, population_size=4, tournament_size=2)
  history = _drive(evolution, spec, reward, 5, in_flight=0)
  algorithms.save_state(evolution, str(tmp_path))
  with pytest.raises(ValueError, match='RegularizedEvolution'):
    algorithms.restore_state(_built('random', spec, 1), str(tmp_path), history)
  ppo = _built('ppo', spec, 1)
  _drive(ppo, spec, reward, 5, in_flight=0)
  algorithms.save_state(ppo, str(tmp_path))
  other = list(reversed(history))
  with pytest.raises(ValueError, match='disagrees with the history at trial 0'):
    algorithms.restore_state(_built('ppo', spec, 1), str(tmp_path), other)

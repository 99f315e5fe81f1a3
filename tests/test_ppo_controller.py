"""The PPO controller: valid proposals, masking, its two forward passes, learning, state."""

import random

import numpy as np
import pyglove as pg
import pytest
import tensorflow as tf

from official_spinenet.search import decisions
from official_spinenet.search import ppo_controller
from official_spinenet.search import synthetic_reward
from tests import search_fixtures

LEARNING_BUDGET = 300
LEARNING_SEEDS = (0, 1, 2)


def _controller(spec, seed=0, **options):
  controller = ppo_controller.PPOController(seed=seed, **options)
  controller.setup(spec)
  return controller


def _run(controller, reward, trials):
  """Propose / feed back `trials` times (numbers API); returns the rewards in order."""
  rewards = []
  for _ in range(trials):
    numbers = controller.propose_numbers()
    rewards.append(reward(numbers))
    controller.feedback_numbers(numbers, rewards[-1])
  return rewards


def test_proposals_are_always_valid():
  spec = search_fixtures.mixed_space(scale=2)
  controller = _controller(spec, batch_size=50)
  reward = search_fixtures.numbers_reward(spec, 7)
  for i in range(500):
    if i % 100 == 0:  # through PyGlove: a DNA its own spec validates, numbers round-trip
      dna = controller.propose()
      spec.validate(dna)
      assert pg.DNA.from_numbers(dna.to_numbers(), spec) == dna
      numbers = dna.to_numbers()
    else:
      numbers = controller.propose_numbers()
    search_fixtures.assert_valid_numbers(spec, numbers)
    controller.feedback_numbers(numbers, reward(numbers))  # learning moves the distribution
  assert controller.num_proposals == controller.num_feedbacks == 500
  assert controller.num_updates == 10


def test_masking_gives_chosen_and_out_of_order_candidates_zero_probability():
  spec = pg.dna_spec(
    pg.List(
      [
        pg.permutate(list(range(4))),
        pg.sublist_of(3, list(range(5)), choices_distinct=True, choices_sorted=True),
      ]
    )
  )
  controller = _controller(spec, seed=3)
  dna = pg.DNA.from_numbers([2, 0, 3, 1, 1, 2, 4], spec)
  probs = controller.probabilities(dna)  # [T, K]
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-9)
  # Permutation: every candidate already placed has probability 0; the last one is forced.
  for t, placed in enumerate([[], [2], [2, 0], [2, 0, 3]]):
    free = np.setdiff1d(range(4), placed)
    assert (probs[t, placed] == 0).all() and (probs[t, free] > 0).all()
  assert probs[3, 1] == 1.0
  # Sorted triple of 5 picked as (1, 2, 4): the first pick leaves room for two more (<= 2),
  # each later one is above the previous and leaves room for the rest.
  np.testing.assert_array_equal(probs[4] > 0, [True, True, True, False, False])
  np.testing.assert_array_equal(probs[5] > 0, [False, False, True, True, False])
  np.testing.assert_array_equal(probs[6] > 0, [False, False, False, True, True])
  with pytest.raises(ValueError, match='not allowed'):
    controller.feedback_numbers([0, 0, 1, 2, 1, 2, 4], 0.5)  # a repeated permutation entry


def test_numpy_sampler_and_tensorflow_update_agree_on_log_probs():
  spec = search_fixtures.mixed_space()
  controller = _controller(spec, seed=5, tanh_constant=2.5, init_scale=1.0)  # far from uniform
  layout = decisions.decision_layout(spec)
  samples = [controller.propose_numbers() for _ in range(6)]
  actions = tf.constant(samples, tf.int32)
  masks = tf.constant(np.stack([decisions.valid_masks(layout, s) for s in samples]))
  network = controller._network  # pylint: disable=protected-access
  log_softmax = ppo_controller._masked_log_softmax(network.logits(actions, 2.5), masks)  # pylint: disable=protected-access
  tf_log_probs = tf.reduce_sum(tf.gather(log_softmax, actions, batch_dims=2), axis=1).numpy()
  numpy_log_probs = [lp for _, lp in controller._inflight]  # pylint: disable=protected-access
  np.testing.assert_allclose(tf_log_probs, numpy_log_probs, rtol=1e-4, atol=1e-4)


def test_same_seed_same_proposals_and_dna_path_equals_numbers_path():
  spec = search_fixtures.mixed_space()
  reward = synthetic_reward.hidden_target_reward(spec, 4)
  a, b = _controller(spec, seed=11, batch_size=4), _controller(spec, seed=11, batch_size=4)
  for _ in range(10):
    dna = a.propose()
    numbers = b.propose_numbers()
    assert dna.to_numbers() == numbers
    a.feedback(dna, reward(dna))
    b.feedback_numbers(numbers, reward(dna))
  assert a.baseline == b.baseline and a.num_updates == b.num_updates == 2
  other = _controller(spec, seed=12)
  assert [other.propose_numbers() for _ in range(3)] != [a.propose_numbers() for _ in range(3)]


def test_synthetic_reward_counts_agreeing_decision_points():
  spec = search_fixtures.mixed_space()
  reward = synthetic_reward.hidden_target_reward(spec, 9)
  target = search_fixtures.numbers_reward(spec, 9)
  controller = _controller(spec)
  for _ in range(5):
    dna = controller.propose()
    assert reward(dna) == pytest.approx(target(dna.to_numbers()))
    assert reward(pg.DNA(dna.to_numbers(flatten=False))) == reward(dna)  # without a spec
  target_numbers = spec.random_dna(random.Random(9)).to_numbers()  # how the target is drawn
  assert reward(pg.DNA.from_numbers(target_numbers, spec)) == 1.0
  target_numbers[0] = (target_numbers[0] + 1) % 3  # the first point is a one_of(3)
  assert reward(pg.DNA.from_numbers(target_numbers, spec)) == 1 - 1 / 17


def test_controller_learns_to_beat_random_search():
  """NAS-FPN Fig. 4 / Zoph & Le: the RL controller finds better points than random search.

  Synthetic reward on a 48-decision space; each seed gets its own hidden target; both use
  the same budget. Random search is pg.geno.Random's exact proposal sequence (as numbers).
  """
  spec = search_fixtures.learning_space()
  generator = pg.geno.Random(seed=0)
  generator.setup(spec)
  mirrored = search_fixtures.pyglove_random_numbers(spec, 0, 3)
  assert [generator.propose().to_numbers() for _ in range(3)] == mirrored
  ppo_best, random_best = search_fixtures.compare_with_random(
    'ppo',
    spec,
    LEARNING_SEEDS,
    LEARNING_BUDGET,
    lambda seed, reward: max(_run(_controller(spec, seed=seed), reward, LEARNING_BUDGET)),
  )
  assert np.mean(ppo_best) > np.mean(random_best) + 0.1


def test_save_and_load_continue_exactly_like_an_uninterrupted_controller(tmp_path):
  spec = search_fixtures.mixed_space()
  reward = search_fixtures.numbers_reward(spec, 2)
  original = _controller(spec, seed=8, batch_size=6)
  _run(original, reward, 21)  # 3 updates, 3 pending in the batch
  in_flight = [original.propose_numbers() for _ in range(2)]
  original.save(str(tmp_path))
  resumed = _controller(spec, seed=8, batch_size=6)
  resumed.load(str(tmp_path))
  assert resumed.history == original.history and resumed.baseline == original.baseline
  for controller in (original, resumed):
    for numbers in in_flight:
      controller.feedback_numbers(numbers, reward(numbers))
  assert _run(resumed, reward, 20) == _run(original, reward, 20)
  assert resumed.history == original.history
  assert resumed.num_updates == original.num_updates == 7
  other_space = _controller(search_fixtures.mixed_space(scale=2))
  with pytest.raises(ValueError, match='another search space'):
    other_space.load(str(tmp_path))


def test_feedback_of_a_dna_it_did_not_propose():
  spec = search_fixtures.mixed_space()
  controller = _controller(spec, batch_size=2)
  prior, worse = search_fixtures.pyglove_random_numbers(spec, 5, 2)
  prior = pg.DNA.from_numbers(prior, spec)
  before = controller.log_prob(prior)
  controller.feedback(prior, 0.9)  # e.g. a published architecture given as a prior
  controller.feedback(pg.DNA(worse), 0.1)  # numbers without a spec
  assert controller.num_updates == 1 and controller.num_feedbacks == 2
  assert controller.log_prob(prior) > before  # above the baseline (0.5): made more likely
  with pytest.raises(ValueError, match='finite'):
    controller.feedback(prior, float('nan'))
  with pytest.raises(ValueError, match='decisions'):
    controller.feedback_numbers([0, 1], 0.5)


def test_unsupported_spaces_are_rejected():
  controller = ppo_controller.PPOController(seed=0)
  with pytest.raises(ValueError, match='not categorical'):
    controller.setup(pg.dna_spec(pg.List([pg.floatv(0.0, 1.0)])))
  nested = pg.one_of([pg.one_of([1, 2]), 3])
  with pytest.raises(ValueError, match='conditional'):
    controller.setup(pg.dna_spec(nested))

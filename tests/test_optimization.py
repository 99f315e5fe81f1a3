"""Learning-rate schedules and the optimizer builder."""

import numpy as np
import tensorflow as tf
import tf_keras

from official_spinenet.training import optimization


class LearningRateTest(tf.test.TestCase):
  def test_linear_scaling_rule(self):
    self.assertAlmostEqual(optimization.scaled_learning_rate(0.32, 64), 0.08)
    self.assertAlmostEqual(optimization.scaled_learning_rate(0.32, 512), 0.64)
    with self.assertRaisesRegex(ValueError, 'global_batch_size=0'):
      optimization.scaled_learning_rate(0.32, 0)

  def test_step_decay_with_warmup_matches_the_protocol(self):
    # Model Garden's SpineNet-49 numbers at batch 256: x0.1 at epochs 475 and 490 of
    # 500, i.e. steps 219450 and 226380 of 231000.
    schedule = optimization.build_learning_rate(
      0.32,
      256,
      total_steps=231000,
      warmup_steps=2000,
      warmup_learning_rate=0.0067,
      decay='step',
      decay_boundaries=[0.95, 0.98],
    )
    # PiecewiseConstantDecay (as Model Garden's stepwise schedule) switches after a boundary.
    values = {
      step: float(schedule(step)) for step in (0, 1000, 2000, 219450, 219451, 226381, 230999)
    }
    self.assertAlmostEqual(values[0], 0.0067, places=6)
    self.assertAlmostEqual(values[1000], 0.0067 + 0.5 * (0.32 - 0.0067), places=6)
    self.assertAlmostEqual(values[2000], 0.32, places=6)
    self.assertAlmostEqual(values[219450], 0.32, places=6)
    self.assertAlmostEqual(values[219451], 0.032, places=6)
    self.assertAlmostEqual(values[226381], 0.0032, places=6)
    self.assertAlmostEqual(values[230999], 0.0032, places=6)

  def test_fractional_boundaries_and_batch_scaling(self):
    schedule = optimization.build_learning_rate(
      0.32, 64, total_steps=1000, decay_boundaries=[0.5, 0.9]
    )
    self.assertAlmostEqual(float(schedule(500)), 0.08, places=6)
    self.assertAlmostEqual(float(schedule(501)), 0.008, places=6)
    self.assertAlmostEqual(float(schedule(901)), 0.0008, places=6)

  def test_cosine(self):
    schedule = optimization.build_learning_rate(
      0.256, 256, total_steps=100, decay='cosine', warmup_steps=10, warmup_learning_rate=0.0
    )
    self.assertAlmostEqual(float(schedule(0)), 0.0)
    self.assertAlmostEqual(float(schedule(5)), 0.5 * float(schedule(10)), places=6)
    self.assertAlmostEqual(float(schedule(50)), 0.256 * 0.5 * (1 + np.cos(np.pi * 0.5)), places=5)
    self.assertLess(float(schedule(99)), 0.001)

  def test_constant_without_warmup_is_a_float(self):
    self.assertAlmostEqual(optimization.build_learning_rate(0.32, 128, 10, decay='constant'), 0.16)

  def test_bad_settings_name_the_problem(self):
    with self.assertRaisesRegex(ValueError, "Unknown learning-rate decay 'linear'"):
      optimization.build_learning_rate(0.1, 8, 100, decay='linear')
    with self.assertRaisesRegex(ValueError, 'decay_boundaries must increase'):
      optimization.build_learning_rate(0.1, 8, 100, decay_boundaries=[0.8, 0.5])
    with self.assertRaisesRegex(ValueError, r'decay_boundaries must be fractions.*\(0, 1\]'):
      optimization.build_learning_rate(0.1, 8, 100, decay_boundaries=[1.5])
    with self.assertRaisesRegex(ValueError, r'decay_boundaries must be fractions.*\(0, 1\]'):
      optimization.build_learning_rate(0.1, 8, 100, decay_boundaries=[0.0, 0.5])
    # Steps (the old unit) are an error naming the gin binding, not a silent misreading.
    with self.assertRaisesRegex(ValueError, r'learning_rate\.decay_boundaries are fractions'):
      optimization.build_learning_rate(0.1, 8, 100, decay_boundaries=[80, 90])
    with self.assertRaisesRegex(ValueError, 'not steps'):
      optimization.build_learning_rate(0.1, 8, 100, decay_boundaries=[1])
    with self.assertRaisesRegex(ValueError, 'warmup_steps'):
      optimization.build_learning_rate(0.1, 8, 100, warmup_steps=200)


class OptimizerTest(tf.test.TestCase):
  def test_sgd_and_current_learning_rate(self):
    schedule = optimization.build_learning_rate(0.32, 256, total_steps=10, decay_boundaries=[0.1])
    optimizer = optimization.build_sgd_optimizer(schedule, momentum=0.9)
    self.assertIsInstance(optimizer, tf_keras.optimizers.SGD)
    self.assertAlmostEqual(optimizer.momentum, 0.9)
    var = tf.Variable(1.0)
    self.assertAlmostEqual(float(optimization.current_learning_rate(optimizer)), 0.32, places=6)
    for _ in range(2):
      optimizer.apply_gradients([(tf.constant(1.0), var)])
    self.assertAlmostEqual(float(optimization.current_learning_rate(optimizer)), 0.032, places=6)

  def test_float16_adds_loss_scaling(self):
    optimizer = optimization.build_sgd_optimizer(0.1, mixed_precision='float16')
    self.assertIsInstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
    self.assertAlmostEqual(float(optimization.current_learning_rate(optimizer)), 0.1)

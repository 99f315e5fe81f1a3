"""One sync BN layer on one device and on two mirrored CPUs (for test_sync_batch_norm.py).

  python tests/sync_batch_norm_runs.py OUTPUT_JSON

For BN alone and conv + BN, in float32 and float64, with our BatchNormalization
and with tf_keras's, trains one step of loss = sum(outputs * w) on a global batch
of 5 (the replicas get 3 and 2) whose channels have mean 100 and standard
deviation 1, and writes each run's largest relative difference from a float64
one-device run of tf_keras's unsynchronized layer (`tf.nn.moments`): outputs,
gradients (inputs and weights) and BN's moving statistics after the step.
"""

import json
import sys

import numpy as np
import tensorflow as tf

from tests import distributed_runs

BATCH, SIZE, CHANNELS, FILTERS = 5, 6, 3, 4
OFFSET = 100.0  # channel mean / standard deviation of the inputs


def _build(layer_cls, kind, synchronized, dtype, initial):
  """Input [B, 6, 6, 3] -> (conv 3x3 ->) BN; initial weights if given."""
  import tf_keras  # pylint: disable=g-import-not-at-top

  inputs = tf_keras.Input([SIZE, SIZE, CHANNELS], dtype=dtype)
  x = inputs
  if kind == 'conv_bn':
    x = tf_keras.layers.Conv2D(FILTERS, 3, padding='same', use_bias=False, dtype=dtype)(x)
  # Momentum 0: the moving statistics after the step are the batch's.
  bn_args = dict(momentum=0.0, epsilon=1e-3, dtype=dtype, synchronized=synchronized)
  if not synchronized:
    bn_args['fused'] = False  # tf.nn.moments, in any dtype
  outputs = layer_cls(**bn_args)(x)
  model = tf_keras.Model(inputs, outputs)
  if initial is not None:
    model.set_weights([w.astype(dtype) for w in initial])
  return model


def _step(strategy, model, x, w):
  """One training-mode pass: outputs, gradients (inputs, then weights), per replica."""
  dataset = tf.data.Dataset.from_tensor_slices((x, w)).batch(BATCH)
  xs, ws = next(iter(strategy.experimental_distribute_dataset(dataset)))

  @tf.function
  def run(xs, ws):
    def replica(x, w):
      with tf.GradientTape() as tape:
        tape.watch(x)
        y = model(x, training=True)
        loss = tf.reduce_sum(y * w)
      return y, tape.gradient(loss, [x] + model.trainable_variables)

    return strategy.run(replica, args=(xs, ws))

  y, grads = run(xs, ws)
  local = strategy.experimental_local_results
  concat = lambda t: np.concatenate([np.asarray(v, np.float64) for v in local(t)])
  total = lambda t: sum(np.asarray(v, np.float64) for v in local(t))
  return concat(y), [concat(grads[0])] + [total(g) for g in grads[1:]]


def _moving_statistics(model):
  """Each moving statistic's per-replica copies (one copy on one device)."""
  copies = []
  for variable in model.non_trainable_variables:
    values = getattr(variable, 'values', (variable,))
    copies.append([np.asarray(v, np.float64) for v in values])
  return copies


def _relative(a, b):
  return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


def _run(strategy, layer_cls, kind, synchronized, dtype, data):
  x, w, initial = data
  with strategy.scope():
    model = _build(layer_cls, kind, synchronized, dtype, initial)
  y, grads = _step(strategy, model, x.astype(dtype), w.astype(dtype))
  return y, grads, _moving_statistics(model)


def _compare(run, truth):
  (y, grads, moving), (t_y, t_grads, t_moving) = run, truth
  return {
    'outputs': _relative(y, t_y),
    'gradients': max(_relative(g, t) for g, t in zip(grads, t_grads)),
    'moving_statistics': max(_relative(c, t[0]) for m, t in zip(moving, t_moving) for c in m),
    # Every replica holds the same moving statistics (0: identical).
    'replica_spread': max(_relative(c, m[0]) for m in moving for c in m),
  }


def main(output):
  distributed_runs.configure_two_cpus()
  import tf_keras  # pylint: disable=g-import-not-at-top

  from official_spinenet.modeling.layers import batch_norm  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  x = OFFSET + rng.standard_normal([BATCH, SIZE, SIZE, CHANNELS])
  strategies = {
    'one_device': tf.distribute.OneDeviceStrategy('/cpu:0'),
    'mirrored': tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1']),
  }
  layers = {'ours': batch_norm.BatchNormalization, 'tf_keras': tf_keras.layers.BatchNormalization}
  results = {}
  for kind in ('bn', 'conv_bn'):
    tf_keras.utils.set_random_seed(1)
    initial = _build(tf_keras.layers.BatchNormalization, kind, False, 'float64', None).get_weights()
    initial[-4] = np.linspace(0.5, 1.5, initial[-4].size)  # gamma
    initial[-3] = np.linspace(-1.0, 1.0, initial[-3].size)  # beta
    w = rng.standard_normal([BATCH, SIZE, SIZE, initial[-4].size])
    data = (x, w, initial)
    one_device = strategies['one_device']
    truth = _run(one_device, tf_keras.layers.BatchNormalization, kind, False, 'float64', data)
    for layer, layer_cls in layers.items():
      for dtype in ('float32', 'float64'):
        for strategy_name, strategy in strategies.items():
          run = _run(strategy, layer_cls, kind, True, dtype, data)
          results[f'{layer}/{kind}/{dtype}/{strategy_name}'] = _compare(run, truth)
  with open(output, 'w') as f:
    json.dump(results, f, indent=1)


if __name__ == '__main__':
  main(sys.argv[1])

"""The search's proxy trial: ProxyConfig, the shaped reward and real tiny trials."""

import dataclasses
import json
import math
import os
import pickle

import pytest
import tensorflow as tf

from official_spinenet.modeling import model_stats
from official_spinenet.modeling.backbones import spinenet_specs
from official_spinenet.search import proxy_config
from official_spinenet.workflows import demo
from official_spinenet.workflows import loading
from official_spinenet.workflows import search_trial

TINY = proxy_config.ProxyConfig(gin_files=('testing/search_proxy_tiny.gin',), latency_runs=2)
RESULT_KEYS = {'reward', 'AP', 'AP50', 'params', 'multiply_adds', 'latency_ms', 'train_seconds'}


def _trial(shapes_data, trial_dir, bindings=(), proxy=TINY, num_threads=None):
  return search_trial.run_proxy_trial(
    bindings, proxy, str(trial_dir), demo.shapes_data_params(shapes_data), num_threads=num_threads
  )


@pytest.fixture(scope='module')
def default_trial(shapes_data, tmp_path_factory):
  """A real tiny trial of the default architecture (SpineNet-49): (result, trial dir)."""
  trial_dir = tmp_path_factory.mktemp('trial_default')
  return _trial(shapes_data, trial_dir, num_threads=1), trial_dir


# ---- ProxyConfig and the reward -------------------------------------------------------


def test_proxy_config_defaults_and_normalisation():
  assert proxy_config.ProxyConfig().gin_files == ('search/proxy_spinenet_shapes.gin',)
  config = proxy_config.ProxyConfig(gin_files=['a.gin'], gin_params='X = 1')
  assert config.gin_files == ('a.gin',)
  assert config.gin_params == ('X = 1',)
  assert pickle.loads(pickle.dumps(config)) == config  # Ray ships it to the workers
  assert hash(config) == hash(proxy_config.ProxyConfig(gin_files=('a.gin',), gin_params=('X = 1',)))


@pytest.mark.parametrize(
  'kwargs, match',
  [
    ({'gin_files': ()}, 'gin_files is empty'),
    ({'reward_metric': ''}, 'reward_metric'),
    ({'latency_runs': 0}, 'latency_runs must be >= 1'),
    ({'latency_image_size': 0}, 'latency_image_size must be positive'),
    ({'target_latency_ms': 0.0}, 'target_latency_ms must be positive'),
    ({'target_multiply_adds': -1e9}, 'target_multiply_adds must be positive'),
    ({'latency_exponent': math.nan}, 'latency_exponent must be finite'),
  ],
)
def test_proxy_config_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    proxy_config.ProxyConfig(**kwargs)


def test_shaped_reward_by_hand():
  plain = proxy_config.ProxyConfig()
  assert proxy_config.shaped_reward(0.4, 50.0, 3e9, plain) == 0.4
  latency = proxy_config.ProxyConfig(target_latency_ms=25.0)
  # Twice the target latency: 0.4 * 2 ** -0.07 (MnasNet's soft constraint).
  assert proxy_config.shaped_reward(0.4, 50.0, 3e9, latency) == pytest.approx(0.38106, abs=1e-5)
  assert proxy_config.shaped_reward(0.4, 25.0, 3e9, latency) == pytest.approx(0.4)
  both = proxy_config.ProxyConfig(
    target_latency_ms=100.0, target_multiply_adds=1e9, latency_exponent=-0.5
  )
  # (50 / 100) ** -0.5 * (4e9 / 1e9) ** -0.5 = sqrt(2) * 0.5
  assert proxy_config.shaped_reward(0.4, 50.0, 4e9, both) == pytest.approx(0.4 * 0.70711, 1e-4)
  with pytest.raises(ValueError, match='latency_ms=0'):
    proxy_config.shaped_reward(0.4, 0.0, 4e9, both)


def test_checked_metrics_names_a_missing_or_nan_metric():
  good = {'AP': 0.5, 'AP50': 0.7, 'AP75': 0.4}
  assert search_trial.checked_metrics(good, 'AP75') == good
  with pytest.raises(ValueError, match="no metric 'mask_AP'"):
    search_trial.checked_metrics(good, 'mask_AP')
  with pytest.raises(ValueError, match='AP50 = nan'):
    search_trial.checked_metrics({'AP': 0.5, 'AP50': math.nan}, 'AP')


def test_trial_gin_params_put_the_architecture_last():
  proxy = proxy_config.ProxyConfig(gin_params=('TRAIN_STEPS = 3',))
  params = search_trial.trial_gin_params(proxy, ['spinenet.block_specs = "a.json"'], ['D = 1'])
  assert params == ['TRAIN_STEPS = 3', 'D = 1', 'spinenet.block_specs = "a.json"']


def test_set_num_threads_checks_and_tolerates_an_initialised_tf():
  with pytest.raises(ValueError, match='num_threads must be >= 1'):
    search_trial.set_num_threads(0)
  tf.constant(1.0)  # TF runs: the thread pools are fixed now, a new size is only logged
  search_trial.set_num_threads(3)
  search_trial.set_num_threads(None)


# ---- real tiny trials --------------------------------------------------------------


@pytest.mark.slow
def test_tiny_trial_returns_every_metric_and_writes_them(default_trial):
  result, trial_dir = default_trial
  assert set(result) == RESULT_KEYS
  assert all(isinstance(v, float) and math.isfinite(v) for v in result.values()), result
  assert result['reward'] == result['AP']  # no targets: the reward is the metric
  assert 0.0 <= result['AP'] <= 1.0
  assert result['params'] > 0 and result['multiply_adds'] > 0 and result['latency_ms'] > 0
  with open(os.path.join(trial_dir, search_trial.TRIAL_METRICS_FILE)) as f:
    assert json.load(f) == pytest.approx(result)
  assert os.path.exists(os.path.join(trial_dir, 'operative_config.gin'))


def _untrained_stats(shapes_data):
  """Params and multiply-adds of the tiny proxy's default model, counted as a trial's
  measurement counts them (neither depends on the weights), without training it."""
  params = search_trial.trial_gin_params(TINY, (), demo.shapes_data_params(shapes_data))
  task = loading.build_task(TINY.gin_files, params)
  model = task.build_model()
  return {
    'params': float(model_stats.count_params(model)),
    'multiply_adds': float(model_stats.count_multiply_adds(model, [1, *task.image_size, 3])),
  }


@pytest.mark.slow
def test_architecture_bindings_take_effect(shapes_data, tmp_path):
  # The tiny proxy's default backbone (5 residual blocks, parents (i, i + 1)) with
  # bottleneck blocks instead: the same graph, more parameters and multiply-adds.
  levels = (3, 4, 5, 7, 6)
  specs = [(level, spinenet_specs.BOTTLENECK, (i, i + 1), True) for i, level in enumerate(levels)]
  path = str(tmp_path / 'block_specs.json')
  spinenet_specs.save_block_specs(spinenet_specs.build_block_specs(specs), path)
  proxy = proxy_config.ProxyConfig(
    gin_files=TINY.gin_files, latency_runs=1, target_multiply_adds=1e6
  )
  result = _trial(shapes_data, tmp_path / 'trial', [f"spinenet.block_specs = '{path}'"], proxy)
  # The default architecture's figures from a build, not a second trial: a trial's
  # training changes neither (test_tiny_trial_returns_every_metric_and_writes_them
  # runs the default one).
  default = _untrained_stats(shapes_data)
  assert result['params'] > default['params']
  assert result['multiply_adds'] > default['multiply_adds']
  # Shaped by multiply-adds now: over the 1e6 target, the reward is below the AP.
  assert result['reward'] == pytest.approx(result['AP'] * (result['multiply_adds'] / 1e6) ** -0.07)


@pytest.mark.slow
def test_latency_at_another_image_size(shapes_data, default_trial):
  result, trial_dir = default_trial
  proxy = dataclasses.replace(TINY, latency_image_size=256)
  params = search_trial.trial_gin_params(proxy, (), demo.shapes_data_params(shapes_data))
  stats = search_trial.measure_model(proxy, params, str(trial_dir))
  # Parameters and multiply-adds stay those of the proxy's 128 px model.
  assert stats['params'] == result['params']
  assert stats['multiply_adds'] == result['multiply_adds']
  assert stats['latency_ms'] > 0


def test_bad_architecture_binding_is_a_value_error_naming_it(shapes_data, tmp_path):
  with pytest.raises(ValueError, match='block_spec'):
    _trial(shapes_data, tmp_path, ["spinenet.block_spec = '/tmp/x.json'"])
  assert not os.path.exists(tmp_path / search_trial.TRIAL_METRICS_FILE)


@pytest.mark.slow
def test_diverging_trial_raises_floating_point_error(shapes_data, tmp_path):
  with pytest.raises(FloatingPointError, match='training loss became'):
    _trial(shapes_data, tmp_path, ['learning_rate.base_learning_rate = 1e30'])
  assert not os.path.exists(tmp_path / search_trial.TRIAL_METRICS_FILE)

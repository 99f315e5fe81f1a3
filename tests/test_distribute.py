"""Training under MirroredStrategy equals one device (two workers: test_multi_worker.py)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from official_spinenet.training import distribute
from tests import paths

REPO = paths.REPO
ENV = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='2')


def _mirrored_vs_one_device(mode, one_shard_shapes_dir, tmp_path, loss_rtol, update_rtol, atol):
  """Runs tests/distributed_runs.py `mode`: training through sync BN, backbone in float64."""
  run = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, 'tests', 'distributed_runs.py'),
      mode,
      one_shard_shapes_dir,
      str(tmp_path),
    ],
    capture_output=True,
    text=True,
    env=ENV,
    timeout=900,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  results = json.load(open(tmp_path / 'results.json'))
  one, mirrored = results['one_device'], results['mirrored']
  assert (one['replicas'], mirrored['replicas']) == (1, 2)
  # Sync BN: the two replicas' batch statistics are those of the global batch.
  np.testing.assert_allclose(
    np.asarray(mirrored['sync_bn_logits']), np.asarray(one['sync_bn_logits']), rtol=1e-4, atol=1e-5
  )
  # Training through sync BN: same losses, same weights after the steps. Every
  # weight counts, BN's (gamma, beta, moving mean and variance) as the others.
  np.testing.assert_allclose(mirrored['losses'], one['losses'], rtol=loss_rtol)
  largest_update = 0.0
  weights = zip(one['names'], mirrored['weights'], one['weights'], one['initial'])
  for name, w_mirrored, w_one, w_0 in weights:
    w_mirrored, w_one, w_0 = np.asarray(w_mirrored), np.asarray(w_one), np.asarray(w_0)
    update = float(np.abs(w_one - w_0).max())
    largest_update = max(largest_update, update)
    difference = float(np.abs(w_mirrored - w_one).max())
    # atol: weights whose gradient is zero but for rounding (a conv bias before
    # BN), and a few float32 ulps of float32 weights.
    assert difference <= update_rtol * update + atol, (name, difference, update)
  assert largest_update > 1e-4  # the steps did change the weights


def test_mirrored_over_two_cpus_equals_one_device(one_shard_shapes_dir, tmp_path):
  # The whole model in float64 (measured: 4e-8 of each weight's update); the
  # losses are float32.
  _mirrored_vs_one_device(
    'mirrored_vs_one_device',
    one_shard_shapes_dir,
    tmp_path,
    loss_rtol=1e-5,
    update_rtol=1e-5,
    atol=1e-9,
  )


def test_maskrcnn_mirrored_over_two_cpus_equals_one_device(one_shard_shapes_dir, tmp_path):
  # Model Garden's box and mask loss normalisers add 0.01 per replica (count +
  # 0.01 N over N replicas, count + 0.01 on one device): relative 0.01 / count,
  # with tens of positive anchors and RoIs ~1e-4. Its heads run in float32
  # (measured on the minimal SpineNet of minimal_model.MINIMAL_MODEL: the
  # backbone's weights within 5.2e-4 of their update, the heads' within 3e-8).
  _mirrored_vs_one_device(
    'maskrcnn_mirrored_vs_one_device',
    one_shard_shapes_dir,
    tmp_path,
    loss_rtol=1e-3,
    update_rtol=1e-2,
    atol=1e-7,
  )


def test_strategy_errors_name_the_problem(monkeypatch):
  with pytest.raises(ValueError, match="Unknown --strategy 'gpu'"):
    distribute.build_strategy('gpu')
  with pytest.raises(ValueError, match='--num_gpus=2 but 0 GPU'):
    distribute.build_strategy('mirrored', num_gpus=2)
  monkeypatch.delenv('TF_CONFIG', raising=False)
  with pytest.raises(ValueError, match='TF_CONFIG'):
    distribute.build_strategy('multi_worker_mirrored')
  monkeypatch.setenv('TF_CONFIG', '{not json')
  with pytest.raises(ValueError, match='TF_CONFIG is not valid JSON'):
    distribute.build_strategy('multi_worker_mirrored')
  with pytest.raises(ValueError, match='needs --tpu'):
    distribute.build_strategy('tpu')
  with pytest.raises(ValueError, match="Unknown --mixed_precision 'fp8'"):
    distribute.set_precision('fp8')

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
  """Runs tests/distributed_runs.py `mode`: training through sync BN, backbone in float64.

  atol: per weight dtype ('float64', 'float32'), what a weight may differ by
  beyond `update_rtol` of its update.
  """
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
  weights = zip(one['names'], one['dtypes'], mirrored['weights'], one['weights'], one['initial'])
  for name, dtype, w_mirrored, w_one, w_0 in weights:
    w_mirrored, w_one, w_0 = np.asarray(w_mirrored), np.asarray(w_one), np.asarray(w_0)
    update = float(np.abs(w_one - w_0).max())
    largest_update = max(largest_update, update)
    difference = float(np.abs(w_mirrored - w_one).max())
    assert difference <= update_rtol * update + atol[dtype], (name, dtype, difference, update)
  assert largest_update > 1e-4  # the steps did change the weights


def test_mirrored_over_two_cpus_equals_one_device(one_shard_shapes_dir, tmp_path):
  # The whole model in float64 (measured: 4e-8 of each weight's update); the
  # losses are float32. atol: weights whose gradient is zero but for rounding
  # (a conv bias before BN).
  _mirrored_vs_one_device(
    'mirrored_vs_one_device',
    one_shard_shapes_dir,
    tmp_path,
    loss_rtol=1e-5,
    update_rtol=1e-5,
    atol={'float64': 1e-9},
  )


def test_maskrcnn_mirrored_over_two_cpus_equals_one_device(one_shard_shapes_dir, tmp_path):
  # Model Garden's box and mask loss normalisers add 0.01 per replica (count +
  # 0.01 N over N replicas, count + 0.01 on one device): relative 0.01 / count,
  # with tens of positive anchors and RoIs ~1e-4. Its heads run in float32, and
  # their rounding enters every gradient (measured on the minimal SpineNet of
  # minimal_model.MINIMAL_MODEL, over five runs: the backbone's float64 weights
  # up to 1.3% of their update or 1.1e-7 apart, the heads' kernels 0.3%).
  # float32 atol: a bias before BN has no gradient but the rounding of a sum over
  # every RoI's pixels, different in each run (measured: up to 1.3e-7 apart, with
  # updates of 3e-8 to 2e-7), and BN's gammas near 1 are a float32 ulp (1.2e-7) apart.
  _mirrored_vs_one_device(
    'maskrcnn_mirrored_vs_one_device',
    one_shard_shapes_dir,
    tmp_path,
    loss_rtol=1e-3,
    update_rtol=1e-2,
    atol={'float64': 1e-7, 'float32': 5e-7},
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

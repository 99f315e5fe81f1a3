"""Training under MirroredStrategy and MultiWorkerMirroredStrategy equals one device."""

import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from official_spinenet.data import shapes
from official_spinenet.training import distribute
from tests import paths

REPO = paths.REPO
ENV = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='2')


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('shapes')
  # One shard: the record order, hence every batch, is the same in every run.
  shapes.make_shapes_dataset(
    str(root), num_train=16, num_val=2, image_size=128, seed=0, num_shards=1, show_progress=False
  )
  return str(root)


def _mirrored_vs_one_device(mode, data_dir, tmp_path, loss_rtol):
  run = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, 'tests', 'distributed_runs.py'),
      mode,
      data_dir,
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
  # Training: same losses, same updated weights.
  np.testing.assert_allclose(mirrored['losses'], one['losses'], rtol=loss_rtol)
  largest_update = 0.0
  for w_mirrored, w_one, w_0 in zip(mirrored['weights'], one['weights'], one['initial']):
    w_mirrored, w_one, w_0 = np.asarray(w_mirrored), np.asarray(w_one), np.asarray(w_0)
    update = float(np.abs(w_one - w_0).max())
    largest_update = max(largest_update, update)
    # float32 rounding in different summation orders, carried through two steps
    # of momentum SGD: the weights agree to 1% of the change the steps made.
    difference = float(np.abs(w_mirrored - w_one).max())
    assert difference <= 0.01 * update + 1e-7, (w_one.shape, difference, update)
  assert largest_update > 1e-4  # the steps did change the weights


def test_mirrored_over_two_cpus_equals_one_device(data_dir, tmp_path):
  _mirrored_vs_one_device('mirrored_vs_one_device', data_dir, tmp_path, loss_rtol=1e-5)


def test_maskrcnn_mirrored_over_two_cpus_equals_one_device(data_dir, tmp_path):
  # Model Garden's box and mask loss normalisers add 0.01 per replica (count +
  # 0.01 N over N replicas, count + 0.01 on one device): relative 0.01 / count,
  # with tens of positive anchors and RoIs ~1e-4.
  _mirrored_vs_one_device('maskrcnn_mirrored_vs_one_device', data_dir, tmp_path, loss_rtol=1e-3)


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(('localhost', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


@pytest.mark.slow
@pytest.mark.parametrize('gin_file', ['testing/retinanet_tiny.gin', 'testing/maskrcnn_tiny.gin'])
def test_two_workers_train_in_step(gin_file, data_dir, tmp_path):
  ports = _free_ports(2)
  cluster = {'worker': [f'localhost:{p}' for p in ports]}
  model_dir = str(tmp_path / 'model')
  command = [
    sys.executable,
    '-m',
    'official_spinenet.binaries.train',
    f'--gin_file={gin_file}',
    f'--model_dir={model_dir}',
    '--mode=train',
    '--strategy=multi_worker_mirrored',
    f"--gin_param=TRAIN_FILE_PATTERN = '{data_dir}/tfrecords/train-*'",
    '--gin_param=TrainerConfig.steps_per_loop = 1',
  ]
  # Output goes to files, not pipes: a worker blocked on a full pipe while the
  # test waits on the other one would stall both inside the first all-reduce.
  workers, logs = [], []
  for index in range(2):
    env = dict(
      ENV, TF_CONFIG=json.dumps({'cluster': cluster, 'task': {'type': 'worker', 'index': index}})
    )
    log = open(tmp_path / f'worker_{index}.log', 'w+')
    logs.append(log)
    workers.append(
      subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    )
  try:
    for worker in workers:
      worker.wait(timeout=900)
  finally:
    for worker in workers:
      if worker.poll() is None:
        worker.kill()
  outputs = []
  for log in logs:
    log.seek(0)
    outputs.append(log.read())
    log.close()
  if any(worker.returncode for worker in workers):
    # A worker's failure shows up in the other as a collective error: print both.
    pytest.fail(
      '\n'.join(
        f'worker {i} exited {w.returncode}:\n{err[-3000:]}'
        for i, (w, err) in enumerate(zip(workers, outputs))
      )
    )
  progress = [re.findall(r'step (\d+)/\d+ \| loss ([0-9.]+)', err) for err in outputs]
  assert [int(s) for s, _ in progress[0]] == [1, 2, 3, 4]
  # The loss printed is the all-reduced global-batch loss: identical on both workers.
  assert progress[0] == progress[1]
  # Only the chief's checkpoints remain; the other worker's scratch copy is gone.
  assert os.path.exists(os.path.join(model_dir, 'ckpt-4.index'))
  assert not os.path.exists(os.path.join(model_dir, '.worker_tmp', 'worker_1'))


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

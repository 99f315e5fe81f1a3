"""Two workers under MultiWorkerMirroredStrategy: in step, and preemption of one stops both."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from tests import paths
from tests.minimal_model import MINIMAL_MODEL

ENV = dict(os.environ, PYTHONPATH=paths.REPO, TF_CPP_MIN_LOG_LEVEL='2')


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(('localhost', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _start_workers(gin_file, one_shard_shapes_dir, model_dir, log_dir, *params):
  """Two `spinenet-train --strategy=multi_worker_mirrored` processes; logs in log_dir.

  The model is gin_file's with the minimal SpineNet and pyramid of MINIMAL_MODEL:
  most of a worker's time is building and tracing the step, which scales with
  the blocks and levels, and these tests are about the workers, not the topology.
  """
  cluster = {'worker': [f'localhost:{p}' for p in _free_ports(2)]}
  command = [
    sys.executable,
    '-m',
    'official_spinenet.binaries.train',
    f'--gin_file={gin_file}',
    f'--model_dir={model_dir}',
    '--mode=train',
    '--strategy=multi_worker_mirrored',
    f"--gin_param=TRAIN_FILE_PATTERN = '{one_shard_shapes_dir}/tfrecords/train-*'",
  ] + [f'--gin_param={p}' for p in MINIMAL_MODEL + list(params)]
  workers = []
  for index in range(2):
    task = {'cluster': cluster, 'task': {'type': 'worker', 'index': index}}
    # Output goes to files, not pipes: a worker blocked on a full pipe while the
    # test waits on the other one would stall both inside the first all-reduce.
    log = open(os.path.join(log_dir, f'worker_{index}.log'), 'w')
    env = dict(ENV, TF_CONFIG=json.dumps(task))
    workers.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))
  return workers


def _wait(workers, timeout=900):
  """Waits for both workers; kills what still runs when the wait fails."""
  try:
    for worker in workers:
      worker.wait(timeout=timeout)
  finally:
    _kill(workers)


def _kill(workers):
  for worker in workers:
    if worker.poll() is None:
      worker.kill()


def _logs(log_dir):
  return [open(os.path.join(log_dir, f'worker_{i}.log')).read() for i in range(2)]


@pytest.mark.slow
def test_sigterm_to_one_worker_stops_both_after_the_same_step(one_shard_shapes_dir, tmp_path):
  model_dir = str(tmp_path / 'model')
  workers = _start_workers(
    'testing/retinanet_tiny.gin',
    one_shard_shapes_dir,
    model_dir,
    tmp_path,
    'TRAIN_STEPS = 100000',
    'TrainerConfig.steps_per_loop = 1',
  )
  try:
    while tf.train.latest_checkpoint(model_dir) is None:
      assert all(w.poll() is None for w in workers), '\n'.join(_logs(tmp_path))[-4000:]
      time.sleep(0.2)
    # A preempted VM: only the non-chief worker is told.
    workers[1].send_signal(signal.SIGTERM)
  except BaseException:
    _kill(workers)
    raise
  _wait(workers, timeout=300)
  logs = _logs(tmp_path)
  assert [w.returncode for w in workers] == [42, 42], '\n'.join(logs)[-4000:]
  saved = [re.findall(r'Preempted \(SIGTERM\): saved \S+ at step (\d+)', log) for log in logs]
  assert saved[0] and saved[0] == saved[1], saved
  step = int(saved[0][0])
  assert step >= 1 and os.path.exists(os.path.join(model_dir, f'ckpt-{step}.index'))
  # Both ran the same steps with the same all-reduced losses, up to the saved one.
  progress = [re.findall(r'step (\d+)/\d+ \| loss ([0-9.]+)', log) for log in logs]
  assert progress[0] == progress[1] and int(progress[0][-1][0]) == step
  assert not os.path.exists(os.path.join(model_dir, '.worker_tmp', 'worker_1'))


@pytest.mark.slow
def test_two_mask_rcnn_workers_train_in_step(one_shard_shapes_dir, tmp_path):
  model_dir = str(tmp_path / 'model')
  workers = _start_workers(
    'testing/maskrcnn_tiny.gin',
    one_shard_shapes_dir,
    model_dir,
    tmp_path,
    'TrainerConfig.steps_per_loop = 1',
  )
  _wait(workers)
  logs = _logs(tmp_path)
  # A worker's failure shows up in the other as a collective error: show both.
  assert [w.returncode for w in workers] == [0, 0], '\n'.join(logs)[-6000:]
  progress = [re.findall(r'step (\d+)/\d+ \| loss ([0-9.]+)', log) for log in logs]
  assert [int(s) for s, _ in progress[0]] == [1, 2, 3, 4]
  # The loss printed is the all-reduced global-batch loss: identical on both workers.
  assert progress[0] == progress[1]
  # Only the chief's checkpoints remain; the other worker's scratch copy is gone.
  assert os.path.exists(os.path.join(model_dir, 'ckpt-4.index'))
  assert not os.path.exists(os.path.join(model_dir, '.worker_tmp', 'worker_1'))

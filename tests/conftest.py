"""Shared test setup: quiet TensorFlow, shared fixtures.

The tests form a package (`tests/__init__.py`), so helpers are imported as
`from tests import export_fixtures`; nothing edits sys.path. Markers and options
are in pyproject.toml ([tool.pytest.ini_options]).
"""

import os

import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Under pytest-xdist every worker process (and each process its tests start, which
# inherit the environment) would get one intra-op thread per core: with 2 workers on
# 2 cores, twice as many busy threads as cores. A share of the cores each ran the
# model tests 9% faster on the 2-core CI machine.
_WORKERS = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
if _WORKERS > 1:
  os.environ.setdefault('TF_NUM_INTRAOP_THREADS', str(max(1, (os.cpu_count() or 1) // _WORKERS)))


def pytest_collection_modifyitems(config, items):
  del config  # unused
  # tf.test.TestCase inherits a deprecated `test_session` context manager that pytest
  # collects as a test and skips; it is not one of ours.
  items[:] = [item for item in items if item.name != 'test_session']


@pytest.fixture(scope='session')
def shapes_data(tmp_path_factory):
  """A small shapes dataset (8 training, 4 held-out 128 px images, masks), made once.

  Returns what `shapes.make_shapes_dataset` returns: paths of the TFRecords and
  COCO annotation files per split. Read-only: tests that change data make their own.
  """
  from official_spinenet.data import shapes  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp('shapes')
  return shapes.make_shapes_dataset(
    str(root), num_train=8, num_val=4, image_size=128, seed=0, num_shards=2, show_progress=False
  )


@pytest.fixture(scope='session')
def tiny_retinanet_run(shapes_data, tmp_path_factory):
  """The model dir of testing/retinanet_tiny.gin with the minimal SpineNet and pyramid
  (tests/minimal_model.py) trained 2 steps, saved after each.

  Built once per test process. Read-only: copy it (`shutil.copytree`) to resume
  from it or change it; load it with MINIMAL_MODEL among the gin bindings.
  """
  from official_spinenet.workflows import train  # pylint: disable=g-import-not-at-top
  from tests.minimal_model import shapes_params  # pylint: disable=g-import-not-at-top

  model_dir = str(tmp_path_factory.mktemp('tiny_retinanet_run') / 'model')
  params = shapes_params(
    shapes_data,
    'TRAIN_STEPS = 2',
    'TrainerConfig.steps_per_loop = 1',
    'TrainerConfig.checkpoint_interval = 1',
  )
  train.launch(['testing/retinanet_tiny.gin'], params, model_dir, mode='train')
  return model_dir


@pytest.fixture(scope='session')
def one_shard_shapes_dir(tmp_path_factory):
  """A shapes dataset (16 training, 2 held-out 128 px images) in one shard, made once.

  One shard: the record order, hence every batch, is the same in every run, which
  the distributed-equality and multi-worker tests compare. Returns its root folder.
  """
  from official_spinenet.data import shapes  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp('one_shard_shapes')
  shapes.make_shapes_dataset(
    str(root), num_train=16, num_val=2, image_size=128, seed=0, num_shards=1, show_progress=False
  )
  return str(root)

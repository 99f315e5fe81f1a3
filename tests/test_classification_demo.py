"""`spinenet-demo --task=classification` end to end at tiny sizes, and its target."""

import json
import os

import pytest

from official_spinenet.workflows import demo
from tests import binaries
from tests.minimal_model import MINIMAL_MODEL

# The demo's config shrunk to seconds, as gin_configs/testing/classification_tiny.gin
# (which cannot be included after the data bindings: it re-binds the data macros): an
# eighth of SpineNet-49's widths, batch 4, 2 steps; and the minimal SpineNet and
# pyramid (MINIMAL_MODEL: one intermediate block, P3-P5), since the binary's run is
# checked, not the topology, and building and tracing the model, most of the run,
# scales with its blocks, resampling connections and levels.
TINY_PARAMS = (
  *MINIMAL_MODEL,
  'TRAIN_STEPS = 2',
  'TRAIN_BATCH_SIZE = 4',
  'EVAL_BATCH_SIZE = 4',
  'WARMUP_STEPS = 0',
  'spinenet.filter_size_scale = 0.125',
  'spinenet.endpoints_num_filters = 16',
  'TrainerConfig.steps_per_loop = 2',
)


@pytest.mark.slow
def test_classification_demo_binary_trains_and_reports_top_1_and_top_5(tmp_path):
  output_dir = str(tmp_path / 'demo')
  flags = [f'--output_dir={output_dir}', '--task=classification', '--num_train=8']
  # Two whole eval batches: a smaller last one would trace the eval step again.
  flags += ['--num_val=8'] + [f'--gin_param={p}' for p in TINY_PARAMS]
  result = binaries.run_binary('demo', *flags, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(output_dir, 'model_classification', 'metrics.json')) as f:
    metrics = json.load(f)
  assert metrics['step'] == 2
  for name in ('top_1_accuracy', 'top_5_accuracy'):
    assert 0.0 <= metrics[name] <= 1.0, name
    assert name in result.stdout
  assert 'held-out shapes images' in result.stdout
  # Its own data and model folders: the detection demos' 'data' and 'model' stay free.
  assert sorted(os.listdir(output_dir)) == ['data_classification', 'model_classification']
  with open(os.path.join(output_dir, 'data_classification', 'labels.txt')) as f:
    assert len(f.read().splitlines()) == 12


def test_classification_demo_is_a_demo_task():
  assert 'classification' in demo.DEMO_TASKS
  assert demo.demo_model_dir('/out', 'classification') == '/out/model_classification'
  assert demo.DEMO_TARGET_MINUTES_BY_TASK['classification'] < demo.DEMO_TARGET_MINUTES
  with pytest.raises(ValueError, match="Unknown demo task 'yolo'.*'classification'"):
    demo.demo_model_dir('/out', 'yolo')


def test_data_params_point_the_demo_config_at_the_data():
  dataset = {
    'train': {'file_pattern': '/d/tfrecords/train-*-of-00002.tfrecord'},
    'validation': {'file_pattern': '/d/tfrecords/validation-*-of-00002.tfrecord'},
    'class_names_file': '/d/labels.txt',
  }
  assert demo.classification_data_params(dataset) == [
    "TRAIN_FILE_PATTERN = '/d/tfrecords/train-*-of-00002.tfrecord'",
    "EVAL_FILE_PATTERN = '/d/tfrecords/validation-*-of-00002.tfrecord'",
    "CLASS_NAMES_FILE = '/d/labels.txt'",
  ]


def test_target_rows_check_top_1_and_time():
  metrics = {'top_1_accuracy': 0.85, 'top_5_accuracy': 0.99, 'loss': 0.6}
  rows, ok = demo.target_rows('classification', metrics, minutes=4.2, target_minutes=10.0)
  assert ok
  assert rows == [
    ('wall time (min)', '4.2', '<= 10', 'ok'),
    ('top_1_accuracy', 0.85, '>= 0.5', 'ok'),
    ('top_5_accuracy', 0.99, None, None),
  ]
  _, ok = demo.target_rows('classification', {**metrics, 'top_1_accuracy': 0.49}, 4.2, 10.0)
  assert not ok

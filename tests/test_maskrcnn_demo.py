"""`spinenet-demo --task=maskrcnn` end to end at tiny sizes, and the demo targets."""

import json
import os

import pytest

from official_spinenet.workflows import demo
from tests import binaries
from tests.minimal_model import MINIMAL_MODEL

# The demo's config shrunk to seconds a step: 2 steps of batch 4 (no warm-up), an eighth of
# SpineNet-49's widths, 16-filter heads and a 1-conv mask head (as
# gin_configs/testing/maskrcnn_tiny.gin). The binary's time is mostly building and tracing
# the model, which scales with blocks, levels and head layers, and this test is about the
# demo's workflow, not its topology: the minimal SpineNet and pyramid of MINIMAL_MODEL.
TINY_PARAMS = (
  *MINIMAL_MODEL,
  'MaskHead.num_convs = 1',
  'TRAIN_STEPS = 2',
  'TRAIN_BATCH_SIZE = 4',
  'EVAL_BATCH_SIZE = 4',
  'HEAD_FILTERS = 16',
  'FC_DIMS = 32',
  'spinenet.filter_size_scale = 0.125',
  'spinenet.endpoints_num_filters = 16',
  'TrainerConfig.steps_per_loop = 2',
  'learning_rate.warmup_steps = 0',
)


def test_maskrcnn_demo_binary_trains_and_reports_box_and_mask_ap(tmp_path):
  output_dir = str(tmp_path / 'demo')
  flags = [f'--output_dir={output_dir}', '--task=maskrcnn', '--num_train=8', '--num_val=4']
  flags += [f'--gin_param={p}' for p in TINY_PARAMS]
  result = binaries.run_binary('demo', *flags, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  metrics_path = os.path.join(output_dir, 'model_maskrcnn', 'metrics.json')
  with open(metrics_path) as f:
    metrics = json.load(f)
  assert metrics['step'] == 2
  assert metrics['num_images'] == 4
  for name in ('AP', 'AP50', 'mask_AP', 'mask_AP50'):
    assert 0.0 <= metrics[name] <= 1.0, name
    assert name in result.stdout
  assert 'model_maskrcnn' in result.stdout
  # The RetinaNet demo's folder stays free for it; the data are shared.
  assert sorted(os.listdir(output_dir)) == ['data', 'model_maskrcnn']


def test_unknown_demo_task_fails_before_writing_data(tmp_path):
  with pytest.raises(ValueError, match="Unknown demo task 'yolo'.*'maskrcnn'"):
    demo.run_demo(str(tmp_path), num_train=2, num_val=1, task='yolo')
  assert not os.listdir(tmp_path)


def test_target_rows_check_box_and_mask_ap_and_time():
  metrics = {'AP': 0.5, 'mask_AP': 0.39, 'AP50': 0.9, 'AP75': 0.6, 'mask_AP50': 0.8}
  rows, ok = demo.target_rows('maskrcnn', metrics, minutes=12.0, target_minutes=15.0)
  assert not ok
  assert rows[:3] == [
    ('wall time (min)', '12.0', '<= 15', 'ok'),
    ('AP', 0.5, '>= 0.45', 'ok'),
    ('mask_AP', 0.39, '>= 0.4', 'MISSED'),
  ]
  # Reported without a target (mask_AP75 missing from the metrics: left out).
  assert [row[0] for row in rows[3:]] == ['AP50', 'AP75', 'mask_AP50']
  _, ok = demo.target_rows('maskrcnn', {**metrics, 'mask_AP': 0.4}, 15.0, 15.0)
  assert ok
  _, ok = demo.target_rows('maskrcnn', {**metrics, 'mask_AP': 0.4}, 15.1, 15.0)
  assert not ok


def test_retinanet_target_is_ap50():
  rows, ok = demo.target_rows('retinanet', {'AP50': 0.85, 'AP': 0.6}, 13.7, 15.0)
  assert ok
  assert rows[1] == ('AP50', 0.85, '>= 0.85', 'ok')
  assert rows[2] == ('AP', 0.6, None, None)
  rows, ok = demo.target_rows('retinanet', {'AP50': 0.849, 'AP': 0.6}, 13.7, 15.0)
  assert not ok and rows[1][3] == 'MISSED'

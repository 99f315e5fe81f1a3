"""spinenet-train end to end on a tiny config: train, resume, evaluate, init, errors.

The tiny config runs with the minimal SpineNet and pyramid (minimal_model.MINIMAL_MODEL:
one intermediate block, P3-P5): these tests are about the workflow, not the topology, and
building and tracing the model, most of their time, scales with its blocks, resampling
connections and pyramid levels.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from official_spinenet.training import checkpoints
from official_spinenet.workflows import demo
from official_spinenet.workflows import train
from tests import paths
from tests.minimal_model import MINIMAL_MODEL
from tests.minimal_model import shapes_params

TINY = 'testing/retinanet_tiny.gin'
REPO = paths.REPO


def _steps(model_dir):
  return sorted(
    int(p.split('-')[-1].split('.')[0])
    for p in tf.io.gfile.glob(os.path.join(model_dir, 'ckpt-*.index'))
  )


def test_train_resume_and_evaluate(shapes_data, tmp_path):
  model_dir = str(tmp_path / 'model')
  losses = train.launch([TINY], shapes_params(shapes_data), model_dir, mode='train')
  assert np.isfinite(losses['total_loss'])
  assert _steps(model_dir) == [2, 4]  # checkpoint_interval 2, 4 steps
  operative = open(os.path.join(model_dir, 'operative_config.gin')).read()
  assert "spinenet.filter_size_scale = 0.125" in operative
  assert tf.io.gfile.glob(os.path.join(model_dir, 'train', 'events.out.tfevents.*'))

  # A second run with more steps resumes at step 4, keeps max_checkpoints = 3, and
  # evaluates at the end.
  metrics = train.launch(
    [TINY],
    shapes_params(shapes_data, 'TRAIN_STEPS = 6'),
    model_dir,
    mode='train_and_eval',
  )
  assert _steps(model_dir) == [2, 4, 6]
  for key in ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'ARmax1', 'ARmax10', 'ARmax100'):
    assert key in metrics and -1.0 <= metrics[key] <= 1.0
  assert any(key.startswith('AP/') for key in metrics)  # per-class AP
  saved = json.load(open(os.path.join(model_dir, 'metrics.json')))
  assert saved['step'] == 6 and saved['AP50'] == pytest.approx(metrics['AP50'])
  assert os.path.exists(os.path.join(model_dir, 'eval', 'metrics-6.json'))

  # --mode=eval on the finished run gives the same metrics.
  again = train.launch(
    [TINY], shapes_params(shapes_data, 'TRAIN_STEPS = 6'), model_dir, mode='eval'
  )
  assert again['AP50'] == pytest.approx(metrics['AP50'])


def test_eval_with_ground_truth_from_records(shapes_data, tiny_retinanet_run, tmp_path):
  model_dir = shutil.copytree(tiny_retinanet_run, str(tmp_path / 'model'))
  from_json = train.launch([TINY], shapes_params(shapes_data), model_dir, mode='eval')
  # Without ANNOTATION_FILE the ground truth comes from the eval records.
  without_annotations = demo.shapes_data_params(shapes_data)[:2] + MINIMAL_MODEL
  from_records = train.launch([TINY], without_annotations, model_dir, mode='eval')
  assert from_records['AP'] == pytest.approx(from_json['AP'], abs=1e-6)


def _trainer(gin_params, model_dir):
  from official_spinenet import configurables  # pylint: disable=g-import-not-at-top
  from official_spinenet.training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top

  configurables.parse_gin([TINY], gin_params)
  experiment = configurables.build_experiment()
  return trainer_lib.Trainer(
    experiment['task'],
    tf.distribute.get_strategy(),
    model_dir,
    experiment['config'],
    experiment['learning_rate'],
  )


def test_init_checkpoint_with_another_number_of_classes(shapes_data, tiny_retinanet_run, tmp_path):
  source_dir = tiny_retinanet_run  # read only
  source = tf.train.load_checkpoint(tf.train.latest_checkpoint(source_dir))
  params = shapes_params(
    shapes_data,
    'NUM_CLASSES = 7',
    f"TrainerConfig.init_checkpoint = '{source_dir}'",
    "TrainerConfig.init_checkpoint_modules = ['backbone', 'head_without_classifier']",
  )
  target = _trainer(params, str(tmp_path / 'target'))
  fresh_classifier = target.model.head._classifier.kernel.numpy()
  assert target.restore() == f'init:{source_dir}'
  assert target.global_step == 0  # weights only, no optimizer state
  # Every backbone weight and the box predictor now hold the source's values.
  for variable, key in (
    (target.model.backbone.weights[0], 'backbone'),
    (target.model.head._box_regressor.kernel, 'head/_box_regressor'),
  ):
    names = [
      n
      for n, shape in tf.train.list_variables(tf.train.latest_checkpoint(source_dir))
      if n.startswith(key + '/')
      and tuple(shape) == tuple(variable.shape)
      and 'kernel' in n
      and 'OPTIMIZER' not in n
    ]
    assert any(np.array_equal(source.get_tensor(n), variable.numpy()) for n in names), key
  # The 7-class predictor keeps its fresh initialisation.
  np.testing.assert_array_equal(target.model.head._classifier.kernel.numpy(), fresh_classifier)

  # Taking the whole head fails clearly: the class predictor does not fit.
  params[-1] = "TrainerConfig.init_checkpoint_modules = ['all']"
  with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match='shape'):
    _trainer(params, str(tmp_path / 'target2')).restore()


def test_bad_init_checkpoint_names_the_problem(shapes_data, tmp_path):
  with pytest.raises(ValueError, match='no checkpoint in directory'):
    checkpoints.restore_modules(str(tmp_path), {'model': None, 'backbone': None}, ['backbone'])


def test_batch_not_divisible_by_replicas(shapes_data, tmp_path):
  from official_spinenet import configurables
  from official_spinenet.training import trainer as trainer_lib

  configurables.parse_gin([TINY], demo.shapes_data_params(shapes_data) + ['TRAIN_BATCH_SIZE = 3'])
  experiment = configurables.build_experiment()

  class TwoReplicas:  # The check runs before anything touches the strategy's devices.
    num_replicas_in_sync = 2

  strategy = TwoReplicas()
  with pytest.raises(ValueError, match=r'global_batch_size=3 is not divisible by the 2 replicas'):
    trainer_lib.Trainer(
      experiment['task'], strategy, str(tmp_path), experiment['config'], experiment['learning_rate']
    )


def test_binary_flags_and_gin_errors_fail_fast(shapes_data, tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='3')
  base = [sys.executable, '-m', 'official_spinenet.binaries.train', f'--model_dir={tmp_path}']
  typo = subprocess.run(
    base + [f'--gin_file={TINY}', "--gin_param=spinenet.modl_id = '96'"],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
  )
  assert typo.returncode != 0
  assert 'modl_id' in typo.stderr
  bad_mode = subprocess.run(
    base + [f'--gin_file={TINY}', '--mode=fit'],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
  )
  assert bad_mode.returncode != 0 and '--mode' in bad_mode.stderr
  # Nothing heavy ran: no checkpoint, no operative config.
  assert not os.listdir(tmp_path)

"""Training state you can trust, preemption, and errors before heavy work (issue 14).

Tiny RetinaNet (testing/retinanet_tiny.gin) on the session's shapes data, a few steps each,
with the minimal SpineNet and pyramid (minimal_model.MINIMAL_MODEL: one intermediate
block, P3-P5). What is checked here is the trainer's state and errors, not the topology,
and building and tracing a model, most of each test's time, scales with its blocks,
resampling connections and pyramid levels.
"""

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from official_spinenet import configurables
from official_spinenet.evaluation import coco_evaluator
from official_spinenet.training import optimization
from official_spinenet.training import train_state
from official_spinenet.training import trainer as trainer_lib
from official_spinenet.workflows import train
from tests import paths
from tests.minimal_model import shapes_params

TINY = 'testing/retinanet_tiny.gin'


def _steps(model_dir):
  return sorted(
    int(p.split('-')[-1].split('.')[0])
    for p in tf.io.gfile.glob(os.path.join(model_dir, 'ckpt-*.index'))
  )


def _trainer(shapes_data, model_dir, *params):
  """A Trainer of the tiny config in this process (its optimizer from gin, SGD)."""
  configurables.parse_gin([TINY], shapes_params(shapes_data, *params))
  parts = configurables.build_experiment()
  parts.update(strategy=tf.distribute.get_strategy(), model_dir=model_dir)
  return trainer_lib.Trainer(**parts)


def _launch(shapes_data, model_dir, *params, mode='train'):
  return train.launch([TINY], shapes_params(shapes_data, *params), model_dir, mode)


def _copy(run, tmp_path):
  """A copy of a finished run's model dir (checkpoints at steps 1 and 2)."""
  return shutil.copytree(run, str(tmp_path / 'model'))


# ---- (a) training state you can trust ------------------------------------------


def test_config_errors_come_before_anything_is_built(shapes_data, tmp_path):
  model_dir = str(tmp_path / 'model')
  with pytest.raises(ValueError, match=r'TrainerConfig.steps_per_loop must be >= 1, got 0'):
    _launch(shapes_data, model_dir, 'TrainerConfig.steps_per_loop = 0')
  with pytest.raises(ValueError, match=r'learning_rate.warmup_steps=10 must be in \[0, total'):
    _launch(shapes_data, model_dir, 'learning_rate.warmup_steps = 10')
  assert not os.path.exists(model_dir)


def test_a_diverging_step_never_becomes_the_newest_checkpoint(
  shapes_data, tiny_retinanet_run, tmp_path
):
  model_dir = _copy(tiny_retinanet_run, tmp_path)
  every_step = ['TrainerConfig.steps_per_loop = 1', 'TrainerConfig.checkpoint_interval = 1']
  assert _steps(model_dir) == [1, 2]
  # The case: one step at 1e30 keeps a finite loss but blows up the weights.
  with pytest.raises(FloatingPointError, match='the newest checkpoint, .*ckpt-2, is the last good'):
    _launch(
      shapes_data,
      model_dir,
      'TRAIN_STEPS = 6',
      'learning_rate.base_learning_rate = 1e30',
      *every_step,
    )
  assert _steps(model_dir) == [1, 2]
  # A resume at a sane learning rate starts from it by itself and finishes.
  losses = _launch(shapes_data, model_dir, 'TRAIN_STEPS = 3', *every_step)
  assert np.isfinite(losses['total_loss']) and _steps(model_dir) == [1, 2, 3]


def test_resume_walks_back_over_a_checkpoint_with_nan_weights(
  shapes_data, tiny_retinanet_run, tmp_path
):
  model_dir = _copy(tiny_retinanet_run, tmp_path)
  # A checkpoint written without the check (an older version): NaN weights at step 3.
  bad = _trainer(shapes_data, model_dir)
  bad.restore()
  bad.model.trainable_variables[0].assign(bad.model.trainable_variables[0] * np.nan)
  bad.optimizer.iterations.assign(3)
  bad.manager.save(checkpoint_number=3)
  resumed = _trainer(shapes_data, model_dir)
  assert resumed.restore().endswith('ckpt-2') and resumed.global_step == 2


def test_resume_applies_a_new_learning_rate(shapes_data, tiny_retinanet_run, tmp_path, caplog):
  model_dir = _copy(tiny_retinanet_run, tmp_path)  # constant 0.32 per 256 images
  resumed = _trainer(shapes_data, model_dir, 'learning_rate.base_learning_rate = 0.032')
  with caplog.at_level(logging.WARNING):
    resumed.restore()
  assert float(optimization.current_learning_rate(resumed.optimizer)) == pytest.approx(
    0.032 * 4 / 256
  )
  assert 'learning_rate.value 0.005 -> 0.0005' in caplog.text
  resumed.train(until_step=3)  # the step uses it: the variable is not restored again
  assert float(optimization.current_learning_rate(resumed.optimizer)) == pytest.approx(0.0005)
  # Constant -> cosine: the schedule applies from the restored step.
  cosine = _trainer(shapes_data, model_dir, "learning_rate.decay = 'cosine'", 'TRAIN_STEPS = 8')
  cosine.restore()
  assert cosine.global_step == 3
  assert float(optimization.current_learning_rate(cosine.optimizer)) == pytest.approx(
    float(cosine.learning_rate(3))
  )


def test_resume_with_another_optimizer_names_the_difference(
  shapes_data, tiny_retinanet_run, tmp_path
):
  model_dir = _copy(tiny_retinanet_run, tmp_path)
  with pytest.raises(ValueError, match=r'Cannot resume from .*ckpt-2.*optimizer SGD -> Adam'):
    _launch(shapes_data, model_dir, 'TRAIN_STEPS = 3', 'experiment.optimizer = @adam')


def test_a_loss_that_grows_by_orders_of_magnitude_is_warned_about_then_stopped():
  watch = train_state.LossWatch(warn_factor=100, stop_factor=1e6)
  watch.update(2, lowest=1.5, last=2.0)
  watch.update(4, lowest=1.0, last=1.2)
  assert not watch.warnings
  watch.update(6, lowest=1.1, last=500.0)
  watch.update(8, lowest=1.1, last=600.0)  # same order of magnitude: one warning
  assert len(watch.warnings) == 1 and 'grew 5.0e+02x' in watch.warnings[0]
  with pytest.raises(FloatingPointError, match=r'grew 2.0e\+09x.*the run diverged'):
    watch.update(10, lowest=1e3, last=2e9)


def test_loss_growth_warning_reaches_the_final_summary(shapes_data, tmp_path, caplog):
  model_dir = str(tmp_path / 'model')
  # Any growth over the first step's loss warns: the summary at the end repeats it.
  with caplog.at_level(logging.WARNING):
    _launch(shapes_data, model_dir, 'TrainerConfig.loss_growth_warning = 1e-9')
  assert re.search(r'Training reached step 4 with 1 warning\(s\): the training loss', caplog.text)


# ---- (b) preemption ---------------------------------------------------------------


def _binary(model_dir, shapes_data, *params):
  flags = [f'--gin_file={TINY}', f'--model_dir={model_dir}', '--mode=train']
  flags += [f'--gin_param={p}' for p in shapes_params(shapes_data, *params)]
  return [sys.executable, '-m', 'official_spinenet.binaries.train', *flags]


def _env():
  return dict(os.environ, PYTHONPATH=paths.REPO, TF_CPP_MIN_LOG_LEVEL='2')


@pytest.mark.slow
def test_sigterm_saves_at_the_next_step_and_a_rerun_resumes(shapes_data, tmp_path, caplog):
  model_dir = str(tmp_path / 'model')
  # Loops of 20 steps: SIGTERM lands inside one, and the save comes after the step in flight.
  params = ['TRAIN_STEPS = 100000', 'TrainerConfig.steps_per_loop = 20']
  params += ['TrainerConfig.checkpoint_interval = 20']
  log = open(tmp_path / 'run.log', 'w+')
  run = subprocess.Popen(
    _binary(model_dir, shapes_data, *params), stdout=log, stderr=subprocess.STDOUT, env=_env()
  )
  try:
    while tf.train.latest_checkpoint(model_dir) is None:
      assert run.poll() is None, open(tmp_path / 'run.log').read()[-3000:]
      time.sleep(0.2)
    time.sleep(3)  # into the next loop, most likely (either way the checks below hold)
    run.send_signal(signal.SIGTERM)
    returncode = run.wait(timeout=300)
  finally:
    if run.poll() is None:
      run.kill()
  output = open(tmp_path / 'run.log').read()
  assert returncode == 42, output[-3000:]
  assert 'Preempted (SIGTERM): saved' in output
  saved = _steps(model_dir)[-1]
  assert saved >= 20 and f'saved {tf.train.latest_checkpoint(model_dir)} at step {saved}' in output
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  assert reader.get_tensor('optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE') == saved
  # The rerun in this process: the binary's part, SIGTERM -> save and exit 42, is checked
  # above; resuming is train.launch's, which the binary calls (a fresh process would add
  # only TensorFlow's start-up).
  # The trainer logs through absl, whose logger another test may have set to WARNING.
  with caplog.at_level(logging.INFO, logger='absl'):
    _launch(shapes_data, model_dir, f'TRAIN_STEPS = {saved + 1}')
  assert f'at step {saved}.' in caplog.text
  assert _steps(model_dir)[-1] == saved + 1


def test_orphaned_temp_files_are_removed_on_resume(
  shapes_data, tiny_retinanet_run, tmp_path, caplog
):
  model_dir = _copy(tiny_retinanet_run, tmp_path)
  os.makedirs(os.path.join(model_dir, 'ckpt-4_temp'))
  open(os.path.join(model_dir, 'checkpoint.tmp0123abcd'), 'w').close()
  open(os.path.join(model_dir, 'metrics.json.tmp-1-abcdef12'), 'w').close()  # not the trainer's
  with caplog.at_level(logging.WARNING):
    assert _trainer(shapes_data, model_dir).restore().endswith('ckpt-2')
  # Same settings: the float32 learning rate in the checkpoint is not a change.
  assert 'changed optimizer settings' not in caplog.text
  left = sorted(os.listdir(model_dir))
  assert not [n for n in left if train_state.is_temp_file(n)], left
  assert 'metrics.json.tmp-1-abcdef12' in left


# ---- (c) fail before heavy work -----------------------------------------------------


def test_unwritable_model_dir_fails_first(shapes_data, tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  with pytest.raises(ValueError, match=r'--model_dir .*a_file/model.* is not writable'):
    _launch(shapes_data, str(blocker / 'model'))


def test_full_disk_at_save_names_it_and_keeps_the_previous_checkpoint(
  shapes_data, tiny_retinanet_run, tmp_path, monkeypatch
):
  model_dir = _copy(tiny_retinanet_run, tmp_path)
  trainer = _trainer(shapes_data, model_dir)
  trainer.restore()
  checkpoint = trainer.manager._checkpoint  # pylint: disable=protected-access
  real_write = checkpoint._write  # pylint: disable=protected-access

  def full_disk(prefix, *args, **kwargs):
    os.makedirs(prefix + '_temp', exist_ok=True)  # what a save leaves when the disk fills
    raise tf.errors.ResourceExhaustedError(None, None, f'{prefix}: No space left on device')

  monkeypatch.setattr(checkpoint, '_write', full_disk)
  with pytest.raises(OSError, match=r'No space left on device.*ckpt-2 is intact'):
    trainer.train(until_step=4)
  monkeypatch.setattr(checkpoint, '_write', real_write)
  assert _steps(model_dir) == [1, 2]
  assert not [n for n in os.listdir(model_dir) if train_state.is_temp_file(n)]
  assert _trainer(shapes_data, model_dir).restore().endswith('ckpt-2')


def test_init_checkpoint_of_another_model_fails_before_training(shapes_data, tmp_path):
  source = str(tmp_path / 'source')
  # Built, not trained: the check compares the checkpoint's shapes with the model's.
  _trainer(shapes_data, source, 'spinenet.filter_size_scale = 0.25').manager.save(
    checkpoint_number=1, check_interval=False
  )
  target = str(tmp_path / 'target')
  with pytest.raises(ValueError, match=r'does not fit modules \[.backbone.\] of this model.*shape'):
    _launch(shapes_data, target, f"TrainerConfig.init_checkpoint = '{source}'")
  assert not _steps(target)
  # A checkpoint without a backbone fails on its index, before the model is built.
  other = tf.train.Checkpoint(weights=tf.Variable([1.0])).write(str(tmp_path / 'other' / 'ckpt'))
  with pytest.raises(ValueError, match=r"has no \['backbone'\] \(it holds"):
    _launch(shapes_data, str(tmp_path / 'target2'), f"TrainerConfig.init_checkpoint = '{other}'")
  assert not os.path.exists(tmp_path / 'target2' / 'operative_config.gin')


def test_annotation_file_of_another_split_is_refused_before_training(shapes_data, tmp_path):
  model_dir = str(tmp_path / 'model')
  wrong = shapes_data['train']['annotation_file']
  with pytest.raises(ValueError, match=r'does not describe the eval records .*another split'):
    _launch(shapes_data, model_dir, f"ANNOTATION_FILE = '{wrong}'", mode='train_and_eval')
  not_json = tmp_path / 'instances.json'
  not_json.write_text('<html>not json</html>')
  with pytest.raises(ValueError, match=r'is not a COCO instances JSON'):
    _launch(shapes_data, model_dir, f"ANNOTATION_FILE = '{not_json}'", mode='train_and_eval')
  assert not _steps(model_dir)
  # The right file passes the same check.
  coco_evaluator.check_annotations_match_records(
    shapes_data['val']['annotation_file'], shapes_data['val']['tfrecord_pattern']
  )


def test_nan_input_images_are_named_at_the_first_step(shapes_data, tmp_path):
  trainer = _trainer(shapes_data, str(tmp_path / 'model'))
  build_inputs = trainer.task.build_inputs

  def nan_images(is_training, context=None):
    return build_inputs(is_training, context).map(lambda x, y: (x * np.nan, y))

  trainer.task.build_inputs = nan_images
  with pytest.raises(ValueError, match=r'input images hold NaN or Inf .*train_data.file_pattern'):
    trainer.train(until_step=2)
  assert not _steps(str(tmp_path / 'model'))


def test_a_corrupt_shard_is_named(shapes_data, tmp_path):
  data_dir = tmp_path / 'data'
  data_dir.mkdir()
  for path in tf.io.gfile.glob(shapes_data['train']['tfrecord_pattern']):
    shutil.copy(path, data_dir)
  bad = sorted(data_dir.iterdir())[0]
  bad.write_bytes(bad.read_bytes()[:-100])  # truncated
  params = [f"TRAIN_FILE_PATTERN = '{data_dir}/*'"]
  with pytest.raises(ValueError, match=re.escape(bad.name)):
    _launch(shapes_data, str(tmp_path / 'model'), *params)

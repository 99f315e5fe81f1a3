"""Checkpoint import: reference checkpoints -> converter -> our models, same outputs."""

import os
import subprocess
import sys

import tensorflow as tf
import tf_keras

from official.vision.modeling.backbones import spinenet as reference_spinenet
from official_spinenet import checkpoint_conversion
from official_spinenet.modeling.backbones import spinenet
from tests import reference_utils

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 128


class _TaskLike(tf.Module):
  """Stands for an official.vision model: it keeps the backbone as `_backbone`."""

  def __init__(self, backbone):
    super().__init__()
    self._backbone = backbone


class ConvertCheckpointTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.reference = reference_spinenet.SpineNet(
        input_specs=tf_keras.layers.InputSpec(shape=[None, SIZE, SIZE, 3]),
        **reference_spinenet.SCALING_MAP['49S'])
    cls.reference.set_weights(reference_utils.random_weights(cls.reference.get_weights(), 7))
    cls.ours = spinenet.build_spinenet('49S', input_specs=[None, SIZE, SIZE, 3])
    cls.images = tf.random.stateless_uniform([2, SIZE, SIZE, 3], seed=[4, 2])

  def _assert_same_outputs(self):
    difference = reference_utils.max_relative_difference(
        self.reference(self.images), self.ours(self.images))
    self.assertLessEqual(difference, 1e-4)

  def test_task_checkpoint(self):
    # official.vision's trainer writes the model (with `_backbone`) and, as a
    # checkpoint item, the backbone again at the top level.
    source = tf.train.Checkpoint(model=_TaskLike(self.reference)).write(
        os.path.join(self.get_temp_dir(), 'task', 'ckpt-10'))
    out = checkpoint_conversion.convert_backbone_checkpoint(
        source, self.ours, os.path.join(self.get_temp_dir(), 'converted', 'sn49s'))
    fresh = spinenet.build_spinenet('49S', input_specs=[None, SIZE, SIZE, 3])
    checkpoint_conversion.restore_backbone(fresh, out)
    self.assertLessEqual(reference_utils.max_relative_difference(
        self.reference(self.images), fresh(self.images)), 1e-4)

  def test_tool_on_bare_backbone_folder(self):
    folder = os.path.join(self.get_temp_dir(), 'bare')
    tf.train.CheckpointManager(tf.train.Checkpoint(backbone=self.reference), folder, 1).save()
    out = os.path.join(self.get_temp_dir(), 'tool_out', 'ckpt')
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, 'tools', 'convert_checkpoint.py'),
         f'--source={folder}', f'--output={out}', '--model=spinenet', '--model_id=49S'],
        capture_output=True, text=True, check=False, timeout=300)
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    self.assertIn('Wrote', result.stdout)
    checkpoint_conversion.restore_backbone(self.ours, out)
    self._assert_same_outputs()

  def test_wrong_model_id_names_the_variables(self):
    source = tf.train.Checkpoint(backbone=self.reference).write(
        os.path.join(self.get_temp_dir(), 'mismatch', 'ckpt'))
    wrong = spinenet.build_spinenet('49', input_specs=[None, SIZE, SIZE, 3])
    with self.assertRaisesRegex(ValueError, r'does not match SpineNet-49:\n.*wrong shape.*'
                                r'checkpoint \(1, 1, .*\) vs model'):
      checkpoint_conversion.convert_backbone_checkpoint(
          source, wrong, os.path.join(self.get_temp_dir(), 'never'), model_name='SpineNet-49')
    self.assertFalse(tf.io.gfile.exists(os.path.join(self.get_temp_dir(), 'never.index')))

  def test_missing_source(self):
    with self.assertRaisesRegex(ValueError, 'No checkpoint found in folder'):
      checkpoint_conversion.convert_backbone_checkpoint(
          self.get_temp_dir(), self.ours, os.path.join(self.get_temp_dir(), 'x'))
    with self.assertRaisesRegex(ValueError, 'Cannot read checkpoint'):
      checkpoint_conversion.convert_backbone_checkpoint(
          os.path.join(self.get_temp_dir(), 'nothing-here'), self.ours,
          os.path.join(self.get_temp_dir(), 'x'))

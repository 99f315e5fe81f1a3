"""Checkpoint import: reference checkpoints -> converter -> our models, same outputs."""

import os

from official.vision.modeling.backbones import spinenet as reference_spinenet
from official.vision.modeling.decoders import nasfpn as reference_nasfpn
import pytest
import tensorflow as tf
import tf_keras

from official_spinenet import checkpoint_conversion
from official_spinenet.modeling.backbones import spinenet
from official_spinenet.modeling.decoders import nasfpn
from tests import binaries
from tests import reference_utils

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
      **reference_spinenet.SCALING_MAP['49S'],
    )
    cls.reference.set_weights(reference_utils.random_weights(cls.reference.get_weights(), 7))
    cls.ours = spinenet.build_spinenet('49S', input_specs=[None, SIZE, SIZE, 3])
    cls.images = tf.random.stateless_uniform([2, SIZE, SIZE, 3], seed=[4, 2])

  def _assert_same_outputs(self):
    difference = reference_utils.max_relative_difference(
      self.reference(self.images), self.ours(self.images)
    )
    self.assertLessEqual(difference, 1e-4)

  def test_task_checkpoint(self):
    # official.vision's trainer writes the model (with `_backbone`) and, as a
    # checkpoint item, the backbone again at the top level.
    source = tf.train.Checkpoint(model=_TaskLike(self.reference)).write(
      os.path.join(self.get_temp_dir(), 'task', 'ckpt-10')
    )
    out = checkpoint_conversion.convert_backbone_checkpoint(
      source, self.ours, os.path.join(self.get_temp_dir(), 'converted', 'sn49s')
    )
    fresh = spinenet.build_spinenet('49S', input_specs=[None, SIZE, SIZE, 3])
    checkpoint_conversion.restore_backbone(fresh, out)
    self.assertLessEqual(
      reference_utils.max_relative_difference(self.reference(self.images), fresh(self.images)), 1e-4
    )

  def test_tool_on_bare_backbone_folder(self):
    folder = os.path.join(self.get_temp_dir(), 'bare')
    tf.train.CheckpointManager(tf.train.Checkpoint(backbone=self.reference), folder, 1).save()
    out = os.path.join(self.get_temp_dir(), 'tool_out', 'ckpt')
    result = binaries.run_binary(
      'convert_checkpoint',
      f'--source={folder}',
      f'--output={out}',
      '--model=spinenet',
      '--model_id=49S',
      timeout=300,
    )
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    self.assertIn('Wrote', result.stdout)
    checkpoint_conversion.restore_backbone(self.ours, out)
    self._assert_same_outputs()

  def test_wrong_model_id_names_the_variables(self):
    source = tf.train.Checkpoint(backbone=self.reference).write(
      os.path.join(self.get_temp_dir(), 'mismatch', 'ckpt')
    )
    wrong = spinenet.build_spinenet('49', input_specs=[None, SIZE, SIZE, 3])
    with self.assertRaisesRegex(
      ValueError,
      r'does not match SpineNet-49:\n.*wrong shape.*'
      r'checkpoint \(1, 1, .*\) vs model',
    ):
      checkpoint_conversion.convert_backbone_checkpoint(
        source, wrong, os.path.join(self.get_temp_dir(), 'never'), model_name='SpineNet-49'
      )
    self.assertFalse(tf.io.gfile.exists(os.path.join(self.get_temp_dir(), 'never.index')))

  def test_missing_source(self):
    with self.assertRaisesRegex(ValueError, '--source: no checkpoint in directory'):
      checkpoint_conversion.convert_backbone_checkpoint(
        self.get_temp_dir(), self.ours, os.path.join(self.get_temp_dir(), 'x')
      )
    with self.assertRaisesRegex(ValueError, '--source: no checkpoint at'):
      checkpoint_conversion.convert_backbone_checkpoint(
        os.path.join(self.get_temp_dir(), 'nothing-here'),
        self.ours,
        os.path.join(self.get_temp_dir(), 'x'),
      )

  @pytest.mark.slow
  def test_tool_converts_backbone_and_decoder(self):
    """spinenet-convert-checkpoint on a SpineNet-49S + NAS-FPN training checkpoint."""
    decoder = _reference_nasfpn(self.reference.output_specs, 12, num_repeats=1, num_filters=32)
    folder = os.path.join(self.get_temp_dir(), 'tool_src')
    tf.train.CheckpointManager(
      tf.train.Checkpoint(
        model=_RetinaNetLike(self.reference, decoder), backbone=self.reference, decoder=decoder
      ),
      folder,
      1,
    ).save()
    out = os.path.join(self.get_temp_dir(), 'tool_nasfpn', 'ckpt')
    result = binaries.run_binary(
      'convert_checkpoint',
      f'--source={folder}',
      f'--output={out}',
      '--model=spinenet',
      '--model_id=49S',
      '--decoder=nasfpn',
      '--decoder_num_repeats=1',
      '--decoder_num_filters=32',
      timeout=300,
    )
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    self.assertIn('(backbone, decoder)', result.stdout)
    ours = nasfpn.NASFPN(input_specs=self.ours.output_specs, num_repeats=1, num_filters=32)
    checkpoint_conversion.restore_converted(out, backbone=self.ours, decoder=ours)
    self.assertLessEqual(
      reference_utils.max_relative_difference(
        decoder(self.reference(self.images)), ours(self.ours(self.images))
      ),
      1e-4,
    )


class _RetinaNetLike(tf.Module):
  """Stands for an official.vision RetinaNet: `_backbone` and `_decoder`."""

  def __init__(self, backbone, decoder):
    super().__init__()
    self._backbone = backbone
    self._decoder = decoder


def _reference_nasfpn(input_specs, seed, **kwargs):
  decoder = reference_nasfpn.NASFPN(input_specs=input_specs, **kwargs)
  decoder.set_weights(reference_utils.random_weights(decoder.get_weights(), seed))
  return decoder


class ConvertDecoderCheckpointTest(tf.test.TestCase):
  """A Model Garden RetinaNet checkpoint's NAS-FPN decoder converts into ours."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # Features of a narrow ResNet-like backbone (levels 2-5) stand for a backbone's.
    cls.input_specs = {str(l): [None, SIZE // 2**l, SIZE // 2**l, 8 * l] for l in range(2, 6)}
    cls.decoder = _reference_nasfpn(
      {k: tf.TensorShape(v) for k, v in cls.input_specs.items()}, 11, num_repeats=1, num_filters=16
    )
    cls.backbone = tf_keras.Sequential([tf_keras.layers.Dense(3)])
    cls.backbone.build([None, 4])
    cls.features = {
      k: tf.random.stateless_normal([1] + v[1:], seed=[int(k), 3])
      for k, v in cls.input_specs.items()
    }

  def _ours(self, **kwargs):
    args = dict(input_specs=self.input_specs, num_repeats=1, num_filters=16)
    args.update(kwargs)
    return nasfpn.NASFPN(**args)

  def test_retinanet_checkpoint(self):
    # official.vision's trainer writes the model and its checkpoint items
    # (`decoder/` and `model/_decoder/`); a bare model has only the latter.
    model = _RetinaNetLike(self.backbone, self.decoder)
    sources = {
      'decoder': tf.train.Checkpoint(
        model=model, backbone=self.backbone, decoder=self.decoder
      ).write(os.path.join(self.get_temp_dir(), 'task', 'ckpt-1')),
      'model/_decoder': tf.train.Checkpoint(model=model).write(
        os.path.join(self.get_temp_dir(), 'model_only', 'ckpt-1')
      ),
    }
    target, fresh = self._ours(), self._ours()
    for prefix, source in sources.items():
      self.assertIn(prefix + '/', ''.join(k for k, _ in tf.train.list_variables(source)))
      out = checkpoint_conversion.convert_checkpoint(
        source,
        {'decoder': target},
        os.path.join(self.get_temp_dir(), 'converted', prefix.replace('/', '_')),
      )
      self.assertEqual(
        {k.split('/')[0] for k, _ in tf.train.list_variables(out)},
        {'decoder', '_CHECKPOINTABLE_OBJECT_GRAPH'},
      )
      fresh.set_weights([tf.zeros_like(w) for w in fresh.get_weights()])
      checkpoint_conversion.restore_converted(out, decoder=fresh)
      self.assertEqual(
        reference_utils.max_relative_difference(self.decoder(self.features), fresh(self.features)),
        0.0,
      )

  def test_mismatched_decoder_names_the_variables(self):
    source = tf.train.Checkpoint(decoder=self.decoder).write(
      os.path.join(self.get_temp_dir(), 'mismatch', 'ckpt')
    )
    never = os.path.join(self.get_temp_dir(), 'never')
    narrow = self._ours(num_filters=8)
    with self.assertRaisesRegex(
      ValueError,
      r'does not match NAS-FPN 1@8:\n.*wrong shape'
      r'(.|\n)*--decoder and its --decoder_\* flags',
    ):
      checkpoint_conversion.convert_checkpoint(
        source, {'decoder': narrow}, never, model_names={'decoder': 'NAS-FPN 1@8'}
      )
    with self.assertRaisesRegex(ValueError, r'variables are missing'):
      checkpoint_conversion.convert_checkpoint(
        source, {'decoder': self._ours(num_repeats=2)}, never
      )
    self.assertFalse(tf.io.gfile.exists(never + '.index'))
    bare = tf.train.Checkpoint(backbone=self.backbone).write(
      os.path.join(self.get_temp_dir(), 'bare', 'ckpt')
    )
    with self.assertRaisesRegex(
      ValueError,
      r'Found no decoder variables.*'
      r'--decoder_source_prefix',
    ):
      checkpoint_conversion.convert_checkpoint(bare, {'decoder': narrow}, never)

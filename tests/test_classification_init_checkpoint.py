"""A classification-trained backbone initialises RetinaNet's and Mask R-CNN's backbones.

The classifier's training checkpoint (tf.train.Checkpoint(optimizer=, model=, backbone=,
head=), as the trainer writes it) names its backbone 'backbone' as the detectors' do, so
`TrainerConfig.init_checkpoint` with init_checkpoint_modules=['backbone'] (the default)
takes the SpineNet weights and leaves everything else of the detector fresh. The tiny
classifier's backbone (SpineNet-49 x0.125, 16-filter endpoints) is the tiny detection
configs' backbone; the classifier's input size differs, which the weights do not depend on.
"""

import numpy as np
import pytest
import tensorflow as tf

from official_spinenet import configurables
from official_spinenet.training import checkpoints
from official_spinenet.training import trainer as trainer_lib
from tests import classification_export_fixtures as fixtures


def _perturb_backbone(model):
  """Moves every backbone weight off its initial value, so a restore is visible."""
  for i, variable in enumerate(model.backbone.weights):
    variable.assign(variable + 0.01 * (i + 1))


@pytest.fixture(scope='module')
def classifier(tmp_path_factory):
  _, model, _, prefix = fixtures.make_checkpoint(
    tmp_path_factory.mktemp('classifier'), prepare=_perturb_backbone
  )
  return {'prefix': prefix, 'backbone': [w.numpy() for w in model.backbone.weights]}


def _detector_trainer(gin_file, params, model_dir):
  configurables.parse_gin([gin_file], params)
  experiment = configurables.build_experiment()
  return trainer_lib.Trainer(
    experiment['task'],
    tf.distribute.get_strategy(),
    str(model_dir),
    experiment['config'],
    experiment['learning_rate'],
  )


@pytest.mark.parametrize(
  'gin_file',
  [
    fixtures.DETECTION_CONFIGS[0],
    pytest.param(fixtures.DETECTION_CONFIGS[1], marks=pytest.mark.slow),  # 30 s on 2 cores
  ],
)
def test_classifier_backbone_initialises_the_detector(classifier, gin_file, tmp_path):
  params = [
    f"TrainerConfig.init_checkpoint = '{classifier['prefix']}'",
    "TrainerConfig.init_checkpoint_modules = ['backbone']",
  ]
  trainer = _detector_trainer(gin_file, params, tmp_path)
  backbone = trainer.model.backbone
  backbone_ids = {id(w) for w in backbone.weights}
  others = [w for w in trainer.model.weights if id(w) not in backbone_ids]
  fresh_others = [w.numpy() for w in others]
  assert len(backbone.weights) == len(classifier['backbone'])
  assert not np.array_equal(backbone.weights[0].numpy(), classifier['backbone'][0])

  assert trainer.restore() == f"init:{classifier['prefix']}"
  assert trainer.global_step == 0  # weights only: no optimizer state, no step
  for variable, want in zip(backbone.weights, classifier['backbone']):
    np.testing.assert_array_equal(variable.numpy(), want, err_msg=variable.name)
  # The heads (and the FPN / RPN of Mask R-CNN) keep their fresh initialisation.
  assert others
  for variable, fresh in zip(others, fresh_others):
    np.testing.assert_array_equal(variable.numpy(), fresh, err_msg=variable.name)


@pytest.mark.parametrize(
  'binding',
  [
    'spinenet.filter_size_scale = 0.25',
    pytest.param("spinenet.model_id = '96'", marks=pytest.mark.slow),  # a larger model
  ],
)
def test_another_backbone_fails_clearly(classifier, binding):
  configurables.parse_gin([fixtures.DETECTION_CONFIGS[0]], [binding])
  task = configurables.build_experiment()['task']
  items = task.checkpoint_items(task.build_model())
  with pytest.raises(ValueError, match=r'does not fit modules \[.backbone.\]'):
    checkpoints.restore_modules(classifier['prefix'], items, ['backbone'])

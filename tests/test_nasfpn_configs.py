"""The NAS-FPN gin configs carry the paper's training protocol.

tests/test_gin_configs.py builds every gin file and checks its parameter count;
this file pins what the NAS-FPN ones train with (the NAS-FPN paper's numbers).
"""

import pytest

from official_spinenet import configurables
from official_spinenet.modeling.backbones import resnet

COCO_STEPS_PER_EPOCH = 118287 / 64


@pytest.mark.parametrize(
  'gin_file,repeats,filters,dropblock,epochs,decay_epochs',
  [
    ('nasfpn/r50_nasfpn_3x256_640.gin', 3, 256, 0.0, 50, (30, 40)),
    ('nasfpn/r50_nasfpn_5x256_640.gin', 5, 256, 0.0, 50, (30, 40)),
    ('nasfpn/r50_nasfpn_7x256_640.gin', 7, 256, 0.0, 50, (30, 40)),
    ('nasfpn/r50_nasfpn_7x384_640.gin', 7, 384, 0.0, 50, (30, 40)),
    ('nasfpn/r50_nasfpn_7x384_dropblock_640.gin', 7, 384, 0.1, 150, (120, 140)),
    ('nasfpn/spinenet49_nasfpn_5x256_640.gin', 5, 256, 0.0, 50, (30, 40)),
  ],
)
def test_protocol(gin_file, repeats, filters, dropblock, epochs, decay_epochs):
  import gin  # pylint: disable=g-import-not-at-top

  configurables.parse_gin([gin_file])
  experiment = configurables.build_experiment()
  task, config = experiment['task'], experiment['config']
  assert task.image_size == (640, 640)
  assert task._loss_args['focal_loss_alpha'] == 0.25  # pylint: disable=protected-access
  assert task._loss_args['focal_loss_gamma'] == 1.5  # pylint: disable=protected-access
  assert task.l2_weight_decay == 1e-4
  assert (task.train_data.aug_scale_min, task.train_data.aug_scale_max) == (0.8, 1.2)
  assert task.train_data.global_batch_size == 64
  assert str(gin.query_parameter('nasfpn.num_repeats')) == '%NUM_REPEATS'
  assert str(gin.query_parameter('nasfpn.num_filters')) == '%NUM_FILTERS'
  assert gin.query_parameter('%NUM_REPEATS') == repeats
  assert gin.query_parameter('%NUM_FILTERS') == filters
  assert gin.query_parameter('sgd.momentum') == 0.9
  bindings = gin.get_bindings('official_spinenet.nasfpn')
  assert bindings.get('dropblock_drop_rate', 0.0) == dropblock
  assert config.train_steps == pytest.approx(epochs * COCO_STEPS_PER_EPOCH, abs=1)
  schedule = experiment['learning_rate'](global_batch_size=64, total_steps=config.train_steps)
  # 0.08 at batch 64 after the warm-up, x0.1 after each decay epoch.
  for epoch, expected in (
    (1, 0.08),
    (decay_epochs[0] - 1, 0.08),
    (decay_epochs[0] + 1, 0.008),
    (decay_epochs[1] + 1, 0.0008),
  ):
    step = int(epoch * COCO_STEPS_PER_EPOCH)
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-5), epoch
  assert float(schedule(0)) == pytest.approx(0.0067)


def test_resnet_builder_rejects_levels_it_does_not_have():
  with pytest.raises(ValueError, match=r'min_level must be in \[2, 5\]'):
    resnet.build_resnet(input_specs=[None, 128, 128, 3], min_level=6, max_level=7)


def test_unknown_nasfpn_parameter_is_an_error():
  with pytest.raises(ValueError, match=r"num_repeat.*'nasfpn'"):
    configurables.parse_gin(['nasfpn/r50_nasfpn_3x256_640.gin'], ['nasfpn.num_repeat = 3'])

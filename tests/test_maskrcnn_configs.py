"""Every Mask R-CNN gin file builds its model, with the published size and protocol.

The COCO configs (gin_configs/maskrcnn/) follow the tensorflow/tpu model zoo's
spinenet*_mrcnn.yaml (SpineNet Sec. 5): the model each builds is the one
`spinenet-stats` counts for its 'maskrcnn' row (docs/model_stats.md), and its
parameter count is checked against the published figure. Parameter counts do
not depend on the input size, so every model is built at 128 px.
"""

import glob
import os

import pytest

from official_spinenet import config_files
from official_spinenet import configurables
from official_spinenet.modeling import model_stats
from official_spinenet.modeling import published_models

GIN_DIR = config_files.gin_configs_dir()
BUILD_SIZE = 128
# COCO config -> its published model (published_models.MODELS key).
COCO_CONFIGS = {
  'maskrcnn/spinenet49s_640.gin': '49S',
  'maskrcnn/spinenet49_640.gin': '49',
  'maskrcnn/spinenet96_1024.gin': '96',
  'maskrcnn/spinenet143_1280.gin': '143',
  'maskrcnn/spinenet190_1536.gin': '190',
}
# Trainable parameters (M) of each config's model, 91 COCO classes unless noted;
# the COCO ones equal the 'maskrcnn' rows of docs/model_stats.md. Published: 49S
# 13.9M (SpineNet paper), 49 40.8M, 96 55.2M, 143 79.2M (tf-models-official),
# 190 168.2M (tensorflow/tpu model zoo). The demo and tiny configs (5 classes)
# have no published figure; pinned so that a change to them is deliberate. Other
# test-only configs (testing/maskrcnn_*.gin) only have to build.
EXPECTED_PARAMS_M = {
  'maskrcnn/spinenet49s_640.gin': 13.95,
  'maskrcnn/spinenet49_640.gin': 40.75,
  'maskrcnn/spinenet96_1024.gin': 55.19,
  'maskrcnn/spinenet143_1280.gin': 79.17,
  'maskrcnn/spinenet190_1536.gin': 168.21,
  'demo/maskrcnn_spinenet_shapes.gin': 2.33,
  'testing/maskrcnn_tiny.gin': 0.39,
}
# Our counts match every published figure within 0.3%; RetinaNet's stats tests
# allow the same order (SpineNet-49 28.54M within [28.3, 28.7] of 28.5M).
PUBLISHED_PARAMS_RTOL = 0.005
# build_model creates the weights with one eager inference pass; Model Garden's
# default per-class NMS loops over 91 classes in Python there (a quarter of the
# build time of SpineNet-49 here). The NMS flavour has no weights, so the build
# test takes the batched ones.
FAST_NMS = (
  'MultilevelROIGenerator.use_batched_nms = True',
  "DetectionGenerator.nms_version = 'batched'",
)
# Building SpineNet-96 and larger takes over 20 s each here (2 CPU cores).
SLOW = {
  'maskrcnn/spinenet96_1024.gin',
  'maskrcnn/spinenet143_1280.gin',
  'maskrcnn/spinenet190_1536.gin',
}


def _maskrcnn_gin_files():
  """Every Mask R-CNN gin file but base.gin, relative to the gin_configs folder."""
  patterns = ('maskrcnn/*.gin', 'demo/maskrcnn*.gin', 'testing/maskrcnn*.gin')
  files = {
    os.path.relpath(path, GIN_DIR)
    for pattern in patterns
    for path in glob.glob(os.path.join(GIN_DIR, pattern))
  }
  return sorted(f for f in files if not f.endswith('base.gin'))


def _params(name):
  marks = [pytest.mark.slow] if name in SLOW else []
  return pytest.param(name, marks=marks, id=name)


def _head_configs(model):
  """(rpn, box head, mask head, RoI generator, detection generator) configs."""
  layers = (
    model.rpn_head,
    model.detection_head[0],
    model.mask_head,
    model.roi_generator,
    model.detection_generator,
  )
  return [layer.get_config() for layer in layers]


def test_the_tables_cover_the_model_configs():
  model_configs = [f for f in _maskrcnn_gin_files() if f.startswith(('maskrcnn/', 'demo/'))]
  assert sorted(model_configs) == sorted(set(EXPECTED_PARAMS_M) - {'testing/maskrcnn_tiny.gin'})
  assert set(COCO_CONFIGS) == {f for f in model_configs if f.startswith('maskrcnn/')}


@pytest.mark.parametrize('gin_file', [_params(f) for f in _maskrcnn_gin_files()])
def test_gin_file_builds_its_model(gin_file):
  configurables.parse_gin([gin_file], [f'IMAGE_SIZE = {BUILD_SIZE}', *FAST_NMS])
  experiment = configurables.build_experiment()
  task = experiment['task']
  assert task.image_size == (BUILD_SIZE, BUILD_SIZE)
  model = task.build_model()
  rpn, box, mask, rois, detections = _head_configs(model)
  assert (rpn['min_level'], rpn['max_level']) == (3, 7)
  assert rpn['num_anchors_per_location'] == 3  # 1 scale x 3 aspect ratios
  assert box['num_classes'] == mask['num_classes'] == task.num_classes

  params_m = model_stats.count_params(model) / 1e6
  print(f'{gin_file}: {params_m:.3f}M parameters')
  if gin_file in EXPECTED_PARAMS_M:
    assert round(params_m, 2) == pytest.approx(EXPECTED_PARAMS_M[gin_file], abs=0.011)
  key = COCO_CONFIGS.get(gin_file)
  if key:
    entry = published_models.MODELS[key].maskrcnn
    assert params_m == pytest.approx(entry.published[0], rel=PUBLISHED_PARAMS_RTOL)
    # The heads spinenet-stats counts for this model.
    assert (rpn['num_convs'], rpn['num_filters']) == (1, entry.head_filters)
    assert (box['num_convs'], box['num_filters']) == (entry.box_convs, entry.head_filters)
    assert (box['num_fcs'], box['fc_dims']) == (1, entry.fc_dims)
    assert (mask['num_convs'], mask['num_filters']) == (entry.mask_convs, entry.head_filters)
    assert mask['upsample_factor'] == 2
    assert rois['test_num_proposals'] == published_models.TEST_PROPOSALS
    assert detections['max_num_detections'] == published_models.MAX_DETECTIONS


@pytest.mark.parametrize('gin_file', sorted(COCO_CONFIGS))
def test_protocol_bindings(gin_file):
  """The tensorflow/tpu spinenet*_mrcnn.yaml protocol (model_garden_spec.md Sec. 5)."""
  is_190 = gin_file.endswith('190_1536.gin')
  configurables.parse_gin([gin_file])
  experiment = configurables.build_experiment()
  task, config = experiment['task'], experiment['config']
  resolution = published_models.MODELS[COCO_CONFIGS[gin_file]].maskrcnn.resolution
  assert task.image_size == (resolution, resolution)
  assert task.num_classes == 91
  assert (task.min_level, task.max_level) == (3, 7)
  assert task.anchors == {
    'num_scales': 1,
    'aspect_ratios': (0.5, 1.0, 2.0),
    'anchor_size': 5.0 if is_190 else 3.0,
  }
  assert task.l2_weight_decay == pytest.approx(4e-5)
  data = task.train_data
  assert data.global_batch_size == 256
  assert (data.aug_scale_min, data.aug_scale_max) == ((0.1, 2.0) if is_190 else (0.5, 2.0))
  # 350 epochs, LR 0.28 x0.1 at steps 148,160 and 157,420; 190: 400 epochs, at
  # 173,530 and 182,910. Boundaries are fractions of training, so they land within
  # a few steps of the yaml's.
  steps, boundaries = (187600, (173530, 182910)) if is_190 else (162050, (148160, 157420))
  assert config.train_steps == steps
  schedule = experiment['learning_rate'](global_batch_size=256, total_steps=steps)
  assert float(schedule(0)) == pytest.approx(0.0067)
  for step, rate in [
    (2000, 0.28),
    (boundaries[0] - 10, 0.28),
    (boundaries[0] + 10, 0.028),
    (boundaries[1] - 10, 0.028),
    (boundaries[1] + 10, 0.0028),
    (steps, 0.0028),
  ]:
    assert float(schedule(step)) == pytest.approx(rate), step

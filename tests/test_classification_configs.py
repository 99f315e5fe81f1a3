"""Every classification gin file builds its task; the paper's protocol and model sizes.

gin_configs/classification/ holds SpineNet-49 / 96 / 143 / 190 on ImageNet and
iNaturalist-2017 (SpineNet Sec. 5.1, tensorflow/tpu's spinenet*_classification.yaml);
the demo and test configs train on the shapes classification set. Each model
file's header quotes the published top-1, pinned here against the paper's table.
"""

import glob
import os
import re

import pytest
import tensorflow as tf

from official_spinenet import config_files
from official_spinenet import configurables
from official_spinenet.modeling import model_stats
from official_spinenet.tasks import classification_task

GIN_DIR = config_files.gin_configs_dir()
MODEL_IDS = ('49', '96', '143', '190')
# SpineNet Table 5: top-1 of the plain -> improved recipe (190: improved only).
PUBLISHED_TOP1 = {
  'imagenet': {'49': ('77.0', '78.1'), '96': ('78.2', '79.4'), '143': ('79.0', '80.1'),
               '190': (None, '80.8')},
  'inat2017': {'49': ('59.3', '63.3'), '96': ('61.7', '64.7'), '143': ('63.6', '66.7'),
               '190': (None, '67.6')},
}  # fmt: skip
# Published ImageNet classifier parameters (M) at 224 (SpineNet Table 5;
# `published_models.MODELS[...].published_classification`).
PUBLISHED_PARAMS_M = {'49': 22.1, '96': 36.5, '143': 60.5, '190': 127.1}
PARAMS_RTOL = 0.015
# Building SpineNet-96 and larger takes over 20 s each here (2 CPU cores).
SLOW_MODELS = ('96', '143', '190')
PLAIN_RECIPE = (
  "ACTIVATION = 'relu'",
  'STOCHASTIC_DEPTH_RATE = 0.0',
  'LABEL_SMOOTHING = 0.0',
)


def _classification_gin_files():
  """Every classification gin file but the *base.gin ones, relative to gin_configs/."""
  found = []
  for pattern in (
    'classification/*.gin',
    'demo/classification*.gin',
    'testing/classification*.gin',
  ):
    found += glob.glob(os.path.join(GIN_DIR, pattern))
  return sorted(os.path.relpath(p, GIN_DIR) for p in found if not p.endswith('base.gin'))


def _build(gin_file, params=()):
  configurables.parse_gin([gin_file], list(params))
  return configurables.build_experiment()


def _backbone_config(task):
  """The config of the backbone the task would build (at 128 px: quicker than 224)."""
  return task._backbone_fn(input_specs=[None, 128, 128, 3]).get_config()


def test_every_model_and_dataset_has_a_config():
  expected = [f'classification/spinenet{m}_{d}.gin' for d in PUBLISHED_TOP1 for m in MODEL_IDS]
  expected += ['demo/classification_spinenet_shapes.gin', 'testing/classification_tiny.gin']
  assert _classification_gin_files() == sorted(expected)


@pytest.mark.parametrize('gin_file', _classification_gin_files())
def test_gin_file_builds_its_task(gin_file):
  experiment = _build(gin_file)
  task = experiment['task']
  assert isinstance(task, classification_task.ClassificationTask)
  assert task.fusion == 'feature_fusion'
  config = experiment['config']
  schedule = experiment['learning_rate'](
    global_batch_size=task.train_data.global_batch_size, total_steps=config.train_steps
  )
  middle = config.train_steps // 2
  assert float(schedule(middle) if callable(schedule) else schedule) > 0
  if gin_file.startswith(('demo/', 'testing/')):
    assert (task.num_classes, task.image_size) == (12, (128, 128))
    model = task.build_model()
    assert model(tf.zeros([2, 128, 128, 3]), training=False).shape == (2, 12)


@pytest.mark.parametrize('dataset', sorted(PUBLISHED_TOP1))
@pytest.mark.parametrize('model_id', MODEL_IDS)
def test_header_quotes_the_published_top1(dataset, model_id):
  with open(os.path.join(GIN_DIR, f'classification/spinenet{model_id}_{dataset}.gin')) as f:
    text = f.read()
  header = ''.join(line for line in text.splitlines(True) if line.startswith('#'))
  plain, improved = PUBLISHED_TOP1[dataset][model_id]
  if plain:
    assert re.search(rf'{plain} top-1 \(plain recipe\) -> {improved} \(improved', header)
  else:
    assert f'{improved} top-1 (improved recipe' in header
  assert f"spinenet.model_id = '{model_id}'" in text


def test_imagenet_protocol_values():
  experiment = _build('classification/spinenet49_imagenet.gin')
  task, config = experiment['task'], experiment['config']
  assert (task.num_classes, task.image_size) == (1001, (224, 224))
  assert task.train_data.global_batch_size == 4096
  assert config.train_steps == 62557  # 200 epochs of 1,281,167 images
  assert task.l2_weight_decay == 1e-4
  assert task.label_smoothing == 0.1  # the improved recipe is the default
  assert task.crop_area_range == (0.08, 1.0)
  assert task.top_k == 5
  backbone = _backbone_config(task)
  assert backbone['activation'] == 'swish'
  assert backbone['init_stochastic_depth_rate'] == 0.2
  assert (backbone['norm_momentum'], backbone['norm_epsilon']) == (0.9, 1e-5)
  assert not backbone['use_sync_bn']
  schedule = experiment['learning_rate'](global_batch_size=4096, total_steps=62557)
  assert float(schedule(0)) == 0.0
  assert float(schedule(782)) == pytest.approx(0.8, rel=0.01)  # half-way through the warm-up
  assert float(schedule(1564)) == pytest.approx(1.6, rel=0.01)  # 5 epochs
  assert float(schedule(62557 // 2)) == pytest.approx(0.8, rel=0.01)  # cosine
  assert float(schedule(62557)) == pytest.approx(0.0, abs=1e-6)
  # The linear scaling rule: half the batch, half the learning rate.
  half = experiment['learning_rate'](global_batch_size=2048, total_steps=62557)
  assert float(half(1564)) == pytest.approx(0.8, rel=0.01)
  optimizer = experiment['optimizer'](0.1)
  assert optimizer.get_config()['momentum'] == pytest.approx(0.9)


def test_plain_recipe_is_three_bindings():
  task = _build('classification/spinenet49_imagenet.gin', PLAIN_RECIPE)['task']
  assert task.label_smoothing == 0.0
  backbone = _backbone_config(task)
  assert backbone['activation'] == 'relu'
  assert backbone['init_stochastic_depth_rate'] == 0.0


def test_inaturalist_protocol_values():
  experiment = _build('classification/spinenet96_inat2017.gin')
  task, config = experiment['task'], experiment['config']
  assert (task.num_classes, task.image_size) == (5089, (224, 224))
  assert config.train_steps == 28280  # 200 epochs of 579,184 images
  assert task.train_data.global_batch_size == 4096
  assert _backbone_config(task)['activation'] == 'swish'
  schedule = experiment['learning_rate'](global_batch_size=4096, total_steps=28280)
  assert float(schedule(707)) == pytest.approx(1.6, rel=0.01)


def _published_params_case(model_id):
  marks = [pytest.mark.slow] if model_id in SLOW_MODELS else []
  return pytest.param(model_id, marks=marks, id=model_id)


@pytest.mark.parametrize('model_id', [_published_params_case(m) for m in MODEL_IDS])
def test_imagenet_model_at_224_has_the_published_params(model_id):
  task = _build(f'classification/spinenet{model_id}_imagenet.gin')['task']
  model = task.build_model()
  logits = model(tf.zeros([1, 224, 224, 3]), training=False)
  assert logits.shape == (1, 1001)
  params_m = model_stats.count_params(model) / 1e6
  assert params_m == pytest.approx(PUBLISHED_PARAMS_M[model_id], rel=PARAMS_RTOL)


def test_demo_config_trains_a_small_scale_permuted_model():
  task = _build('demo/classification_spinenet_shapes.gin')['task']
  backbone = _backbone_config(task)
  assert backbone['filter_size_scale'] == 0.25
  assert task.class_names_file is None  # set by spinenet-demo with the data
  model = task.build_model()
  assert model_stats.count_params(model) / 1e6 < 2.0

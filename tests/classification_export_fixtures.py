"""A tiny SpineNet classifier and its training-style checkpoint, for the export and init tests.

The classifier is gin_configs/classification/base.gin at an eighth of SpineNet-49's
widths (16-filter endpoints, as the tiny detection configs, so its backbone fits theirs),
4 classes, INPUT_SIZE px; `make_checkpoint` writes it as the trainer does
(tf.train.Checkpoint(optimizer=, model=, backbone=, head=)).
"""

import os

import numpy as np
import tensorflow as tf
import tf_keras

from official_spinenet import configurables
from official_spinenet.data import classification_input
from official_spinenet.data import image_folder_tfrecord
from tests import export_fixtures

GIN_FILE = 'classification/base.gin'
INPUT_SIZE = 128
CLASS_NAMES = ['circle', 'square', 'triangle', 'cross']
GIN_PARAMS = [
  f'NUM_CLASSES = {len(CLASS_NAMES)}',
  f'IMAGE_SIZE = {INPUT_SIZE}',
  'spinenet.filter_size_scale = 0.125',
  'spinenet.endpoints_num_filters = 16',
]
# Detection configs whose backbone is the classifier's (SpineNet-49, x0.125, 16 filters).
DETECTION_CONFIGS = ('testing/retinanet_tiny.gin', 'testing/maskrcnn_tiny.gin')


def gin_params(class_names_file=None):
  """The tiny classifier's bindings (with a class-names file if given)."""
  names = [f"CLASS_NAMES_FILE = '{class_names_file}'"] if class_names_file else []
  return GIN_PARAMS + names


def write_class_names(path, names=CLASS_NAMES):
  """A labels.txt: line i names label i."""
  with open(path, 'w') as f:
    f.write(''.join(f'{name}\n' for name in names))
  return str(path)


def sharpen_head(model, logit_std: float = 3.0) -> None:
  """Spreads a fresh head's scores: dense kernel scaled to logits of std logit_std.

  At initialisation (kernel stddev 0.01) every softmax score is ~1 / num_classes, so
  top-k orders would hang on rounding; only the last layer changes.
  """
  batch = tf.stack(
    [
      classification_input.preprocess_eval_image(tf.constant(image), (INPUT_SIZE, INPUT_SIZE))
      for image in sample_images()
    ]
  )
  logits = model(batch, training=False).numpy()
  kernel = next(w for w in model.head.weights if 'kernel' in w.name)
  kernel.assign(kernel * (logit_std / np.std(logits)))


def make_checkpoint(model_dir, params=None, step=1, prepare=sharpen_head):
  """The tiny classifier, `prepare(model)`d, saved as spinenet-train saves it.

  Returns:
    (task, model, optimizer, checkpoint prefix).
  """
  configurables.parse_gin([GIN_FILE], list(params if params is not None else GIN_PARAMS))
  task = configurables.build_experiment()['task']
  tf_keras.utils.set_random_seed(0)
  model = task.build_model()
  prepare(model)
  optimizer = tf_keras.optimizers.SGD(0.1, momentum=0.9)
  optimizer.build(model.trainable_variables)
  checkpoint = tf.train.Checkpoint(optimizer=optimizer, **task.checkpoint_items(model))
  manager = tf.train.CheckpointManager(checkpoint, str(model_dir), max_to_keep=1)
  return task, model, optimizer, manager.save(checkpoint_number=step)


def sample_images():
  """Shapes images of three sizes (landscape, portrait, larger than the input)."""
  return export_fixtures.sample_images()


def write_records(path, encoded_images, labels):
  """A TFRecord of classification examples (image/encoded, image/class/label)."""
  with tf.io.TFRecordWriter(str(path)) as writer:
    for encoded, label in zip(encoded_images, labels):
      height, width = export_fixtures.decode(encoded).shape[:2]
      example = image_folder_tfrecord.make_classification_example(
        encoded_image=encoded, image_format='png', height=height, width=width, label=label
      )
      writer.write(example.SerializeToString())
  return str(path)


class TextFakeServing(export_fixtures.FakeServing):
  """FakeServing replying with string outputs as text, as TF Serving's REST API does."""

  def _call(self, signature_name, tensors):
    outputs = super()._call(signature_name, tensors)
    return {
      k: np.vectorize(lambda b: b.decode('utf-8'), otypes=[object])(v) if v.dtype == object else v
      for k, v in outputs.items()
    }


def image_dir(root, encoded_images, names=None):
  """Writes the encoded images as <root>/<name>.png; returns root."""
  os.makedirs(root, exist_ok=True)
  for i, encoded in enumerate(encoded_images):
    name = names[i] if names else f'{i}.png'
    with open(os.path.join(root, name), 'wb') as f:
      f.write(encoded)
  return str(root)

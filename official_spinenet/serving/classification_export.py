"""SavedModel export of a SpineNet classifier for TF Serving, preprocessing and top-k inside.

`export_classifier(model, export_dir, input_image_size, class_names=..., top_k=5)` writes a
SavedModel with the detection export's signatures and input names (export_lib.SIGNATURE_INPUTS,
dynamic batch unless batch_size is given): `image_tensor` (`images`, uint8 [B, H, W, 3], one
size per batch), `image_bytes` (`image_bytes`, string [B] of JPEG / PNG files of any sizes),
`tf_example` (`tf_examples`, string [B] of serialized tf.Examples, the image in
`image/encoded`) and `serving_default` (= image_bytes).

Outputs, the k best classes of each image, best first:
  classes      int32 [B, k]    0-based label ids (as `image/class/label` of the records)
  scores       float32 [B, k]  softmax probabilities over all classes
  class_names  string [B, k]   names from the class-names file (line i names label i),
                               'class_<i>' without one
k is `top_k` (at most the number of classes); export with top_k = num_classes for the
whole distribution, sorted.

Every image goes through `classification_input.preprocess_eval_image`, the one eval
preprocessing (centre crop, resize to input_image_size, mean / stddev normalisation), so the
SavedModel's scores are those of evaluation on the same decoded pixels. Unlike
tf-models-official's classification export (`official/vision/serving/image_classification.py`:
outputs `logits` and `probs` [B, num_classes]), the reply is top-k with names: small for
1000- or 5089-class models and readable as it is. Decoding is the detection export's
(`image_decoding.decode_image`): JPEG / PNG only, size checked from the header before decoding,
and a bad image fails the request with an InvalidArgumentError naming the input, its index and
the problem (`image_bytes[1]: GIF is not supported; send JPEG or PNG`). An image with a side
of one pixel is widened to two before the centre crop, which would otherwise keep nothing.

`assets.extra/export_config.json` describes the export (model_type 'classification', options,
class names, signatures, outputs); `category_names` there maps the 0-based ids to names, so
the file serves as the client's --label_map as a detection export's does.
"""

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import tensorflow as tf

from official_spinenet.data import classification_input
from official_spinenet.serving import export_lib
from official_spinenet.serving import preprocessing
from official_spinenet.utils import tracking

MODEL_TYPE = 'classification'
OUTPUTS = ('classes', 'scores', 'class_names')
DEFAULT_TOP_K = 5


@dataclasses.dataclass(frozen=True)
class ClassificationExportConfig:
  """The options of a classifier export (written to assets.extra/export_config.json)."""

  input_image_size: Tuple[int, int]
  top_k: int = DEFAULT_TOP_K
  max_image_pixels: int = preprocessing.DEFAULT_MAX_IMAGE_PIXELS
  batch_size: Optional[int] = None

  def validate(self, num_classes: Optional[int] = None) -> None:
    """Raises ValueError for an option out of range (top_k against num_classes if given)."""
    size = self.input_image_size
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
      raise ValueError(f'input_image_size must be two positive ints (height, width), got {size}.')
    for name in ('top_k', 'max_image_pixels'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}.')
    if num_classes is not None and self.top_k > num_classes:
      raise ValueError(f'top_k={self.top_k} is more than the model\'s {num_classes} classes.')
    if self.batch_size is not None and self.batch_size < 1:
      raise ValueError(f'batch_size must be None (dynamic) or >= 1, got {self.batch_size}.')


def num_classes(model) -> int:
  """The classifier's number of classes (its head's)."""
  return int(model.head.get_config()['num_classes'])


def default_class_names(count: int) -> List[str]:
  """'class_0', 'class_1', ...: the names of a model exported without a names file."""
  return [f'class_{i}' for i in range(count)]


def check_class_names(names: Optional[Sequence[str]], count: int, source: str = '') -> List[str]:
  """names as a list of count strings, or default_class_names(count) for None.

  Raises:
    ValueError: another number of names than classes (the message names the source).
  """
  if names is None:
    return default_class_names(count)
  names = [str(n) for n in names]
  if len(names) != count:
    where = f' in {source}' if source else ''
    raise ValueError(
      f'{len(names)} class names{where} for a model of {count} classes; the class-names file '
      'has one name per line, line i naming label i.'
    )
  return names


class ClassificationServingModule(tf.Module):
  """Holds the classifier and its three serving functions; `signatures()` for saving.

  Args:
    model: a built ClassificationModel (images [B, h, w, 3] -> logits [B, num_classes]).
    config: the export options (input_image_size: what the model was evaluated at).
    class_names: name of label i at i; None: 'class_<i>'.
    image_dtype: the dtype preprocess_eval_image produces (the task's image_dtype).
  """

  def __init__(
    self,
    model,
    config: ClassificationExportConfig,
    class_names: Optional[Sequence[str]] = None,
    image_dtype: str = 'float32',
  ):
    super().__init__(name='classification_serving')
    if not model.built:
      raise ValueError(
        'The model is not built: build it (call it once on a batch of the input size) and '
        'load its weights before exporting.'
      )
    count = num_classes(model)
    config.validate(count)
    self._config = config
    self._class_names = check_class_names(class_names, count)
    self._image_dtype = image_dtype
    self._model = tracking.Untracked(model)
    # Only the variables are tracked, as in export_lib.DetectionServingModule: Keras'
    # own SavedModel serialization would trace every layer, and serving needs none of it.
    self.model_variables = list(model.variables)
    self._classify_fn = tracking.Untracked(
      tf.function(
        self._classify,
        autograph=False,
        input_signature=[
          tf.TensorSpec([config.batch_size] + self.model_input_size + [3], image_dtype)
        ],
      )
    )

  @property
  def config(self) -> ClassificationExportConfig:
    return self._config

  @property
  def class_names(self) -> List[str]:
    return list(self._class_names)

  @property
  def model_input_size(self) -> List[int]:
    """[height, width] every image is cropped and resized to."""
    return [int(s) for s in self._config.input_image_size]

  def _classify(self, images: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Normalised images [B, h, w, 3] -> the top-k outputs (see the module docstring)."""
    logits = tf.cast(self._model.value(images, training=False), tf.float32)
    scores, classes = tf.math.top_k(tf.nn.softmax(logits, axis=-1), k=self._config.top_k)
    return {
      'classes': classes,
      'scores': scores,
      'class_names': tf.gather(tf.constant(self._class_names, tf.string), classes),
    }

  def _preprocess(self, image: tf.Tensor) -> tf.Tensor:
    image = classification_input.preprocess_eval_image(
      _widen_one_pixel_sides(image), tuple(self.model_input_size), dtype=self._image_dtype
    )
    return tf.ensure_shape(image, self.model_input_size + [3])

  def _preprocess_batch(self, fn, elems: tf.Tensor, what: str) -> tf.Tensor:
    """fn(element, name) -> uint8 image over the batch, then the eval preprocessing."""
    spec = tf.TensorSpec(self.model_input_size + [3], self._image_dtype)
    return preprocessing.map_images(
      lambda elem, name: self._preprocess(fn(elem, name)), elems, what, spec
    )

  def serve_images(self, images: tf.Tensor) -> Dict[str, tf.Tensor]:
    """uint8 [B, H, W, 3], one size per batch."""
    images = preprocessing.checked_images(images, self._config.max_image_pixels)
    return self._classify_fn.value(self._preprocess_batch(lambda image, _: image, images, 'images'))

  def _serve_encoded(self, encoded: tf.Tensor, input_name: str) -> Dict[str, tf.Tensor]:
    decode = preprocessing.element_decoder(input_name, self._config.max_image_pixels)
    encoded = preprocessing.checked_batch(encoded, input_name)
    return self._classify_fn.value(self._preprocess_batch(decode, encoded, input_name))

  def serve_image_bytes(self, image_bytes: tf.Tensor) -> Dict[str, tf.Tensor]:
    """string [B] of JPEG / PNG files, any sizes."""
    return self._serve_encoded(image_bytes, 'image_bytes')

  def serve_tf_examples(self, tf_examples: tf.Tensor) -> Dict[str, tf.Tensor]:
    """string [B] of serialized tf.Examples (image/encoded holds the JPEG / PNG)."""
    return self._serve_encoded(tf_examples, 'tf_examples')

  def signatures(self) -> Dict[str, tf.types.experimental.ConcreteFunction]:
    """Signature name -> concrete function (serving_default = image_bytes)."""
    return export_lib.concrete_signatures(self, self._config.batch_size)


def _widen_one_pixel_sides(image: tf.Tensor) -> tf.Tensor:
  """image [H, W, C] with a side of 1 pixel repeated to 2 (other images unchanged).

  The eval centre crop keeps int(0.875 * shorter side) pixels: none of a 1-pixel side,
  and the resize after it fails. Two copies of the row (column) give a 1-pixel crop of
  it, the image's own pixels. tf.tile with multiples of 1 passes the image through.
  """
  multiples = tf.where(tf.shape(image)[:2] < 2, 2, 1)
  return tf.tile(image, tf.concat([multiples, [1]], 0))


def export_config_dict(
  module: ClassificationServingModule, extra_assets: Sequence[str] = ()
) -> Dict[str, Any]:
  """The JSON-ready description written to assets.extra/export_config.json."""
  config = module.config
  names = module.class_names
  return {
    'options': {**dataclasses.asdict(config), 'input_image_size': list(config.input_image_size)},
    'model_type': MODEL_TYPE,
    'model_input_size': module.model_input_size,
    'num_classes': len(names),
    'class_names': names,
    # 0-based ids -> names: what client_lib.load_category_names reads (--label_map).
    'category_names': {str(i): name for i, name in enumerate(names)},
    'signatures': export_lib.signature_descriptions(config.batch_size),
    'default_signature': export_lib.DEFAULT_SIGNATURE,
    'outputs': list(OUTPUTS),
    'preprocessing': 'classification_input.preprocess_eval_image: centre crop, resize to '
    'model_input_size, mean / stddev normalisation',
    'extra_assets': sorted(extra_assets),
    'tensorflow_version': tf.__version__,
  }


def export_classifier(
  model,
  export_dir: str,
  input_image_size: Sequence[int],
  *,
  class_names: Optional[Sequence[str]] = None,
  top_k: int = DEFAULT_TOP_K,
  max_image_pixels: int = preprocessing.DEFAULT_MAX_IMAGE_PIXELS,
  batch_size: Optional[int] = None,
  image_dtype: str = 'float32',
  extra_assets: Optional[Mapping[str, str]] = None,
  overwrite: bool = False,
) -> str:
  """Writes a SavedModel of a classifier with its preprocessing and top-k (atomically).

  Args:
    model: a built ClassificationModel with its trained weights.
    export_dir: local folder to create (or replace, with overwrite); for TF Serving a
      version folder such as /models/spinenet_cls/1.
    input_image_size: (height, width) the model was evaluated at (the task's image_size).
    class_names: name of label i at i (e.g. ClassificationTask.class_names()); None:
      'class_<i>'.
    top_k: classes returned per image (1..num_classes).
    max_image_pixels: larger images are refused before they are decoded.
    batch_size: None for a dynamic batch, else the fixed batch size.
    image_dtype: the dtype of the preprocessed images (the task's image_dtype).
    extra_assets: file name -> text for assets.extra/ (e.g. operative_config.gin).
    overwrite: replace a non-empty export_dir.

  Returns:
    The absolute export_dir.

  Raises:
    FileExistsError: export_dir is not empty and overwrite is False.
    ValueError: an option out of range, class names that do not match the classes, an
      unbuilt model, or a bad asset name.
  """
  config = ClassificationExportConfig(
    input_image_size=tuple(int(s) for s in input_image_size),
    top_k=int(top_k),
    max_image_pixels=int(max_image_pixels),
    batch_size=None if batch_size is None else int(batch_size),
  )
  export_lib.check_export_dir(export_dir, overwrite)
  module = ClassificationServingModule(model, config, class_names, image_dtype)
  extra_assets = dict(extra_assets or {})
  description = export_config_dict(module, list(extra_assets))
  # No custom gradients: serving never differentiates, and tracing swish's took 42 s of
  # an 81 s export of tiny SpineNet-49 (cProfile on this 2-core machine, shared).
  return export_lib.save_atomically(
    module, export_dir, description, extra_assets, overwrite, custom_gradients=False
  )


def is_classification_export(export_config: Mapping[str, Any]) -> bool:
  """Whether an export_config.json (read_export_config) describes a classifier export."""
  return export_config.get('model_type') == MODEL_TYPE

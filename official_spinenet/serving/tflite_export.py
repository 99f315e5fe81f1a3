"""TFLite export of a RetinaNet (SpineNet-Mobile) whose output is boxes, not anchors.

The post-processing is TFLite's own detection op, `TFLite_Detection_PostProcess`
(tensorflow/lite/kernels/detection_postprocess.cc, registered in the TFLite runtime's
builtin op resolver, so the stock interpreter runs it). As Model Garden does
(`official/vision/modeling/layers/detection_generator.py`, nms_version 'tflite'),
a placeholder `tf.function` carrying `experimental_implements=` the op's name and
attributes is called on the box encodings, class scores and anchors; the converter's
MLIR pass (tensorflow/compiler/mlir/lite/utils/nms_utils.cc) replaces the function by
the custom op. Two departures from Model Garden's version:

- Background: our class column 0 is the background (trained towards 1 on background
  anchors; Model Garden's generator drops it before NMS). Model Garden hands the op
  every column, so background can be "detected". Here the background scores are
  multiplied by 0 before the op and the score threshold must be > 0, so it never
  is; the op's class index is then the dataset class id, with no op after the
  custom op (which int8 quantization would round).
- NMS: `use_regular_nms=True` (the default here) is per-class NMS, what the
  SavedModel and the COCO evaluation run; False is the op's faster class-agnostic
  NMS (Model Garden's default for TFLite).

The TFLite model (batch 1):

  input  `images`: uint8 [1, Hm, Wm, 3] RGB. The app resizes the image keeping its
         aspect ratio to fit input_image_size (scale = min(H_in / H, W_in / W),
         bilinear) and pads it at the bottom / right to the model input size Hm, Wm
         (input size rounded up to 2^max_level) with the mean pixel PAD_VALUE_RGB.
         Normalisation ((x / 255 - mean) / std) is inside the model.
         `prepare_input` does exactly this in Python.
  output `detection_boxes`: float32 [1, max_detections, 4], ymin, xmin, ymax, xmax in
         model-input pixels (divide by the scale for original pixels), or in [0, 1]
         of the model input with normalized_coordinates=True. Not clipped.
         `detection_classes`: float32 [1, max_detections], dataset class ids.
         `detection_scores`: float32 [1, max_detections], descending.
         `num_detections`: float32 [1]; entries past it are padding.

`export_tflite` writes the .tflite file and `<file>.json` describing all this (input,
outputs, NMS settings, class names). `TFLiteDetector` runs an exported file on an image
and returns its detections in original-image pixels.

int8 (post-training quantization): weights and activations int8 with float fallback,
uint8 input and float outputs as above; the calibration images are read from the
project's TFRecords and prepared by `prepare_input`, the path an app's images take.
"""

import dataclasses
import os
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from official_spinenet.modeling import retinanet_model
from official_spinenet.serving import client_lib
from official_spinenet.serving import image_decoding
from official_spinenet.serving import postprocessing
from official_spinenet.serving import preprocessing
from official_spinenet.utils import files
from official_spinenet.utils import tracking

QUANTIZATIONS = ('float', 'int8')
INPUT_NAME = 'images'
OUTPUT_KEYS = ('detection_boxes', 'detection_classes', 'detection_scores', 'num_detections')
# preprocess_ops.MEAN_NORM / STDDEV_NORM, the eval parser's normalisation.
MEAN_NORM = (0.485, 0.456, 0.406)
STDDEV_NORM = (0.229, 0.224, 0.225)
# The eval parser pads the *normalised* image with zeros: the mean pixel in uint8.
PAD_VALUE_RGB = tuple(int(round(255 * m)) for m in MEAN_NORM)  # (124, 116, 104)
POSTPROCESS_OP = 'TFLite_Detection_PostProcess'


@dataclasses.dataclass(frozen=True)
class TFLiteConfig:
  """Options of a TFLite export (written to the .json beside the model).

  Attributes:
    input_image_size: (height, width) images are resized into, as in training / eval.
    quantization: 'float' or 'int8' (post-training, with a representative dataset).
    max_detections: detections per image (outputs are padded to it).
    score_threshold: detections scoring below are dropped; must be > 0.
    nms_iou_threshold: NMS IoU threshold.
    use_regular_nms: per-class NMS (as the SavedModel) if True, else the op's
      class-agnostic NMS (faster; each box keeps its max_classes_per_detection best
      classes).
    detections_per_class: regular NMS: kept per class (None: max_detections).
    max_classes_per_detection: class-agnostic NMS: classes reported per box.
    normalized_coordinates: boxes in [0, 1] of the model input instead of pixels.
    num_calibration_images: int8: representative images used.
  """

  input_image_size: Tuple[int, int]
  quantization: str = 'float'
  max_detections: int = retinanet_model.MAX_NUM_DETECTIONS
  score_threshold: float = retinanet_model.PRE_NMS_SCORE_THRESHOLD
  nms_iou_threshold: float = retinanet_model.NMS_IOU_THRESHOLD
  use_regular_nms: bool = True
  detections_per_class: Optional[int] = None
  max_classes_per_detection: int = 1
  normalized_coordinates: bool = False
  num_calibration_images: int = 100

  def validate(self) -> None:
    """Raises ValueError for an option out of range."""
    size = self.input_image_size
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
      raise ValueError(f'input_image_size must be two positive ints (height, width), got {size}.')
    if self.quantization not in QUANTIZATIONS:
      raise ValueError(f'quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}.')
    if not 0.0 < self.score_threshold <= 1.0:
      raise ValueError(
        f'score_threshold must be in (0, 1] for TFLite (0 would let the '
        f'zeroed background scores through), got {self.score_threshold}.'
      )
    if not 0.0 < self.nms_iou_threshold <= 1.0:
      raise ValueError(f'nms_iou_threshold must be in (0, 1], got {self.nms_iou_threshold}.')
    for name in ('max_detections', 'max_classes_per_detection', 'num_calibration_images'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}.')
    if self.detections_per_class is not None and self.detections_per_class < 1:
      raise ValueError(
        f'detections_per_class must be None or >= 1, got {self.detections_per_class}.'
      )

  @property
  def per_class(self) -> int:
    return self.detections_per_class or self.max_detections


def model_input_size(config: TFLiteConfig, max_level: int) -> List[int]:
  """[Hm, Wm]: input_image_size rounded up to a multiple of 2^max_level."""
  return preprocessing.padded_size(config.input_image_size, max_level)


def anchors_center_size(
  model: retinanet_model.RetinaNetModel, input_size: Sequence[int], normalized: bool = False
) -> np.ndarray:
  """The model's anchors as the op takes them: float32 [N, 4] (yc, xc, h, w).

  Ordered level by level (min..max), then y, x, anchor: the order of the flattened
  head outputs. normalized: divided by the model input height / width.
  """
  boxes = model.anchor_boxes(tuple(input_size))
  corners = np.concatenate(
    [np.reshape(np.asarray(boxes[level]), [-1, 4]) for level in sorted(boxes, key=int)]
  ).astype(np.float64)
  centres = np.stack(
    [
      (corners[:, 0] + corners[:, 2]) / 2,
      (corners[:, 1] + corners[:, 3]) / 2,
      corners[:, 2] - corners[:, 0],
      corners[:, 3] - corners[:, 1],
    ],
    axis=1,
  )
  if normalized:
    height, width = input_size
    centres /= np.array([height, width, height, width], np.float64)
  return centres.astype(np.float32)


def _implements_signature(config: TFLiteConfig, num_classes: int) -> str:
  """The op and its attributes, as the converter's legalization reads them."""
  attrs = [
    ('max_detections', 'i', config.max_detections),
    ('max_classes_per_detection', 'i', config.max_classes_per_detection),
    ('detections_per_class', 'i', config.per_class),
    ('use_regular_nms', 'b', str(bool(config.use_regular_nms)).lower()),
    ('nms_score_threshold', 'f', repr(float(config.score_threshold))),
    ('nms_iou_threshold', 'f', repr(float(config.nms_iou_threshold))),
    # Our box coding has no weights (Model Garden's RetinaNet: box_coder_weights
    # None): dy * ha + yca, exp(dh) * ha.
    ('y_scale', 'f', '1.0'),
    ('x_scale', 'f', '1.0'),
    ('h_scale', 'f', '1.0'),
    ('w_scale', 'f', '1.0'),
    ('num_classes', 'i', num_classes),
  ]
  return ' '.join(
    [f'name: "{POSTPROCESS_OP}"']
    + [f'attr {{ key: "{key}" value {{ {kind}: {value} }} }}' for key, kind, value in attrs]
  )


class TFLiteDetectionModule(tf.Module):
  """The function the converter turns into the TFLite model, and the model's variables."""

  def __init__(self, model: retinanet_model.RetinaNetModel, config: TFLiteConfig):
    super().__init__(name='retinanet_tflite')
    config.validate()
    if not model.built:
      raise ValueError('The model is not built: build it and load its weights before exporting.')
    # Only the variables are tracked: tracking the Keras model would trace every layer,
    # and the converter needs nothing else (see export_lib).
    self._model = tracking.Untracked(model)
    self.model_variables = list(model.variables)
    self._config = config
    self.input_size = model_input_size(config, model.max_level)
    self._anchors = anchors_center_size(model, self.input_size, config.normalized_coordinates)
    self.num_classes = model.head.get_config()['num_classes']
    anchors_per_location = model.head.get_config()['num_anchors_per_location']
    levels = range(model.min_level, model.max_level + 1)
    expected = (
      sum(-(-self.input_size[0] // 2**l) * -(-self.input_size[1] // 2**l) for l in levels)
      * anchors_per_location
    )
    if expected != len(self._anchors):
      raise ValueError(f'{len(self._anchors)} anchors for {expected} head outputs.')

  def detect(self, images: tf.Tensor) -> Dict[str, tf.Tensor]:
    """uint8 [1, Hm, Wm, 3] -> the op's outputs (see the module docstring)."""
    num_classes = self.num_classes
    x = tf.cast(images, tf.float32) * (1.0 / 255.0)
    x = (x - tf.constant(MEAN_NORM)) / tf.constant(STDDEV_NORM)
    outputs = self._model.value(x, training=False)
    levels = sorted(outputs['cls_outputs'], key=int)
    scores = tf.concat(
      [tf.reshape(outputs['cls_outputs'][l], [1, -1, num_classes]) for l in levels], axis=1
    )
    box_encodings = tf.concat(
      [tf.reshape(outputs['box_outputs'][l], [1, -1, 4]) for l in levels], axis=1
    )
    # Background (column 0) never passes the (> 0) score threshold.
    foreground = tf.constant([0.0] + [1.0] * (num_classes - 1))
    scores = tf.sigmoid(tf.cast(scores, tf.float32)) * foreground
    anchors = tf.constant(self._anchors)

    @tf.function(experimental_implements=_implements_signature(self._config, num_classes))
    def detection_postprocess(box_encodings, class_predictions, anchors):
      # A placeholder: the converter replaces this function by the TFLite op. Run in
      # TensorFlow it returns zeros. pylint: disable=unused-argument
      return (
        tf.constant(0.0, name='boxes'),
        tf.constant(0.0, name='classes'),
        tf.constant(0.0, name='scores'),
        tf.constant(0.0, name='num_detections'),
      )

    boxes, classes, scores, num_detections = detection_postprocess(
      tf.cast(box_encodings, tf.float32), scores, anchors
    )
    return {
      'detection_boxes': boxes,
      'detection_classes': classes,
      'detection_scores': scores,
      'num_detections': num_detections,
    }

  def concrete_function(self) -> tf.types.experimental.ConcreteFunction:
    spec = tf.TensorSpec([1] + self.input_size + [3], tf.uint8, name=INPUT_NAME)
    return tf.function(self.detect, autograph=False).get_concrete_function(spec)


def prepare_input(
  image, input_image_size: Sequence[int], input_size: Sequence[int]
) -> Tuple[np.ndarray, np.ndarray]:
  """What an app feeds the TFLite model: the eval preprocessing, in uint8.

  The serving preprocessing (normalise, aspect-preserving bilinear resize, zero pad
  of the normalised image) is run and undone back to pixels, so the padding becomes
  PAD_VALUE_RGB and values are rounded to uint8.

  Args:
    image: uint8 [H, W, 3] RGB (numpy or tensor).
    input_image_size: (height, width) the image is resized to fit into.
    input_size: (Hm, Wm) the model input (padded) size.

  Returns:
    (uint8 [1, Hm, Wm, 3], image_info float32 [4, 2]: original size, scaled size,
    scale, offset).
  """
  normalized, image_info = preprocessing.preprocess_image(
    tf.convert_to_tensor(image, tf.uint8), input_image_size, input_size
  )
  pixels = (normalized * tf.constant(STDDEV_NORM) + tf.constant(MEAN_NORM)) * 255.0
  pixels = tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, 255.0), tf.uint8)
  return pixels.numpy()[None], image_info.numpy()


def representative_images(
  file_pattern: str, input_image_size: Sequence[int], input_size: Sequence[int], num_images: int
) -> Callable[[], Iterator[List[np.ndarray]]]:
  """A converter representative_dataset: images from TFRecords, prepared as an app would.

  Reads `image/encoded` of the project's tf.Examples (data/tfexample.py layout),
  decodes it with the serving decoder and applies prepare_input.

  Raises (when iterated):
    ValueError: the pattern matches no file, or the files hold no example.
  """
  from official_spinenet.data import retinanet_input  # pylint: disable=g-import-not-at-top

  files = retinanet_input.list_files(file_pattern)

  def generate():
    count = 0
    for serialized in tf.data.TFRecordDataset(files).take(num_images):
      encoded = image_decoding.example_image_bytes(serialized)
      yield [prepare_input(preprocessing.decode_image(encoded), input_image_size, input_size)[0]]
      count += 1
    if not count:
      raise ValueError(f'No tf.Example in {file_pattern!r} for int8 calibration.')

  return generate


def convert(
  model: retinanet_model.RetinaNetModel,
  config: TFLiteConfig,
  representative_dataset: Optional[Callable[[], Iterator[Any]]] = None,
) -> bytes:
  """The TFLite flatbuffer of the model with its detection post-processing.

  Args:
    model: a built RetinaNetModel with its weights.
    config: export options.
    representative_dataset: int8 only: yields [uint8 [1, Hm, Wm, 3]] (see
      representative_images).

  Raises:
    ValueError: bad options, or int8 without representative data.
  """
  module = TFLiteDetectionModule(model, config)
  converter = tf.lite.TFLiteConverter.from_concrete_functions([module.concrete_function()], module)
  if config.quantization == 'int8':
    if representative_dataset is None:
      raise ValueError(
        'int8 quantization needs representative data (TFRecords of images '
        'like those the model will see).'
      )
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
  elif representative_dataset is not None:
    raise ValueError('representative data is for int8 quantization only.')
  return converter.convert()


def description(
  model: retinanet_model.RetinaNetModel,
  config: TFLiteConfig,
  category_names: Optional[Mapping[int, str]] = None,
) -> Dict[str, Any]:
  """What an app needs to know: the JSON written beside the .tflite file."""
  input_size = model_input_size(config, model.max_level)
  box_units = '[0, 1] of the model input' if config.normalized_coordinates else 'model-input pixels'
  return {
    'format': f'TFLite RetinaNet with {POSTPROCESS_OP}',
    'options': {**dataclasses.asdict(config), 'input_image_size': list(config.input_image_size)},
    'input': {
      'name': INPUT_NAME,
      'dtype': 'uint8',
      'shape': [1] + input_size + [3],
      'preprocessing': (
        'RGB; resize keeping the aspect ratio to fit input_image_size '
        '(scale = min(H_in / H, W_in / W), bilinear), pad at the bottom '
        'and right to the input shape with pad_value_rgb; normalisation '
        'is inside the model'
      ),
      'input_image_size': list(config.input_image_size),
      'pad_value_rgb': list(PAD_VALUE_RGB),
    },
    'outputs': {
      'detection_boxes': f'float32 [1, {config.max_detections}, 4]: ymin, xmin, ymax, '
      f'xmax in {box_units}; divide pixels by the scale for the '
      'original image',
      'detection_classes': f'float32 [1, {config.max_detections}]: dataset class ids',
      'detection_scores': f'float32 [1, {config.max_detections}]: descending',
      'num_detections': 'float32 [1]: entries past it are padding',
    },
    'nms': 'per-class' if config.use_regular_nms else 'class-agnostic',
    'min_level': model.min_level,
    'max_level': model.max_level,
    'num_classes_with_background': model.head.get_config()['num_classes'],
    'category_names': client_lib.category_names_for_json(category_names),
    'tensorflow_version': tf.__version__,
  }


def export_tflite(
  model: retinanet_model.RetinaNetModel,
  output_path: str,
  config: TFLiteConfig,
  *,
  representative_data: Optional[str] = None,
  category_names: Optional[Mapping[int, str]] = None,
  overwrite: bool = False,
) -> str:
  """Converts and writes `output_path` (.tflite) and `output_path + '.json'`.

  Args:
    model: a built RetinaNetModel with its weights (SpineNet-Mobile is the target;
      any backbone converts).
    output_path: the .tflite file.
    config: options.
    representative_data: int8: a TFRecord pattern (the project's tf.Examples).
    category_names: class id -> name, recorded in the JSON.
    overwrite: replace existing files.

  Returns:
    The absolute output path.

  Raises:
    FileExistsError: the file exists and overwrite is False.
    ValueError: bad options, missing representative data.
  """
  config.validate()
  output_path = os.path.abspath(output_path)
  if os.path.exists(output_path) and not overwrite:
    raise FileExistsError(f'{output_path} exists; pass overwrite=True to replace it.')
  dataset = None
  if config.quantization == 'int8':
    if not representative_data:
      raise ValueError('int8 quantization needs representative_data: a TFRecord pattern.')
    dataset = representative_images(
      representative_data,
      config.input_image_size,
      model_input_size(config, model.max_level),
      config.num_calibration_images,
    )
  content = convert(model, config, dataset)
  files.atomic_write(output_path, content)
  files.write_json_atomically(
    description(model, config, category_names), output_path + '.json', indent=2
  )
  return output_path


def _interpreter(model_path: Optional[str], model_content: Optional[bytes], num_threads: int):
  try:
    from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top

    interpreter_class = litert.Interpreter
  except ImportError:  # LiteRT comes with tf-models-official; TF's own is deprecated
    interpreter_class = tf.lite.Interpreter
  return interpreter_class(
    model_path=model_path, model_content=model_content, num_threads=num_threads
  )


class TFLiteDetector:
  """Runs an exported TFLite detector on images (the TFLite runtime's interpreter)."""

  def __init__(
    self,
    model_path: Optional[str] = None,
    model_content: Optional[bytes] = None,
    input_image_size: Optional[Sequence[int]] = None,
    num_threads: int = 1,
  ):
    """Loads the model.

    Args:
      model_path: the .tflite file (its .json gives input_image_size when present).
      model_content: or the flatbuffer bytes.
      input_image_size: (height, width); default: from the .json, else the input shape.
      num_threads: interpreter threads.
    """
    self._interpreter = _interpreter(model_path, model_content, num_threads)
    self._runner = self._interpreter.get_signature_runner()
    shape = self._runner.get_input_details()[INPUT_NAME]['shape']
    self.input_size = [int(shape[1]), int(shape[2])]
    self.description = {}
    if model_path and os.path.exists(model_path + '.json'):
      self.description = files.read_json(model_path + '.json', 'TFLite model description')
    self.input_image_size = list(
      input_image_size
      or self.description.get('options', {}).get('input_image_size')
      or self.input_size
    )
    self.normalized = bool(self.description.get('options', {}).get('normalized_coordinates'))

  def run(self, images: np.ndarray) -> Dict[str, np.ndarray]:
    """The raw outputs for prepared input uint8 [1, Hm, Wm, 3] (see prepare_input)."""
    return self._runner(**{INPUT_NAME: images})

  def detect(self, image) -> client_lib.ImageDetections:
    """Detections of one uint8 [H, W, 3] image, boxes in its pixels (clipped to it)."""
    prepared, image_info = prepare_input(image, self.input_image_size, self.input_size)
    outputs = self.run(prepared)
    count = int(outputs['num_detections'][0])
    boxes = outputs['detection_boxes'][:, :count]
    if self.normalized:
      boxes = boxes * np.array(self.input_size * 2, np.float32)
    boxes = postprocessing.boxes_to_original(tf.constant(boxes), tf.constant(image_info[None]))
    return client_lib.ImageDetections(
      boxes=boxes.numpy()[0],
      scores=outputs['detection_scores'][0, :count],
      classes=outputs['detection_classes'][0, :count].astype(np.int64),
      image_size=tuple(int(s) for s in image_info[0]),
    )

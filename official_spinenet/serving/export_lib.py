"""SavedModel export of a RetinaNetModel for TF Serving, with pre/post-processing inside.

`export_saved_model(model, export_dir, input_image_size, ...)` writes a SavedModel with
these signatures (dynamic batch unless batch_size is given):

| signature         | input                                           | images in a batch |
|-------------------|-------------------------------------------------|-------------------|
| `image_tensor`    | `images`: uint8 [B, H, W, 3]                    | one size          |
| `image_bytes`     | `image_bytes`: string [B], JPEG or PNG files    | any sizes         |
| `tf_example`      | `tf_examples`: string [B], serialized tf.Example | any sizes         |
| `serving_default` | the same function as `image_bytes`              |                   |

tf.Examples are read in the project's layout (data/tfexample.py): the JPEG / PNG in
`image/encoded`.

Outputs with NMS (apply_nms=True): detection_boxes float32 [B, max_detections, 4]
(ymin, xmin, ymax, xmax in original-image pixels), detection_scores float32 [B, max],
detection_classes int32 [B, max] (dataset class ids; 0 is background and never
returned), num_detections int32 [B] (entries past it are zero padding), image_info
float32 [B, 4, 2]. Without NMS (apply_nms=False): decoded_boxes [B, num_anchors, 4]
(original pixels), decoded_box_scores [B, num_anchors, num_classes - 1] (column c is
class id c + 1), image_info.

Next to the SavedModel, `assets.extra/` (which TF Serving ignores) holds
`export_config.json` (every option, the signatures, the model's levels / classes) and
the files passed as `extra_assets` (e.g. operative_config.gin).
"""

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import tensorflow as tf

from official_spinenet.modeling import retinanet_model
from official_spinenet.serving import client_lib
from official_spinenet.serving import postprocessing
from official_spinenet.serving import preprocessing
from official_spinenet.utils import files
from official_spinenet.utils import tracking

EXTRA_ASSETS_DIR = 'assets.extra'
EXPORT_CONFIG_FILE = 'export_config.json'
SIGNATURE_INPUTS = {  # signature -> (input name, dtype, shape without batch)
  'image_tensor': ('images', tf.uint8, [None, None, 3]),
  'image_bytes': ('image_bytes', tf.string, []),
  'tf_example': ('tf_examples', tf.string, []),
}
DEFAULT_SIGNATURE = 'image_bytes'  # also exported as 'serving_default'


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  """The options of an export (written to assets.extra/export_config.json)."""

  input_image_size: Tuple[int, int]
  score_threshold: float = retinanet_model.PRE_NMS_SCORE_THRESHOLD
  max_detections: int = retinanet_model.MAX_NUM_DETECTIONS
  nms_iou_threshold: float = retinanet_model.NMS_IOU_THRESHOLD
  pre_nms_top_k: int = retinanet_model.PRE_NMS_TOP_K
  apply_nms: bool = True
  max_image_pixels: int = preprocessing.DEFAULT_MAX_IMAGE_PIXELS
  batch_size: Optional[int] = None

  def validate(self) -> None:
    """Raises ValueError for an option out of range."""
    size = self.input_image_size
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
      raise ValueError(f'input_image_size must be two positive ints (height, width), got {size}.')
    if not 0.0 <= self.score_threshold <= 1.0:
      raise ValueError(f'score_threshold must be in [0, 1], got {self.score_threshold}.')
    if not 0.0 < self.nms_iou_threshold <= 1.0:
      raise ValueError(f'nms_iou_threshold must be in (0, 1], got {self.nms_iou_threshold}.')
    for name in ('max_detections', 'pre_nms_top_k', 'max_image_pixels'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}.')
    if self.batch_size is not None and self.batch_size < 1:
      raise ValueError(f'batch_size must be None (dynamic) or >= 1, got {self.batch_size}.')


class DetectionServingModule(tf.Module):
  """Holds the model and the three serving functions; `signatures()` for saving."""

  def __init__(self, model: retinanet_model.RetinaNetModel, config: ExportConfig):
    super().__init__(name='retinanet_serving')
    config.validate()
    if not model.built:
      raise ValueError(
        'The model is not built: build it (call it once on a batch of the '
        'input size) and load its weights before exporting.'
      )
    self._model = tracking.Untracked(model)
    # Only the variables are tracked, not the Keras model: Keras' own SavedModel
    # serialization traces every layer's call (tiny SpineNet-49 on this 2-core machine:
    # save 75 s and load 33 s instead of 6 s and 8 s), and TF Serving needs nothing but
    # the signatures. The training checkpoint stays the source of weights for Keras.
    self.model_variables = list(model.variables)
    self._config = config
    self._model_input_size = preprocessing.padded_size(config.input_image_size, model.max_level)
    _check_model_input_size(model, self._model_input_size)
    self._anchor_boxes = {
      k: tf.constant(v) for k, v in model.anchor_boxes(self._model_input_size).items()
    }
    # Model and post-processing are traced once and called by all three signatures.
    # No autograph: nothing here branches on tensors, and converting the model and
    # Model Garden's NMS code took 2/3 of the tracing time. Untracked, or saving would
    # trace it once more as a function of its own.
    self._detect_fn = tracking.Untracked(
      tf.function(
        self._detect,
        autograph=False,
        input_signature=[
          tf.TensorSpec([config.batch_size] + self._model_input_size + [3], tf.float32),
          tf.TensorSpec([config.batch_size, 4, 2], tf.float32),
        ],
      )
    )

  @property
  def model(self) -> retinanet_model.RetinaNetModel:
    return self._model.value

  @property
  def config(self) -> ExportConfig:
    return self._config

  @property
  def model_input_size(self):
    """[height, width] the images are padded to: input size rounded up to 2^max_level."""
    return list(self._model_input_size)

  def _detect(self, images: tf.Tensor, image_info: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Model + post-processing on preprocessed images [B, Hm, Wm, 3]."""
    config = self._config
    outputs = self.model(images, training=False)
    image_shape = image_info[:, 1, :]
    if not config.apply_nms:
      decoded = postprocessing.decode_all_anchors(outputs, self._anchor_boxes, image_shape)
      return {
        'decoded_boxes': postprocessing.boxes_to_original(decoded['decoded_boxes'], image_info),
        'decoded_box_scores': decoded['decoded_box_scores'],
        'image_info': image_info,
      }
    detections = postprocessing.detections_per_image(
      outputs,
      self._anchor_boxes,
      image_shape,
      max_num_detections=config.max_detections,
      pre_nms_top_k=config.pre_nms_top_k,
      pre_nms_score_threshold=config.score_threshold,
      nms_iou_threshold=config.nms_iou_threshold,
    )
    detections['detection_boxes'] = postprocessing.boxes_to_original(
      detections['detection_boxes'], image_info
    )
    detections['image_info'] = image_info
    return detections

  def serve_images(self, images: tf.Tensor) -> Dict[str, tf.Tensor]:
    """uint8 [B, H, W, 3], one size per batch."""
    return self._detect_fn.value(
      *preprocessing.preprocess_image_batch(
        images,
        self._config.input_image_size,
        self._model_input_size,
        self._config.max_image_pixels,
        what='images',
      )
    )

  def serve_image_bytes(self, image_bytes: tf.Tensor) -> Dict[str, tf.Tensor]:
    """string [B] of JPEG / PNG files, any sizes."""
    return self._detect_fn.value(
      *preprocessing.preprocess_encoded_batch(
        image_bytes,
        self._config.input_image_size,
        self._model_input_size,
        self._config.max_image_pixels,
        what='image_bytes',
      )
    )

  def serve_tf_examples(self, tf_examples: tf.Tensor) -> Dict[str, tf.Tensor]:
    """string [B] of serialized tf.Examples (image/encoded holds the JPEG / PNG)."""
    return self._detect_fn.value(
      *preprocessing.preprocess_encoded_batch(
        preprocessing.encoded_images_from_examples(tf_examples),
        self._config.input_image_size,
        self._model_input_size,
        self._config.max_image_pixels,
        what='tf_examples image/encoded',
      )
    )

  def signatures(self) -> Dict[str, tf.types.experimental.ConcreteFunction]:
    """Signature name -> concrete function (serving_default = image_bytes)."""
    functions = {
      'image_tensor': self.serve_images,
      'image_bytes': self.serve_image_bytes,
      'tf_example': self.serve_tf_examples,
    }
    signatures = {}
    for name, (input_name, dtype, shape) in SIGNATURE_INPUTS.items():
      spec = tf.TensorSpec([self._config.batch_size] + shape, dtype, name=input_name)
      signatures[name] = tf.function(functions[name], autograph=False).get_concrete_function(spec)
    signatures['serving_default'] = signatures[DEFAULT_SIGNATURE]
    return signatures


def _check_model_input_size(model, model_input_size) -> None:
  """ValueError if the backbone was built for a different fixed input size."""
  try:
    shape = model.backbone.input_shape
  except (AttributeError, RuntimeError, ValueError):
    return  # subclassed backbones without a fixed input: any size
  if isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], (list, tuple)):
    shape = shape[0]
  built = [d for d in tuple(shape)[1:3]]
  if any(b is not None and b != m for b, m in zip(built, model_input_size)):
    raise ValueError(
      f'The backbone was built for input {built} (height, width) but input_image_size '
      f'pads to {model_input_size} (a multiple of 2^max_level = {2**model.max_level}); '
      'export with an input_image_size that pads to the backbone input size.'
    )


def _default_nms_version() -> Any:
  """The nms_version generate_detections uses when not given (recorded in the config)."""
  import inspect  # pylint: disable=g-import-not-at-top

  return inspect.signature(retinanet_model.generate_detections).parameters['nms_version'].default


def export_config_dict(
  module: DetectionServingModule,
  config: ExportConfig,
  category_names: client_lib.CategoryNamesSource = None,
  extra_assets: Sequence[str] = (),
) -> Dict[str, Any]:
  """The JSON-ready description written to assets.extra/export_config.json."""
  model = module.model
  signatures = {
    name: {'input': {'name': input_name, 'dtype': dtype.name, 'shape': [config.batch_size] + shape}}
    for name, (input_name, dtype, shape) in SIGNATURE_INPUTS.items()
  }
  outputs = (
    ['detection_boxes', 'detection_scores', 'detection_classes', 'num_detections']
    if config.apply_nms
    else ['decoded_boxes', 'decoded_box_scores']
  )
  return {
    'options': {**dataclasses.asdict(config), 'input_image_size': list(config.input_image_size)},
    'model_input_size': module.model_input_size,
    'nms_version': _default_nms_version() if config.apply_nms else None,
    'min_level': model.min_level,
    'max_level': model.max_level,
    'num_classes_with_background': model.head.get_config()['num_classes'],
    'category_names': client_lib.category_names_for_json(category_names),
    'signatures': signatures,
    'default_signature': DEFAULT_SIGNATURE,
    'outputs': outputs + ['image_info'],
    'box_format': 'ymin, xmin, ymax, xmax in original-image pixels',
    'extra_assets': sorted(extra_assets),
    'tensorflow_version': tf.__version__,
  }


def check_export_dir(
  export_dir: str, overwrite: bool, how_to_overwrite: str = 'overwrite=True'
) -> str:
  """The absolute local export_dir, checked to be writable as an export.

  Args:
    export_dir: the target folder.
    overwrite: whether a non-empty folder may be replaced.
    how_to_overwrite: how the error message tells the caller to allow it (a binary
      names its flag).

  Raises:
    ValueError: a remote path (the export is moved into place with os.replace).
    FileExistsError: a file, or a non-empty folder and overwrite is False.
  """
  if '://' in export_dir:
    raise ValueError(
      f'export_dir must be a local path (the export is moved into place '
      f'atomically with os.replace), got {export_dir!r}.'
    )
  export_dir = os.path.abspath(export_dir)
  if os.path.exists(export_dir) and not os.path.isdir(export_dir):
    raise FileExistsError(f'export_dir {export_dir} exists and is not a directory.')
  if os.path.isdir(export_dir) and os.listdir(export_dir) and not overwrite:
    raise FileExistsError(
      f'export_dir {export_dir} is not empty; pass {how_to_overwrite} to replace it.'
    )
  return export_dir


def _make_sibling_dir(path: str, suffix: str) -> str:
  """A new empty folder beside path (same file system, so os.replace is a rename).

  mkdtemp makes it 0700; it gets the umask's mode instead, as os.makedirs would,
  since a server may run as another user.
  """
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  folder = tempfile.mkdtemp(dir=parent, prefix=f'.{os.path.basename(path)}.{suffix}-')
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(folder, 0o777 & ~umask)
  return folder


def _move_into_place(tmp_dir: str, export_dir: str) -> None:
  """Replaces export_dir by tmp_dir; on failure the previous export stays."""
  old = None
  if os.path.isdir(export_dir) and os.listdir(export_dir):
    # os.replace moves a folder only onto an empty one: move the old export aside.
    old = _make_sibling_dir(export_dir, 'old')
    os.replace(export_dir, old)
  try:
    os.replace(tmp_dir, export_dir)  # an empty existing directory is replaced too
  except OSError:
    if old is not None:
      os.replace(old, export_dir)
    raise
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def _write_export(
  module: DetectionServingModule, folder: str, extra_assets: Mapping[str, str], category_names
) -> None:
  """The SavedModel and assets.extra/ (export_config.json, extra_assets) in folder."""
  tf.saved_model.save(module, folder, signatures=module.signatures())
  assets_dir = os.path.join(folder, EXTRA_ASSETS_DIR)
  os.makedirs(assets_dir, exist_ok=True)
  description = export_config_dict(module, module.config, category_names, list(extra_assets))
  for name, text in {**extra_assets, EXPORT_CONFIG_FILE: json.dumps(description, indent=2)}.items():
    with open(os.path.join(assets_dir, name), 'w') as f:
      f.write(text)


def _check_asset_names(extra_assets: Mapping[str, str]) -> None:
  for name in extra_assets:
    if name != os.path.basename(name) or name in ('', '.', '..', EXPORT_CONFIG_FILE):
      raise ValueError(
        f'extra_assets names must be plain file names other than '
        f'{EXPORT_CONFIG_FILE!r}, got {name!r}.'
      )


def export_saved_model(
  model: retinanet_model.RetinaNetModel,
  export_dir: str,
  input_image_size: Tuple[int, int],
  *,
  score_threshold: float = retinanet_model.PRE_NMS_SCORE_THRESHOLD,
  max_detections: int = retinanet_model.MAX_NUM_DETECTIONS,
  nms_iou_threshold: float = retinanet_model.NMS_IOU_THRESHOLD,
  pre_nms_top_k: int = retinanet_model.PRE_NMS_TOP_K,
  apply_nms: bool = True,
  max_image_pixels: int = preprocessing.DEFAULT_MAX_IMAGE_PIXELS,
  batch_size: Optional[int] = None,
  extra_assets: Optional[Dict[str, str]] = None,
  category_names: client_lib.CategoryNamesSource = None,
  overwrite: bool = False,
) -> str:
  """Writes a SavedModel of `model` with preprocessing and detection post-processing.

  The SavedModel is written to a temporary folder beside export_dir and moved into
  place with os.replace, so readers (TF Serving polling a model folder) never see a
  half-written export. For TF Serving, export_dir is a version folder such as
  `/models/spinenet/1`.

  Args:
    model: a built RetinaNetModel with its trained weights.
    export_dir: local folder to create (or replace, with overwrite).
    input_image_size: (height, width) images are resized into (keeping aspect ratio)
      and then padded to a multiple of 2^max_level, as in training / eval.
    score_threshold, max_detections, nms_iou_threshold, pre_nms_top_k: NMS options:
      the score below which detections are dropped, detections per image (outputs are
      padded to it), the IoU threshold, candidates per class kept before NMS.
    apply_nms: False exports decoded boxes and scores of all anchors instead.
    max_image_pixels: images with more pixels (height * width) are refused with
      InvalidArgument before they are decoded.
    batch_size: None for a dynamic batch, else the fixed batch size.
    extra_assets: file name -> text, written to assets.extra/ (e.g.
      {'operative_config.gin': ...}).
    category_names: class id -> name (or names of ids 1, 2, ...; see
      client_lib.load_category_names), recorded in export_config.json for clients.
    overwrite: replace a non-empty export_dir.

  Returns:
    The absolute export_dir.

  Raises:
    FileExistsError: export_dir is not empty and overwrite is False.
    ValueError: an option is out of range, an asset name is not a plain file name, or
      the input size does not match the backbone's.
  """
  config = ExportConfig(
    input_image_size=tuple(int(s) for s in input_image_size),
    score_threshold=float(score_threshold),
    max_detections=int(max_detections),
    nms_iou_threshold=float(nms_iou_threshold),
    pre_nms_top_k=int(pre_nms_top_k),
    apply_nms=bool(apply_nms),
    max_image_pixels=int(max_image_pixels),
    batch_size=None if batch_size is None else int(batch_size),
  )
  extra_assets = dict(extra_assets or {})
  _check_asset_names(extra_assets)
  export_dir = check_export_dir(export_dir, overwrite)
  module = DetectionServingModule(model, config)
  tmp_dir = _make_sibling_dir(export_dir, 'tmp')
  try:
    _write_export(module, tmp_dir, extra_assets, category_names)
    check_export_dir(export_dir, overwrite)  # someone may have written there meanwhile
    _move_into_place(tmp_dir, export_dir)
  except BaseException:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    raise
  return export_dir


def read_export_config(export_dir: str) -> Dict[str, Any]:
  """The export_config.json of an export folder.

  Raises:
    ValueError: the folder has none, or it is not JSON.
  """
  return files.read_json(
    os.path.join(export_dir, EXTRA_ASSETS_DIR, EXPORT_CONFIG_FILE), 'Export config'
  )

"""SavedModel export of a RetinaNet or Mask R-CNN model for TF Serving, pre/post-processing inside.

`export_saved_model(model, export_dir, input_image_size, ...)` writes a SavedModel with
these signatures (dynamic batch unless batch_size is given):

| signature         | input                                           | images in a batch |
|-------------------|-------------------------------------------------|-------------------|
| `image_tensor`    | `images`: uint8 [B, H, W, 3]                    | one size          |
| `image_bytes`     | `image_bytes`: string [B], JPEG or PNG files    | any sizes         |
| `tf_example`      | `tf_examples`: string [B], serialized tf.Example | any sizes         |
| `serving_default` | the same function as `image_bytes`              |                   |

tf.Examples are read in the project's layout (data/tfexample.py): the JPEG / PNG in
`image/encoded`. A bad request fails with InvalidArgumentError naming the input, the
image's index and the problem, never holding the request's bytes
(`image_bytes[1]: GIF is not supported; send JPEG or PNG`; serving/image_decoding.py).

Outputs with NMS (apply_nms=True): detection_boxes float32 [B, max_detections, 4]
(ymin, xmin, ymax, xmax in original-image pixels), detection_scores float32 [B, max],
detection_classes int32 [B, max] (dataset class ids; 0 is background and never
returned), num_detections int32 [B] (entries past it are zero padding), image_info
float32 [B, 4, 2]. A Mask R-CNN model adds detection_masks, by mask_output:
  'crop' (default): float32 [B, max, m, m] (m = 28), each detection's mask
    probabilities over its box, as Mask R-CNN predicts them (He et al. 2017, Sec. 3)
    and Model Garden's export returns them: small and the same shape for any image.
    Paste them with the box (`postprocessing.image_masks`, Detectron's paste).
  'pasted': uint8 [B, max, H, W], 0 / 1 in original-image pixels (the paste done in the
    graph, `postprocessing.paste_masks`), H, W the largest image of the batch (a
    smaller image's masks are zero beyond its size). max * H * W bytes per image.
Without NMS (apply_nms=False, RetinaNet only): decoded_boxes [B, num_anchors, 4]
(original pixels), decoded_box_scores [B, num_anchors, num_classes - 1] (column c is
class id c + 1), image_info.

The NMS options default to the model's own: RetinaNet's generate_detections defaults,
Mask R-CNN's DetectionGenerator (its gin bindings); a Mask R-CNN export given others
detects with a DetectionGenerator of those settings (it has no weights).

Next to the SavedModel, `assets.extra/` (which TF Serving ignores) holds
`export_config.json` (every option, the signatures, the model's levels / classes) and
the files passed as `extra_assets` (e.g. operative_config.gin).
"""

import contextlib
import dataclasses
import inspect
import json
import os
import shutil
import tempfile
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import tensorflow as tf

from official_spinenet import model_garden
from official_spinenet.modeling import maskrcnn_model
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
MASK_OUTPUTS = ('crop', 'pasted')
# Crop masks: a few KB per detection whatever the image size, one shape for every
# request, what Model Garden's and the TF Object Detection API's exports return.
DEFAULT_MASK_OUTPUT = 'crop'
# ExportConfig's NMS option -> the parameter of generate_detections (RetinaNet) and of
# Model Garden's DetectionGenerator (Mask R-CNN) that it sets.
NMS_PARAMETERS = {
  'score_threshold': 'pre_nms_score_threshold',
  'max_detections': 'max_num_detections',
  'nms_iou_threshold': 'nms_iou_threshold',
  'pre_nms_top_k': 'pre_nms_top_k',
}
_MASK_DESCRIPTIONS = {
  'crop': 'float32 [batch, max_detections, m, m]: probabilities over each detection box '
  '(foreground > 0.5); paste with the box (Detectron paste, '
  'serving.postprocessing.image_masks)',
  'pasted': 'uint8 [batch, max_detections, height, width]: 1 inside the object, in '
  'original-image pixels; height, width of the largest image of the request',
}


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
  mask_output: str = DEFAULT_MASK_OUTPUT  # models with masks: one of MASK_OUTPUTS

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
    if self.mask_output not in MASK_OUTPUTS:
      raise ValueError(f'mask_output must be one of {MASK_OUTPUTS}, got {self.mask_output!r}.')


def model_type(model) -> str:
  """'retinanet' (RetinaNetModel and subclasses) or 'maskrcnn' (Model Garden's MaskRCNNModel)."""
  if isinstance(model, retinanet_model.RetinaNetModel):
    return 'retinanet'
  if isinstance(model, model_garden.load('maskrcnn_model').MaskRCNNModel):
    return 'maskrcnn'
  raise TypeError(
    f'Cannot export a {type(model).__name__}: a RetinaNetModel or a MaskRCNNModel is needed.'
  )


def has_masks(model) -> bool:
  """Whether the model predicts instance masks (Mask R-CNN with a mask head)."""
  return model_type(model) == 'maskrcnn' and model.mask_head is not None


def model_levels(model) -> Tuple[int, int]:
  """(min_level, max_level) of the model's feature pyramid."""
  if model_type(model) == 'maskrcnn':
    config = model.get_config()
    return config['min_level'], config['max_level']
  return model.min_level, model.max_level


def _num_classes(model) -> int:
  head = model.detection_head[-1] if model_type(model) == 'maskrcnn' else model.head
  return head.get_config()['num_classes']


def _model_nms_settings(model) -> Dict[str, Any]:
  """The NMS parameters the model detects with by itself (incl. nms_version)."""
  if model_type(model) == 'maskrcnn':
    return dict(model.detection_generator.get_config())
  parameters = inspect.signature(retinanet_model.generate_detections).parameters
  return {name: p.default for name, p in parameters.items() if p.default is not p.empty}


def make_export_config(model, input_image_size: Sequence[int], **options) -> ExportConfig:
  """ExportConfig with the NMS options left out (or None) taken from the model.

  Args:
    model: the model to export (RetinaNet: generate_detections' defaults; Mask
      R-CNN: its DetectionGenerator's settings).
    input_image_size: (height, width).
    **options: ExportConfig's other fields.
  """
  settings = _model_nms_settings(model)
  for ours, theirs in NMS_PARAMETERS.items():
    if options.get(ours) is None:
      options[ours] = settings[theirs]
  types = {f.name: f.type for f in dataclasses.fields(ExportConfig)}
  for name, value in options.items():
    if value is not None and types.get(name) in (float, int, bool, str):
      options[name] = types[name](value)
  return ExportConfig(input_image_size=tuple(int(s) for s in input_image_size), **options)


def _check_options(model, config: ExportConfig) -> None:
  """ValueError for options the model cannot export with."""
  if config.mask_output != DEFAULT_MASK_OUTPUT and not has_masks(model):
    raise ValueError(
      f'mask_output={config.mask_output!r}: the {type(model).__name__} predicts no masks.'
    )
  if model_type(model) != 'maskrcnn':
    return
  if not config.apply_nms:
    raise ValueError(
      'apply_nms=False (every anchor\'s boxes and scores) is for RetinaNet; Mask R-CNN '
      'predicts its masks in the boxes that survive NMS.'
    )
  nms_version = model.detection_generator.get_config()['nms_version']
  if nms_version == 'v1' and config.batch_size is None:
    raise ValueError(
      "Model Garden's NMS 'v1' unrolls a fixed batch: export with a batch_size, or "
      "bind DetectionGenerator.nms_version = 'v2' or 'batched'."
    )
  if model.outer_boxes_scale != 1.0:
    raise ValueError('Masks of outer boxes (outer_boxes_scale > 1) are not supported.')


@contextlib.contextmanager
def _detection_generator(model, config: ExportConfig) -> Iterator[None]:
  """Mask R-CNN detects with the export's NMS options while the graph is traced.

  Its NMS runs inside the model (Model Garden's DetectionGenerator, no weights), so a
  generator with these settings stands in for the model's own, which is put back.
  """
  current = model.detection_generator
  settings = dict(current.get_config())
  settings.update({theirs: getattr(config, ours) for ours, theirs in NMS_PARAMETERS.items()})
  if settings == current.get_config():
    yield
    return
  model.detection_generator = type(current).from_config(settings)
  try:
    yield
  finally:
    model.detection_generator = current


class DetectionServingModule(tf.Module):
  """Holds the model and the three serving functions; `signatures()` for saving.

  One module for RetinaNet and Mask R-CNN: the same preprocessing, signatures and
  box mapping; only the model call differs (`_retinanet_detections`,
  `_maskrcnn_detections`), and Mask R-CNN adds detection_masks.
  """

  def __init__(self, model, config: ExportConfig):
    super().__init__(name='detection_serving')
    config.validate()
    if not model.built:
      raise ValueError(
        'The model is not built: build it (call it once on a batch of the '
        'input size) and load its weights before exporting.'
      )
    self._model_type = model_type(model)
    _check_options(model, config)
    self._model = tracking.Untracked(model)
    # Only the variables are tracked, not the Keras model: Keras' own SavedModel
    # serialization traces every layer's call (tiny SpineNet-49 on this 2-core machine:
    # save 75 s and load 33 s instead of 6 s and 8 s), and TF Serving needs nothing but
    # the signatures. The training checkpoint stays the source of weights for Keras.
    self.model_variables = list(model.variables)
    self._config = config
    max_level = model_levels(model)[1]
    self._model_input_size = preprocessing.padded_size(config.input_image_size, max_level)
    _check_model_input_size(model, self._model_input_size, max_level)
    self._anchor_boxes = None
    if self._model_type == 'retinanet':
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
  def model(self):
    """The RetinaNetModel or MaskRCNNModel."""
    return self._model.value

  @property
  def model_type(self) -> str:
    """'retinanet' or 'maskrcnn'."""
    return self._model_type

  @property
  def config(self) -> ExportConfig:
    return self._config

  @property
  def model_input_size(self):
    """[height, width] the images are padded to: input size rounded up to 2^max_level."""
    return list(self._model_input_size)

  def _retinanet_detections(self, images: tf.Tensor, image_shape: tf.Tensor):
    config = self._config
    return postprocessing.detections_per_image(
      self.model(images, training=False),
      self._anchor_boxes,
      image_shape,
      max_num_detections=config.max_detections,
      pre_nms_top_k=config.pre_nms_top_k,
      pre_nms_score_threshold=config.score_threshold,
      nms_iou_threshold=config.nms_iou_threshold,
    )

  def _maskrcnn_detections(self, images: tf.Tensor, image_shape: tf.Tensor):
    # anchor_boxes=None: the model makes them for the (static) input size.
    with _detection_generator(self.model, self._config):
      outputs = self.model(images, image_shape=image_shape, training=False)
    detections = maskrcnn_model.inference_outputs(outputs, has_masks(self.model))
    return postprocessing.zero_padding(detections)

  def _detect(self, images: tf.Tensor, image_info: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Model + post-processing on preprocessed images [B, Hm, Wm, 3]."""
    config = self._config
    image_shape = image_info[:, 1, :]
    if not config.apply_nms:
      outputs = self.model(images, training=False)
      decoded = postprocessing.decode_all_anchors(outputs, self._anchor_boxes, image_shape)
      return {
        'decoded_boxes': postprocessing.boxes_to_original(decoded['decoded_boxes'], image_info),
        'decoded_box_scores': decoded['decoded_box_scores'],
        'image_info': image_info,
      }
    if self._model_type == 'maskrcnn':
      detections = self._maskrcnn_detections(images, image_shape)
    else:
      detections = self._retinanet_detections(images, image_shape)
    detections['detection_boxes'] = postprocessing.boxes_to_original(
      detections['detection_boxes'], image_info
    )
    if 'detection_masks' in detections and config.mask_output == 'pasted':
      detections['detection_masks'] = postprocessing.paste_batch_masks(
        detections['detection_masks'], detections['detection_boxes'], image_info
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

  def _serve_encoded(self, encoded: tf.Tensor, input_name: str) -> Dict[str, tf.Tensor]:
    return self._detect_fn.value(
      *preprocessing.preprocess_encoded_batch(
        encoded,
        self._config.input_image_size,
        self._model_input_size,
        self._config.max_image_pixels,
        what=input_name,
      )
    )

  def serve_image_bytes(self, image_bytes: tf.Tensor) -> Dict[str, tf.Tensor]:
    """string [B] of JPEG / PNG files, any sizes."""
    return self._serve_encoded(image_bytes, 'image_bytes')

  def serve_tf_examples(self, tf_examples: tf.Tensor) -> Dict[str, tf.Tensor]:
    """string [B] of serialized tf.Examples (image/encoded holds the JPEG / PNG)."""
    return self._serve_encoded(tf_examples, 'tf_examples')

  def signatures(self) -> Dict[str, tf.types.experimental.ConcreteFunction]:
    """Signature name -> concrete function (serving_default = image_bytes)."""
    return concrete_signatures(self, self._config.batch_size)


def concrete_signatures(
  module, batch_size: Optional[int]
) -> Dict[str, tf.types.experimental.ConcreteFunction]:
  """The SIGNATURE_INPUTS signatures of a serving module, serving_default = image_bytes.

  Args:
    module: has serve_images (uint8 [B, H, W, 3]), serve_image_bytes (string [B]) and
      serve_tf_examples (string [B]); a detection or a classification serving module.
    batch_size: None for a dynamic batch.
  """
  functions = {
    'image_tensor': module.serve_images,
    'image_bytes': module.serve_image_bytes,
    'tf_example': module.serve_tf_examples,
  }
  signatures = {}
  for name, (input_name, dtype, shape) in SIGNATURE_INPUTS.items():
    spec = tf.TensorSpec([batch_size] + shape, dtype, name=input_name)
    signatures[name] = tf.function(functions[name], autograph=False).get_concrete_function(spec)
  signatures['serving_default'] = signatures[DEFAULT_SIGNATURE]
  return signatures


def signature_descriptions(batch_size: Optional[int]) -> Dict[str, Any]:
  """Each signature's input name, dtype and shape, as export_config.json records them."""
  return {
    name: {'input': {'name': input_name, 'dtype': dtype.name, 'shape': [batch_size] + shape}}
    for name, (input_name, dtype, shape) in SIGNATURE_INPUTS.items()
  }


def _check_model_input_size(model, model_input_size, max_level: int) -> None:
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
      f'pads to {model_input_size} (a multiple of 2^max_level = {2**max_level}); '
      'export with an input_image_size that pads to the backbone input size.'
    )


def _mask_description(module: 'DetectionServingModule') -> Optional[Dict[str, Any]]:
  """How detection_masks reads (export_config.json); None for a model without masks."""
  model = module.model
  if not has_masks(model):
    return None
  crop = model.mask_roi_aligner.get_config()['crop_size']
  size = crop * model.mask_head.get_config()['upsample_factor']
  output = module.config.mask_output
  return {'output': output, 'crop_size': size, 'format': _MASK_DESCRIPTIONS[output]}


def export_config_dict(
  module: DetectionServingModule,
  config: ExportConfig,
  category_names: client_lib.CategoryNamesSource = None,
  extra_assets: Sequence[str] = (),
) -> Dict[str, Any]:
  """The JSON-ready description written to assets.extra/export_config.json."""
  model = module.model
  signatures = signature_descriptions(config.batch_size)
  outputs = (
    ['detection_boxes', 'detection_scores', 'detection_classes', 'num_detections']
    if config.apply_nms
    else ['decoded_boxes', 'decoded_box_scores']
  )
  masks = _mask_description(module)
  if masks:
    outputs.append('detection_masks')
  min_level, max_level = model_levels(model)
  options = {**dataclasses.asdict(config), 'input_image_size': list(config.input_image_size)}
  options['mask_output'] = config.mask_output if masks else None
  return {
    'options': options,
    'model_type': module.model_type,
    'model_input_size': module.model_input_size,
    'nms_version': _model_nms_settings(model)['nms_version'] if config.apply_nms else None,
    'min_level': min_level,
    'max_level': max_level,
    'num_classes_with_background': _num_classes(model),
    'category_names': client_lib.category_names_for_json(category_names),
    'signatures': signatures,
    'default_signature': DEFAULT_SIGNATURE,
    'outputs': outputs + ['image_info'],
    'box_format': 'ymin, xmin, ymax, xmax in original-image pixels',
    'detection_masks': masks,
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
  module: tf.Module, folder: str, assets: Mapping[str, str], custom_gradients: bool = True
) -> None:
  """The SavedModel (module.signatures()) and assets.extra/<name> files in folder."""
  options = tf.saved_model.SaveOptions(experimental_custom_gradients=custom_gradients)
  tf.saved_model.save(module, folder, signatures=module.signatures(), options=options)
  assets_dir = os.path.join(folder, EXTRA_ASSETS_DIR)
  os.makedirs(assets_dir, exist_ok=True)
  for name, text in assets.items():
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
  model,
  export_dir: str,
  input_image_size: Tuple[int, int],
  *,
  score_threshold: Optional[float] = None,
  max_detections: Optional[int] = None,
  nms_iou_threshold: Optional[float] = None,
  pre_nms_top_k: Optional[int] = None,
  apply_nms: bool = True,
  max_image_pixels: int = preprocessing.DEFAULT_MAX_IMAGE_PIXELS,
  batch_size: Optional[int] = None,
  mask_output: str = DEFAULT_MASK_OUTPUT,
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
    model: a built RetinaNetModel or MaskRCNNModel with its trained weights.
    export_dir: local folder to create (or replace, with overwrite).
    input_image_size: (height, width) images are resized into (keeping aspect ratio)
      and then padded to a multiple of 2^max_level, as in training / eval.
    score_threshold, max_detections, nms_iou_threshold, pre_nms_top_k: NMS options:
      the score below which detections are dropped, detections per image (outputs are
      padded to it), the IoU threshold, candidates per class kept before NMS. None:
      the model's own (RetinaNet: generate_detections' defaults; Mask R-CNN: its
      DetectionGenerator's, as gin bound them).
    apply_nms: False exports decoded boxes and scores of all anchors instead
      (RetinaNet only).
    max_image_pixels: images with more pixels (height * width) are refused with
      InvalidArgument before they are decoded.
    batch_size: None for a dynamic batch, else the fixed batch size.
    mask_output: models with masks: 'crop' (default; float32 [B, N, m, m] over each
      box) or 'pasted' (uint8 [B, N, H, W] in original-image pixels); see the module
      docstring.
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
  config = make_export_config(
    model,
    input_image_size,
    score_threshold=score_threshold,
    max_detections=max_detections,
    nms_iou_threshold=nms_iou_threshold,
    pre_nms_top_k=pre_nms_top_k,
    apply_nms=apply_nms,
    max_image_pixels=max_image_pixels,
    batch_size=None if batch_size is None else int(batch_size),
    mask_output=mask_output,
  )
  extra_assets = dict(extra_assets or {})
  _check_asset_names(extra_assets)
  check_export_dir(export_dir, overwrite)
  module = DetectionServingModule(model, config)
  description = export_config_dict(module, config, category_names, list(extra_assets))
  return save_atomically(module, export_dir, description, extra_assets, overwrite)


def save_atomically(
  module: tf.Module,
  export_dir: str,
  description: Mapping[str, Any],
  extra_assets: Optional[Mapping[str, str]] = None,
  overwrite: bool = False,
  custom_gradients: bool = True,
) -> str:
  """Saves a serving module with its assets.extra/ into export_dir, all or nothing.

  Every export (detection here, classification in classification_export.py) is
  written to a temporary folder beside export_dir and moved into place with
  os.replace, so a reader (TF Serving polling a model folder) never sees half of it.

  Args:
    module: a tf.Module with a `signatures()` method (name -> concrete function).
    export_dir: local folder to create (or replace, with overwrite).
    description: JSON-ready, written as assets.extra/export_config.json.
    extra_assets: file name -> text, written to assets.extra/.
    overwrite: replace a non-empty export_dir.
    custom_gradients: save the gradients of ops with custom gradients (e.g. swish)
      too (tf.saved_model.SaveOptions.experimental_custom_gradients); serving never
      differentiates, and tracing them can take half of the save.

  Returns:
    The absolute export_dir.

  Raises:
    FileExistsError: export_dir is not empty and overwrite is False.
    ValueError: a remote export_dir, or an asset name that is not a plain file name.
  """
  extra_assets = dict(extra_assets or {})
  _check_asset_names(extra_assets)
  export_dir = check_export_dir(export_dir, overwrite)
  assets = {**extra_assets, EXPORT_CONFIG_FILE: json.dumps(description, indent=2)}
  tmp_dir = _make_sibling_dir(export_dir, 'tmp')
  try:
    _write_export(module, tmp_dir, assets, custom_gradients)
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

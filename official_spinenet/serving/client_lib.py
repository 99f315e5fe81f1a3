"""TF Serving client pieces without network access: find images, build requests, parse replies.

REST (`POST http://host:8501/v1/models/<name>[/versions/<v>]:predict`, see
https://www.tensorflow.org/tfx/serving/api_rest) carries binary strings as
`{"b64": ...}`; the row ("instances") and columnar ("inputs") formats are both built.
gRPC requests are `tensorflow_serving.apis.predict_pb2.PredictRequest`s (package
`tensorflow-serving-api`, imported only by the gRPC functions, so REST needs neither it
nor TensorFlow).

Signatures and input names are those of `export_lib` (image_bytes: string [B];
image_tensor: uint8 [B, H, W, 3], one image size per request). A reply is parsed into
one `ImageDetections` per image for a detector, or one `ImageClassification` (the top-k
classes, scores and names, best first) for a classifier (classification_export: its
outputs are CLASSIFICATION_KEYS).
"""

import base64
import dataclasses
import glob
import io
import os
import re
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
# Input name of each signature (export_lib.SIGNATURE_INPUTS; repeated here so that a
# REST client does not need TensorFlow to import this module).
SIGNATURE_INPUT_NAMES = {
  'image_bytes': 'image_bytes',
  'image_tensor': 'images',
  'tf_example': 'tf_examples',
  'serving_default': 'image_bytes',
}
OUTPUT_KEYS = (
  'detection_boxes',
  'detection_scores',
  'detection_classes',
  'num_detections',
  'image_info',
)
MASK_KEY = 'detection_masks'  # Mask R-CNN exports only
# A classifier export's outputs (serving/classification_export.py), each [B, k].
CLASSIFICATION_KEYS = ('classes', 'scores', 'class_names')
# A JSON file, {class id: name}, or the names of class ids 1, 2, ...
CategoryNamesSource = Union[None, str, Mapping[Any, Any], Sequence[str]]


@dataclasses.dataclass
class ImageDetections:
  """The valid detections of one image (padding past num_detections removed).

  boxes: float [N, 4] (ymin, xmin, ymax, xmax) in original-image pixels; scores: float
  [N]; classes: int [N] dataset class ids; image_size: (height, width); masks (Mask
  R-CNN exports, else None): float32 [N, m, m] probabilities over each box (the
  export's mask_output 'crop') or uint8 [N, height, width] 0 / 1 in the image's pixels
  ('pasted'); `postprocessing.image_masks` gives either in the image's pixels.
  """

  boxes: np.ndarray
  scores: np.ndarray
  classes: np.ndarray
  image_size: tuple
  masks: Optional[np.ndarray] = None

  def above(self, min_score: float) -> 'ImageDetections':
    """The detections scoring at least min_score."""
    keep = self.scores >= min_score
    return ImageDetections(
      self.boxes[keep],
      self.scores[keep],
      self.classes[keep],
      self.image_size,
      None if self.masks is None else self.masks[keep],
    )


@dataclasses.dataclass
class ImageClassification:
  """One image's top-k classes, best first.

  classes: int [k] 0-based label ids; scores: float32 [k] softmax probabilities;
  class_names: k names (the export's class-names file, or 'class_<i>').
  """

  classes: np.ndarray
  scores: np.ndarray
  class_names: List[str]

  def as_json(self) -> Dict[str, list]:
    """{'classes', 'scores', 'class_names'} as JSON-ready lists."""
    return {
      'classes': [int(c) for c in self.classes],
      'scores': [float(s) for s in self.scores],
      'class_names': list(self.class_names),
    }


def find_images(patterns: Sequence[str]) -> List[str]:
  """Image files from files, folders (their .jpg/.jpeg/.png, not recursive) and globs.

  Raises:
    ValueError: if nothing matches (the message names the patterns without matches).
  """
  files, empty = [], []
  for pattern in patterns:
    if os.path.isdir(pattern):
      found = sorted(
        os.path.join(pattern, name)
        for name in os.listdir(pattern)
        if name.lower().endswith(IMAGE_EXTENSIONS)
      )
    else:
      found = (
        sorted(glob.glob(pattern))
        if glob.has_magic(pattern)
        else ([pattern] if os.path.isfile(pattern) else [])
      )
    if not found:
      empty.append(pattern)
    files.extend(f for f in found if f not in files)
  if empty:
    raise ValueError(f'No image files found for: {", ".join(empty)}.')
  return files


def batches(items: Sequence[Any], batch_size: int) -> Iterator[Sequence[Any]]:
  """Consecutive slices of at most batch_size items."""
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  for start in range(0, len(items), batch_size):
    yield items[start : start + batch_size]


def drawing_names(paths: Sequence[str]) -> List[str]:
  """'<stem>.png' per image, made unique ('a.jpg', 'a.png' -> 'a.png', 'a-2.png')."""
  names, used = [], set()
  for path in paths:
    stem = os.path.splitext(os.path.basename(path))[0]
    name, n = f'{stem}.png', 1
    while name in used:
      n += 1
      name = f'{stem}-{n}.png'
    used.add(name)
    names.append(name)
  return names


def decode_to_array(encoded: bytes) -> np.ndarray:
  """uint8 [H, W, 3] RGB pixels of an encoded image (PIL), for the image_tensor signature."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  with Image.open(io.BytesIO(encoded)) as image:
    return np.asarray(image.convert('RGB'), dtype=np.uint8)


def _signature_inputs(signature_name: str, images: Sequence[Any]) -> tuple:
  """(input name, values): bytes for string signatures, one stacked uint8 array else."""
  if signature_name not in SIGNATURE_INPUT_NAMES:
    raise ValueError(
      f'Unknown signature {signature_name!r}; expected one of {sorted(SIGNATURE_INPUT_NAMES)}.'
    )
  input_name = SIGNATURE_INPUT_NAMES[signature_name]
  if input_name != 'images':
    return input_name, [bytes(i) for i in images]
  arrays = [np.asarray(i, dtype=np.uint8) for i in images]
  if len({a.shape for a in arrays}) != 1:
    raise ValueError(
      'image_tensor takes images of one size per request, got '
      f'{sorted({a.shape for a in arrays})}; send them one by one or use '
      'image_bytes.'
    )
  return input_name, np.stack(arrays)


def rest_predict_url(
  host: str, port: int, model_name: str, model_version: Optional[int] = None
) -> str:
  """http://host:port/v1/models/<name>[/versions/<v>]:predict"""
  version = f'/versions/{int(model_version)}' if model_version else ''
  return f'http://{host}:{int(port)}/v1/models/{model_name}{version}:predict'


def rest_predict_payload(
  images: Sequence[Any], signature_name: str = 'image_bytes', columnar: bool = False
) -> Dict[str, Any]:
  """The JSON body of a REST predict request.

  Args:
    images: encoded image bytes (string signatures) or uint8 [H, W, 3] arrays of one
      size (image_tensor).
    signature_name: exported signature to call.
    columnar: the "inputs" format ({name: [values]}) instead of the row "instances"
      format ([{name: value}, ...]).

  Returns:
    e.g. {"signature_name": "image_bytes", "instances": [{"image_bytes": {"b64": ...}}]}.
  """
  input_name, values = _signature_inputs(signature_name, images)
  if input_name == 'images':
    values = values.tolist()
  else:
    values = [{'b64': base64.b64encode(v).decode('ascii')} for v in values]
  if columnar:
    return {'signature_name': signature_name, 'inputs': {input_name: values}}
  return {'signature_name': signature_name, 'instances': [{input_name: value} for value in values]}


def grpc_predict_request(
  images: Sequence[Any],
  model_name: str,
  signature_name: str = 'image_bytes',
  model_version: Optional[int] = None,
):
  """A tensorflow_serving PredictRequest for the images (see rest_predict_payload)."""
  from tensorflow.core.framework import tensor_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow.core.framework import tensor_shape_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow.core.framework import types_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top

  input_name, values = _signature_inputs(signature_name, images)
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature_name
  if model_version:
    request.model_spec.version.value = int(model_version)
  shape = [len(values)] if input_name != 'images' else list(values.shape)
  tensor = tensor_pb2.TensorProto(
    tensor_shape=tensor_shape_pb2.TensorShapeProto(
      dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in shape]
    )
  )
  if input_name == 'images':
    tensor.dtype = types_pb2.DT_UINT8
    tensor.tensor_content = values.tobytes()  # compact; int_val would be 4-8x larger
  else:
    tensor.dtype = types_pb2.DT_STRING
    tensor.string_val.extend(values)
  request.inputs[input_name].CopyFrom(tensor)
  return request


def _output_keys(outputs: Mapping[str, Any]) -> Sequence[str]:
  """OUTPUT_KEYS, and MASK_KEY when the reply has masks."""
  return OUTPUT_KEYS + ((MASK_KEY,) if MASK_KEY in outputs else ())


def _image_masks(masks: np.ndarray, count: int, image_size: tuple) -> np.ndarray:
  """One image's masks: crop masks as float32, pasted ones (integers) cut to its size.

  Pasted masks are integers (uint8; ints in a REST reply), crop masks floats: the
  dtype, not the shape, tells them apart.
  """
  if np.issubdtype(masks.dtype, np.floating):
    return masks[:count].astype(np.float32)
  return masks[:count, : image_size[0], : image_size[1]].astype(np.uint8)


def detections_from_outputs(outputs: Mapping[str, Any]) -> List[ImageDetections]:
  """Per-image detections from batched output arrays (keys of OUTPUT_KEYS [, MASK_KEY])."""
  arrays = {k: np.asarray(outputs[k]) for k in _output_keys(outputs)}
  results = []
  for i, count in enumerate(arrays['num_detections'].astype(int)):
    image_size = tuple(int(s) for s in arrays['image_info'][i, 0])
    masks = arrays.get(MASK_KEY)
    results.append(
      ImageDetections(
        boxes=arrays['detection_boxes'][i, :count].astype(np.float32),
        scores=arrays['detection_scores'][i, :count].astype(np.float32),
        classes=arrays['detection_classes'][i, :count].astype(np.int64),
        image_size=image_size,
        masks=None if masks is None else _image_masks(masks[i], count, image_size),
      )
    )
  return results


def _name(value: Any) -> str:
  """A class name from a reply: bytes (gRPC, in-process) or str (REST)."""
  return value.decode('utf-8', errors='replace') if isinstance(value, bytes) else str(value)


def classifications_from_outputs(outputs: Mapping[str, Any]) -> List[ImageClassification]:
  """Per-image top-k from a classifier's batched outputs (CLASSIFICATION_KEYS, [B, k])."""
  classes = np.asarray(outputs['classes'])
  scores = np.asarray(outputs['scores'])
  names = outputs['class_names']
  return [
    ImageClassification(
      classes=classes[i].astype(np.int64),
      scores=scores[i].astype(np.float32),
      class_names=[_name(n) for n in names[i]],
    )
    for i in range(len(classes))
  ]


def is_classification(outputs: Mapping[str, Any]) -> bool:
  """Whether outputs (or their keys) are a classifier's rather than a detector's."""
  return 'class_names' in outputs and 'detection_boxes' not in outputs


def _reply_keys(outputs: Mapping[str, Any]) -> Sequence[str]:
  return CLASSIFICATION_KEYS if is_classification(outputs) else _output_keys(outputs)


def results_from_outputs(
  outputs: Mapping[str, Any],
) -> Union[List[ImageDetections], List[ImageClassification]]:
  """Per-image results of a detector's or a classifier's batched outputs."""
  if is_classification(outputs):
    return classifications_from_outputs(outputs)
  return detections_from_outputs(outputs)


def parse_rest_response(
  response: Mapping[str, Any],
) -> Union[List[ImageDetections], List[ImageClassification]]:
  """Per-image results from a REST predict reply (row "predictions" or columnar "outputs").

  Detections for a detector's export, top-k classifications for a classifier's.

  Raises:
    RuntimeError: the reply is an error ({"error": message}).
  """
  if 'error' in response:
    raise RuntimeError(f'TF Serving error: {response["error"]}')
  if 'outputs' in response:
    return results_from_outputs(response['outputs'])
  rows = response['predictions']
  return results_from_outputs(
    {k: [row[k] for row in rows] for k in _reply_keys(rows[0] if rows else {})}
  )


def parse_grpc_response(response) -> Union[List[ImageDetections], List[ImageClassification]]:
  """Per-image results (detections or classifications) from a PredictResponse."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  keys = _reply_keys(response.outputs)
  return results_from_outputs({k: tf.make_ndarray(response.outputs[k]) for k in keys})


_ASSERTION = re.compile(r'assertion failed: \[(.*?)\]\s*$')
# Lines TensorFlow adds around an op's error: the Python caller's header and node
# traces, the runtime's node names and counts.
_BOILERPLATE = re.compile(
  r'(Graph execution error:|Detected at node .* defined at |<stack traces unavailable>'
  r'|\s*\[\[\{\{|\d+ root error\(s\) found|\d+ successful operations|\d+ derived errors)'
)
_STATUS_PREFIX = re.compile(r'^\s*\(\d+\) [A-Z_]+: ')  # '  (0) INVALID_ARGUMENT: '
_OP_SUFFIX = re.compile(r'\s*(\[\[\{\{.*|\[Op:[^\]]*\].*)$')


def _problem_lines(message: str) -> List[str]:
  """The lines of a TensorFlow error message that are not its boilerplate."""
  lines = message.splitlines()
  traced = bool(lines) and lines[0].startswith('Graph execution error')
  problems = []
  for line in lines:
    line = _STATUS_PREFIX.sub('', line)
    # In a traced error, indented lines are the Python stack frames of the node.
    if _BOILERPLATE.match(line) or (traced and line[:1].isspace()):
      continue
    line = _OP_SUFFIX.sub('', line).strip()
    match = _ASSERTION.search(line)
    problems.append(match.group(1).strip() if match else line)
  return [p for p in problems if p]


def describe_error(error: Union[BaseException, str]) -> str:
  """The problem a serving error reports, on one line, without TensorFlow's boilerplate.

  A SavedModel called from Python raises "Graph execution error:\n\nDetected at node
  ... defined at (most recent call last):\n<stack traces unavailable>\nassertion
  failed: [image_bytes[1]: GIF is not supported; send JPEG or PNG]\n\t [[{{node
  ...}}]] [Op:...]"; TF Serving replies with the part from "assertion failed". Both give
  "image_bytes[1]: GIF is not supported; send JPEG or PNG". Other errors give their
  lines without TensorFlow's node names and stack frames, joined by ' '.

  Args:
    error: an exception (a tf.errors.OpError's `message`, else str(error)) or a message.
  """
  message = error if isinstance(error, str) else getattr(error, 'message', None)
  if not isinstance(message, str):
    message = str(error)
  problem = ' '.join(_problem_lines(message))
  if problem:
    return problem
  return message.strip() or type(error).__name__


def predict_each(
  predict: Callable[[Sequence[Any]], Sequence[Any]],
  inputs: Sequence[Any],
  retry_each: Callable[[Exception], bool] = lambda error: True,
) -> List[Tuple[Any, Optional[str]]]:
  """(result, None) or (None, problem) per input; one bad input does not sink the others.

  Calls predict(inputs) once. If it raises (any exception: a refused image, a
  transport error) and retry_each(error) holds for a batch of several inputs, each
  input is sent alone, so the good ones still get results.

  Args:
    predict: inputs -> one result per input.
    inputs: what one call sends (image bytes or arrays).
    retry_each: whether an error may lie in one input (a bad request) rather than in
      the call (a server down: no use sending each image to it).

  Returns:
    Per input, its result or the problem (describe_error of what was raised).
  """
  try:
    return [(result, None) for result in predict(inputs)]
  except Exception as error:  # pylint: disable=broad-except
    if len(inputs) == 1 or not retry_each(error):
      return [(None, describe_error(error))] * len(inputs)
  outcomes = []
  for one in inputs:
    try:
      outcomes.append((predict([one])[0], None))
    except Exception as error:  # pylint: disable=broad-except
      outcomes.append((None, describe_error(error)))
  return outcomes


def _names_from_data(data: Any, source: str) -> Dict[int, str]:
  """Class id -> name from parsed JSON or a Python mapping / list (see load_category_names)."""
  try:
    if isinstance(data, (list, tuple)):
      return {i + 1: str(name) for i, name in enumerate(data)}
    if not isinstance(data, Mapping):
      raise TypeError(f'it holds a {type(data).__name__}')
    if 'categories' in data:  # a COCO annotation file
      return {int(c['id']): str(c['name']) for c in data['categories']}
    if 'category_names' in data or 'options' in data:  # an export's export_config.json
      data = data.get('category_names') or {}
    return {int(k): str(v) for k, v in data.items()}
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    raise ValueError(
      f'{source} is not a category names file (export_config.json, '
      '{"id": "name"}, a list of names or a COCO annotation file): '
      f'{e}'
    ) from e


def load_category_names(source: CategoryNamesSource) -> Dict[int, str]:
  """Class id -> name, from a JSON file, a mapping or a list of names.

  A file may be an export's export_config.json (its "category_names"), a
  {"id": "name"} object, a list of names or a COCO annotation file ("categories").
  A list names ids 1, 2, ... (0 is the background). None or '' give {}.

  Args:
    source: a JSON file path (local or gs://), a {class id: name} mapping, a list of
      names, or None.

  Returns:
    {class id: name}; {} for None.

  Raises:
    ValueError: the file cannot be read, is none of these formats, or names no
      category (e.g. an export made without names); a mapping key is not a class id.
      The message names the file.
  """
  if source is None or source == '':
    return {}
  if not isinstance(source, str):
    return _names_from_data(source, 'category names')
  # utils.files loads TensorFlow: only when a file is read (importing this module and
  # building REST requests need none).
  from official_spinenet.utils import files  # pylint: disable=g-import-not-at-top

  names = _names_from_data(files.read_json(source, 'Category names file'), source)
  if not names:
    raise ValueError(
      f'Category names file {source!r} names no categories (an export made '
      'without category names?).'
    )
  return names


def category_names_for_json(source: CategoryNamesSource) -> Optional[Dict[str, str]]:
  """{"class id": name} as an export's JSON records it; None when there are no names."""
  names = load_category_names(source)
  return {str(k): v for k, v in names.items()} or None


def read_files(paths: Sequence[str]) -> List[bytes]:
  """The bytes of each file (the encoded images a request sends)."""
  encoded = []
  for path in paths:
    with open(path, 'rb') as f:
      encoded.append(f.read())
  return encoded


def format_detections(
  name: str, detections: ImageDetections, category_names: Mapping[int, str], max_lines: int = 20
) -> str:
  """Readable lines: the image, then one line per detection (best first)."""
  height, width = detections.image_size
  lines = [f'{name} ({height}x{width}): {len(detections.scores)} detections']
  for box, score, cls in list(zip(detections.boxes, detections.scores, detections.classes))[
    :max_lines
  ]:
    label = category_names.get(int(cls), f'class {int(cls)}')
    ymin, xmin, ymax, xmax = (float(v) for v in box)
    lines.append(
      f'  {score:.3f} {label:<12} y {ymin:7.1f}..{ymax:7.1f}  x {xmin:7.1f}..{xmax:7.1f}'
    )
  if len(detections.scores) > max_lines:
    lines.append(f'  ... {len(detections.scores) - max_lines} more')
  return '\n'.join(lines)


def format_classification(name: str, result: ImageClassification) -> str:
  """One line: the image, then its top-k classes with their scores, best first."""
  best = ', '.join(
    f'{label} {score:.3f}' for label, score in zip(result.class_names, result.scores)
  )
  return f'{name}: {best}'

"""The network side of the TF Serving client: REST / gRPC calls over a list of images.

`run_client(ClientOptions(images=[...], ...))` is what `spinenet-serve-client` runs.
Requests and replies are built and parsed by `client_lib` (pure functions, tested
against the SavedModel); this module sends them and writes the results. REST needs
neither TensorFlow nor tensorflow-serving-api; gRPC needs the latter. TensorFlow is
loaded only to write --output_dir / --output_json (utils.files, atomic and gs://-able)
and to paste a Mask R-CNN export's masks (drawn in the class colour, returned as RLE).
A classifier export's replies (top-k classes, scores and names) are printed one line per
image and returned as they are; min_score, label_map and output_dir (drawings) apply to
detections only.
"""

import dataclasses
import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple
import urllib.error
import urllib.request

from absl import logging

from official_spinenet.evaluation import instance_masks
from official_spinenet.serving import client_lib

_GRPC_MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # large photos in one batch
SIGNATURES = ('image_bytes', 'image_tensor')
PROTOCOLS = ('rest', 'grpc')

# images -> one ImageDetections (detector) or ImageClassification (classifier) per image.
Predict = Callable[[Sequence], List[Any]]


@dataclasses.dataclass
class ClientOptions:
  """What to send where (spinenet-serve-client's flags, by the same names).

  Attributes:
    images: image files, folders (their .jpg/.jpeg/.png) or globs.
    protocol: 'rest' or 'grpc'.
    server: TF Serving host.
    rest_port: TF Serving --rest_api_port.
    grpc_port: TF Serving --port (gRPC).
    model_name: the model's name in the server config.
    model_version: a version; None: the latest.
    signature: 'image_bytes' (the files, any sizes per batch) or 'image_tensor'
      (decoded pixels, one image per request).
    batch_size: images per request (image_bytes).
    columnar: REST: the columnar "inputs" format instead of "instances".
    timeout: seconds to wait for one reply.
    min_score: print, draw and return the detections scoring at least this.
    label_map: class names (client_lib.load_category_names formats).
    output_dir: if set, one PNG per image with its detections drawn.
    output_json: if set, all detections as JSON.
  """

  images: Sequence[str]
  protocol: str = 'rest'
  server: str = 'localhost'
  rest_port: int = 8501
  grpc_port: int = 8500
  model_name: str = 'spinenet'
  model_version: Optional[int] = None
  signature: str = 'image_bytes'
  batch_size: int = 8
  columnar: bool = False
  timeout: float = 60.0
  min_score: float = 0.3
  label_map: Optional[str] = None
  output_dir: Optional[str] = None
  output_json: Optional[str] = None


class ServingError(RuntimeError):
  """TF Serving answered a request with an error (the message is the server's).

  Attributes:
    bad_request: the request was at fault (HTTP 400, gRPC INVALID_ARGUMENT), e.g. one
      bad image in it; the other images of its batch may then be fine.
  """

  def __init__(self, message: str, bad_request: bool):
    super().__init__(message)
    self.bad_request = bad_request


def _rest_error_message(body: str) -> str:
  """TF Serving's REST error text: the "error" of its JSON body, else the body."""
  try:
    return str(json.loads(body)['error'])
  except (ValueError, KeyError, TypeError):
    return body


def predict_rest(images, url: str, signature: str, columnar: bool, timeout: float):
  """POSTs one REST predict request; returns per-image results.

  Raises:
    ServingError: the server answered with an HTTP error.
  """
  body = json.dumps(client_lib.rest_predict_payload(images, signature, columnar)).encode()
  request = urllib.request.Request(url, data=body, headers={'Content-Type': 'application/json'})
  try:
    with urllib.request.urlopen(request, timeout=timeout) as reply:
      return client_lib.parse_rest_response(json.load(reply))
  except urllib.error.HTTPError as e:  # TF Serving puts the reason in a JSON body
    message = _rest_error_message(e.read().decode(errors='replace'))
    raise ServingError(f'{message} (HTTP {e.code} from {url})', e.code == 400) from e


def make_grpc_predict(
  target: str, model_name: str, signature: str, model_version, timeout: float
) -> Predict:
  """A function images -> detections over one gRPC channel to TF Serving.

  It raises ServingError when the server answers with an error status.
  """
  import grpc  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import prediction_service_pb2_grpc  # pylint: disable=g-import-not-at-top

  channel = grpc.insecure_channel(
    target,
    options=[
      ('grpc.max_send_message_length', _GRPC_MAX_MESSAGE_BYTES),
      ('grpc.max_receive_message_length', _GRPC_MAX_MESSAGE_BYTES),
    ],
  )
  stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

  def predict(images):
    request = client_lib.grpc_predict_request(images, model_name, signature, model_version)
    try:
      response = stub.Predict(request, timeout=timeout)
    except grpc.RpcError as e:
      bad_request = e.code() == grpc.StatusCode.INVALID_ARGUMENT
      raise ServingError(f'{e.details()} (gRPC {e.code().name} from {target})', bad_request) from e
    return client_lib.parse_grpc_response(response)

  return predict


def _is_bad_request(error: Exception) -> bool:
  """Whether a failed request may hold good images beside a bad one (worth one by one)."""
  return isinstance(error, ServingError) and error.bad_request


def _predict_fn(options: ClientOptions) -> Predict:
  if options.protocol == 'rest':
    url = client_lib.rest_predict_url(
      options.server, options.rest_port, options.model_name, options.model_version
    )
    return lambda images: predict_rest(
      images, url, options.signature, options.columnar, options.timeout
    )
  if options.protocol == 'grpc':
    return make_grpc_predict(
      f'{options.server}:{options.grpc_port}',
      options.model_name,
      options.signature,
      options.model_version,
      options.timeout,
    )
  raise ValueError(f'protocol must be one of {PROTOCOLS}, got {options.protocol!r}.')


def _result_entry(detections: client_lib.ImageDetections) -> Dict[str, list]:
  """One image's detections as JSON-ready lists; masks as COCO RLE in its pixels."""
  entry = {
    'boxes_ymin_xmin_ymax_xmax': detections.boxes.tolist(),
    'scores': detections.scores.tolist(),
    'classes': detections.classes.tolist(),
  }
  if detections.masks is not None:
    # Pasting crop masks needs Model Garden (and TensorFlow): only for mask models.
    from official_spinenet.serving import postprocessing  # pylint: disable=g-import-not-at-top

    masks = postprocessing.image_masks(detections.masks, detections.boxes, detections.image_size)
    entry['segmentations'] = [instance_masks.encode_rle(m) for m in masks]
  return entry


def _handle_reply(options, category_names, path: str, data: bytes, reply, drawing_name: str):
  """Prints one image's reply; draws detections if asked; returns its JSON entry."""
  if isinstance(reply, client_lib.ImageClassification):
    print(client_lib.format_classification(path, reply))
    return reply.as_json()
  detections = reply.above(options.min_score)
  print(client_lib.format_detections(path, detections, category_names))
  if options.output_dir:
    from official_spinenet.serving import drawing  # pylint: disable=g-import-not-at-top

    drawing.save_drawing(
      data, detections, category_names, os.path.join(options.output_dir, drawing_name)
    )
  return _result_entry(detections)


def _send_fn(options: ClientOptions) -> Predict:
  """encoded images -> results: the files (image_bytes) or their pixels (image_tensor)."""
  predict = _predict_fn(options)
  if options.signature == 'image_bytes':
    return predict
  # A file PIL cannot read fails here, inside the call, and is reported as the others.
  return lambda encoded: predict([client_lib.decode_to_array(e) for e in encoded])


def run_client(options: ClientOptions) -> Tuple[Dict[str, dict], List[str]]:
  """Sends the images, prints (and optionally draws / writes) the detections.

  An image that fails (refused by the server, unreadable, a timeout) is printed as
  `FAILED <path>: <problem>` and the others carry on: a batch the server refuses as a
  bad request is sent again image by image, so its good images get results.

  Returns:
    ({image path: {'boxes_ymin_xmin_ymax_xmax', 'scores', 'classes'[,
    'segmentations']}} above min_score, [paths of images whose request failed]);
    'segmentations' (a Mask R-CNN export) holds each mask as COCO RLE
    ({'size': [h, w], 'counts': str}) in the image's pixels. A classifier's entries are
    {'classes', 'scores', 'class_names'}: its top-k, best first.

  Raises:
    ValueError: no images found, a bad label map, protocol or signature.
  """
  if options.signature not in SIGNATURES:
    raise ValueError(f'signature must be one of {SIGNATURES}, got {options.signature!r}.')
  paths = client_lib.find_images(options.images)
  category_names = client_lib.load_category_names(options.label_map)
  send = _send_fn(options)
  drawings = dict(zip(paths, client_lib.drawing_names(paths)))
  # image_tensor requests hold one image size, so they go one by one.
  batch_size = options.batch_size if options.signature == 'image_bytes' else 1
  results, errors = {}, {}
  for batch_paths in client_lib.batches(paths, batch_size):
    encoded = client_lib.read_files(batch_paths)
    logging.info('Sending %d image(s) starting with %s', len(encoded), batch_paths[0])
    outcomes = client_lib.predict_each(send, encoded, _is_bad_request)
    for path, data, (reply, problem) in zip(batch_paths, encoded, outcomes):
      if problem is not None:
        errors[path] = problem
        print(f'FAILED {path}: {problem}')
        continue
      results[path] = _handle_reply(options, category_names, path, data, reply, drawings[path])
  if options.output_json:
    from official_spinenet.utils import files  # pylint: disable=g-import-not-at-top

    files.write_json_atomically(
      {'detections': results, 'failed': list(errors), 'errors': errors}, options.output_json
    )
  return results, list(errors)

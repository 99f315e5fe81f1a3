r"""Sends images to a TF Serving model (REST or gRPC) and prints / draws the detections.

  spinenet-serve-client --images=photos/,extra/*.jpg --protocol=rest \
      --server=localhost --model_name=spinenet --output_dir=/tmp/drawn \
      --label_map=/models/spinenet/1/assets.extra/export_config.json

or `python -m official_spinenet.serving.serve_client ...`. Requests are built by
`client_lib` (pure functions, tested against the SavedModel); this module only does the
network calls and the files. gRPC needs the `tensorflow-serving-api` package.
"""
import json
import os
import sys
import urllib.error
import urllib.request

from absl import app
from absl import flags
from absl import logging

from official_spinenet.serving import client_lib

FLAGS = flags.FLAGS
_GRPC_MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # large photos in one batch


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines this binary's flags (at run(), not import, so imports never clash).

  Tests pass their own FlagValues, so these names never meet other binaries' flags.
  """
  fv = dict(flag_values=flag_values)
  flags.DEFINE_list('images', None, 'Image files, folders or globs (comma-separated).',
                    required=True, **fv)
  flags.DEFINE_enum('protocol', 'rest', ['rest', 'grpc'], 'How to reach TF Serving.', **fv)
  flags.DEFINE_string('server', 'localhost', 'TF Serving host.', **fv)
  flags.DEFINE_integer('rest_port', 8501, 'TF Serving --rest_api_port.', **fv)
  flags.DEFINE_integer('grpc_port', 8500, 'TF Serving --port (gRPC).', **fv)
  flags.DEFINE_string('model_name', 'spinenet', 'Model name in the server config.', **fv)
  flags.DEFINE_integer('model_version', None, 'Model version; default: the latest.', **fv)
  flags.DEFINE_enum('signature', 'image_bytes', ['image_bytes', 'image_tensor'],
                    'image_bytes sends the files (small, any sizes per batch); '
                    'image_tensor sends decoded pixels, one image per request.', **fv)
  flags.DEFINE_integer('batch_size', 8, 'Images per request (image_bytes).', lower_bound=1,
                       **fv)
  flags.DEFINE_boolean('columnar', False,
                       'REST: the columnar "inputs" format instead of "instances".', **fv)
  flags.DEFINE_float('timeout', 60.0, 'Seconds to wait for one reply.', **fv)
  flags.DEFINE_float('min_score', 0.3, 'Print and draw detections scoring at least this.',
                     **fv)
  flags.DEFINE_string('label_map', None, "Class names: the export's "
                      'assets.extra/export_config.json or a JSON {id: name} file.', **fv)
  flags.DEFINE_string('output_dir', None, 'If set, write one PNG per image with the '
                      'detections drawn (<image name>.png).', **fv)
  flags.DEFINE_string('output_json', None, 'If set, write all detections to this JSON file.',
                      **fv)


def predict_rest(images, url: str, signature: str, columnar: bool, timeout: float):
  """POSTs one REST predict request; returns per-image detections."""
  body = json.dumps(client_lib.rest_predict_payload(images, signature, columnar)).encode()
  request = urllib.request.Request(url, data=body,
                                   headers={'Content-Type': 'application/json'})
  try:
    with urllib.request.urlopen(request, timeout=timeout) as reply:
      return client_lib.parse_rest_response(json.load(reply))
  except urllib.error.HTTPError as e:  # TF Serving puts the reason in a JSON body
    raise RuntimeError(f'{url}: HTTP {e.code}: {e.read().decode(errors="replace")}') from e


def make_grpc_predict(target: str, model_name: str, signature: str, model_version,
                      timeout: float):
  """A function images -> detections over one gRPC channel to TF Serving."""
  import grpc  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import prediction_service_pb2_grpc  # pylint: disable=g-import-not-at-top
  channel = grpc.insecure_channel(target, options=[
      ('grpc.max_send_message_length', _GRPC_MAX_MESSAGE_BYTES),
      ('grpc.max_receive_message_length', _GRPC_MAX_MESSAGE_BYTES)])
  stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

  def predict(images):
    request = client_lib.grpc_predict_request(images, model_name, signature, model_version)
    return client_lib.parse_grpc_response(stub.Predict(request, timeout=timeout))
  return predict


def _write_drawing(output_path: str, encoded: bytes, detections, category_names) -> None:
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from official_spinenet.serving import drawing  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(encoded)) as image:
    drawn = drawing.draw_detections(image, detections.boxes, detections.scores,
                                    detections.classes, category_names)
  drawn.save(output_path)


def run_client(options) -> dict:
  """Sends the images, prints (and optionally draws / writes) the detections.

  Args:
    options: parsed flags (attributes named as in define_flags).

  Returns:
    ({image path: {'boxes_ymin_xmin_ymax_xmax', 'scores', 'classes'}} above min_score,
    [paths of images whose request failed]).
  """
  paths = client_lib.find_images(options.images)
  category_names = client_lib.load_category_names(options.label_map)
  if options.protocol == 'rest':
    url = client_lib.rest_predict_url(options.server, options.rest_port, options.model_name,
                                      options.model_version)
    predict = lambda images: predict_rest(images, url, options.signature, options.columnar,
                                          options.timeout)
  else:
    predict = make_grpc_predict(f'{options.server}:{options.grpc_port}', options.model_name,
                                options.signature, options.model_version, options.timeout)
  if options.output_dir:
    os.makedirs(options.output_dir, exist_ok=True)
    drawings = dict(zip(paths, client_lib.drawing_names(paths)))
  # image_tensor requests hold one image size, so they go one by one.
  batch_size = options.batch_size if options.signature == 'image_bytes' else 1
  results, failed = {}, []
  for batch_paths in client_lib.batches(paths, batch_size):
    encoded = []
    for path in batch_paths:
      with open(path, 'rb') as f:
        encoded.append(f.read())
    images = (encoded if options.signature == 'image_bytes'
              else [client_lib.decode_to_array(e) for e in encoded])
    logging.info('Sending %d image(s) starting with %s', len(images), batch_paths[0])
    try:
      replies = predict(images)
    except Exception as e:  # pylint: disable=broad-except
      # One refused batch (a corrupt file, a timeout) must not stop the others; the
      # server's InvalidArgument message names the problem.
      failed.extend(batch_paths)
      print(f'FAILED {", ".join(batch_paths)}: {e}')
      continue
    for path, data, detections in zip(batch_paths, encoded, replies):
      detections = detections.above(options.min_score)
      print(client_lib.format_detections(path, detections, category_names))
      results[path] = {'boxes_ymin_xmin_ymax_xmax': detections.boxes.tolist(),
                       'scores': detections.scores.tolist(),
                       'classes': detections.classes.tolist()}
      if options.output_dir:
        _write_drawing(os.path.join(options.output_dir, drawings[path]), data, detections,
                       category_names)
  if options.output_json:
    with open(options.output_json, 'w') as f:
      json.dump({'detections': results, 'failed': failed}, f, indent=1)
  return results, failed


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    _, failed = run_client(FLAGS)
  except ValueError as e:  # no images found, bad signature / batch options
    raise app.UsageError(str(e)) from e
  if failed:
    sys.exit(f'{len(failed)} image(s) failed: {", ".join(failed)}')


def run():
  """Console-script entry point (`spinenet-serve-client`)."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

r"""spinenet-serve-client: sends images to TF Serving (REST or gRPC); prints / draws detections.

  spinenet-serve-client --images=photos/,extra/*.jpg --protocol=rest \
      --server=localhost --model_name=spinenet --output_dir=/tmp/drawn \
      --label_map=/models/spinenet/1/assets.extra/export_config.json

The library behind it is `serving.client_runner.run_client` (requests built by
`serving.client_lib`). gRPC needs the `tensorflow-serving-api` package. The exit
status is 1 if any image failed.
"""

import dataclasses
import sys

from absl import app
from absl import flags

from official_spinenet.serving import client_runner
from official_spinenet.utils import flags as flag_groups

FLAGS = flags.FLAGS
_DEFAULTS = client_runner.ClientOptions(images=[])


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (ClientOptions' fields, with its defaults)."""
  fv = dict(flag_values=flag_values)
  d = _DEFAULTS
  flags.DEFINE_list(
    'images', None, 'Image files, folders or globs (comma-separated).', required=True, **fv
  )
  flags.DEFINE_enum(
    'protocol', d.protocol, client_runner.PROTOCOLS, 'How to reach TF Serving.', **fv
  )
  flags.DEFINE_string('server', d.server, 'TF Serving host.', **fv)
  flags.DEFINE_integer('rest_port', d.rest_port, 'TF Serving --rest_api_port.', **fv)
  flags.DEFINE_integer('grpc_port', d.grpc_port, 'TF Serving --port (gRPC).', **fv)
  flags.DEFINE_string('model_name', d.model_name, 'Model name in the server config.', **fv)
  flags.DEFINE_integer(
    'model_version', d.model_version, 'Model version; default: the latest.', **fv
  )
  flags.DEFINE_enum(
    'signature',
    d.signature,
    client_runner.SIGNATURES,
    'image_bytes sends the files (small, any sizes per batch); '
    'image_tensor sends decoded pixels, one image per request.',
    **fv,
  )
  flags.DEFINE_integer(
    'batch_size', d.batch_size, 'Images per request (image_bytes).', lower_bound=1, **fv
  )
  flags.DEFINE_boolean(
    'columnar', d.columnar, 'REST: the columnar "inputs" format instead of "instances".', **fv
  )
  flags.DEFINE_float('timeout', d.timeout, 'Seconds to wait for one reply.', **fv)
  flags.DEFINE_float(
    'min_score', d.min_score, 'Print and draw detections scoring at least this.', **fv
  )
  flags.DEFINE_string(
    'label_map',
    d.label_map,
    "Class names: the export's assets.extra/export_config.json or a JSON {id: name} file.",
    **fv,
  )
  flags.DEFINE_string(
    'output_dir',
    d.output_dir,
    'If set, write one PNG per image with the detections (and masks) drawn (<image name>.png).',
    **fv,
  )
  flags.DEFINE_string(
    'output_json', d.output_json, 'If set, write all detections to this JSON file.', **fv
  )


def options_from_flags(flag_values: flags.FlagValues) -> client_runner.ClientOptions:
  """The parsed flags as ClientOptions (the flags are named as its fields)."""
  return client_runner.ClientOptions(
    **{
      field.name: flag_values[field.name].value
      for field in dataclasses.fields(client_runner.ClientOptions)
    }
  )


def main(argv) -> None:
  """flags -> client_runner.run_client()."""
  flag_groups.no_positional_arguments(argv)
  with flag_groups.usage_errors((ValueError,)):  # no images found, bad label map or batch options
    _, failed = client_runner.run_client(options_from_flags(FLAGS))
  if failed:
    sys.exit(f'{len(failed)} image(s) failed: {", ".join(failed)}')


def run() -> None:
  """Console-script entry point (`spinenet-serve-client`)."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

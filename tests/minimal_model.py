"""The minimal SpineNet and pyramid: gin bindings that make a tiny config cheaper still.

MINIMAL_MODEL, added to testing/retinanet_tiny.gin, maskrcnn_tiny.gin or a
classification tiny config, builds SpineNet with one intermediate block and output
blocks P3-P5 (minimal_spinenet_blocks.json: residual and bottleneck blocks, resampling
up and down) and a P3-P5 pyramid. Building and tracing a model, most of an end-to-end
test's time, scales with its blocks, resampling connections and pyramid levels, not
with their width; tests about a workflow (training, resuming, exporting, serving,
strategies) rather than the topology use it. The tiny configs' own topology stays
covered by the tests that build them in process.
"""

import os
from typing import List

from tests import paths

MINIMAL_BLOCKS = os.path.join(paths.REPO, 'tests', 'minimal_spinenet_blocks.json')
MINIMAL_MODEL = [f"spinenet.block_specs = '{MINIMAL_BLOCKS}'", 'MAX_LEVEL = 5']


def shapes_params(shapes_data, *params: str) -> List[str]:
  """Bindings of a tiny config on the shapes data (`shapes_data` fixture), with the minimal
  model, then `params`."""
  from official_spinenet.workflows import demo  # pylint: disable=g-import-not-at-top

  return demo.shapes_data_params(shapes_data) + MINIMAL_MODEL + list(params)

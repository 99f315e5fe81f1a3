"""Peak resident memory of RetinaNet-SpineNet-49 at 640: ours against Model Garden's.

Every figure is the peak RSS (`ru_maxrss`) of a fresh subprocess that does one thing
(workflows/benchmark_child.py), so one side's memory never counts against the other:

  baseline   a process that only imported TensorFlow and ran one op.
  training   a few steps at 640, batch 2 (workflows/train_throughput.py: ours through
             the trainer's compiled loop, Model Garden's through its task's train_step).
  serving    the exported SavedModel (serving_benchmark.export_both) loaded and called
             on a batch of 640x480 JPEGs, one side at a time.
"""

from typing import Dict, Sequence

from official_spinenet.workflows import benchmark_child
from official_spinenet.workflows import serving_benchmark


def baseline_mb() -> float:
  """Peak RSS (MiB) of a process that imported TensorFlow and ran one op."""
  return benchmark_child.run('baseline')['peak_rss_mb']


def training_peak_mb(batch_size: int = 2, steps: int = 3, config: str = '640') -> Dict[str, float]:
  """side -> peak RSS (MiB) of a process training that side for `steps` steps.

  config: a train_throughput.CONFIGS name ('640': SpineNet-49 at 640; 'demo': small).
  """
  peaks = {}
  for side in serving_benchmark.SIDES:
    arguments = dict(side=side, batch_size=batch_size, steps=steps, config=config)
    peaks[side] = benchmark_child.run('train', **arguments)['peak_rss_mb']
  return peaks


def serving_peak_mb(
  export_dirs: Dict[str, str], image_files: Sequence[str], calls: int = 3
) -> Dict[str, float]:
  """side -> peak RSS (MiB) of a process serving that side's SavedModel, alone."""
  peaks = {}
  for side in serving_benchmark.SIDES:
    child = serving_benchmark.start_server(side, export_dirs[side], image_files, warmup=1)
    for _ in range(calls):
      child.request('call')
    peaks[side] = child.finish()['peak_rss_mb']
  return peaks

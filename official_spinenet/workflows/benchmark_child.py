"""What a benchmark's subprocess runs: one side per fresh process, so its memory is its own.

The serving and memory benchmarks (workflows/serving_benchmark.py, memory_benchmark.py)
start `python -c 'from official_spinenet.workflows import benchmark_child; ...main()'`
with one JSON argument {'job': ..., **arguments}. Replies are single JSON lines on
stdout marked with REPLY_MARK (libraries may print other lines). Jobs:

  'baseline'  import TensorFlow and run one op: the floor every figure stands on.
  'serve'     load a SavedModel, warm up a signature on a batch of encoded images, then
              serve requests read from stdin: 'call' -> {'seconds'} of one call,
              'outputs' -> the last call's outputs as lists, 'quit' -> {'peak_rss_mb'}.
              The parent alternates 'call' between two such children (interleaved
              timing, each side in its own process).
  'train'     train RetinaNet-SpineNet-49 at 640 for a few steps (ours or Model
              Garden's, workflows/train_throughput.py; config 'demo': the demo's small
              model) -> {'peak_rss_mb', 'seconds'}.

This module imports only the standard library at the top; each job imports what it
needs, so a child's peak resident memory counts nothing the job does not load.
"""

import json
import resource
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

REPLY_MARK = '@@benchmark '


def peak_rss_mb() -> float:
  """This process's peak resident memory in MiB.

  Linux's VmHWM (/proc/self/status) when there is one: it starts afresh at exec. The
  rusage figure does not: a child started from a parent holding gigabytes reports the
  parent's peak if it never exceeds it.
  """
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) / 1024.0  # kB
  except OSError:
    pass
  # ru_maxrss is in KiB on Linux (bytes on macOS, which has no /proc).
  scale = 1024.0 if sys.platform != 'darwin' else 1024.0**2
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def reply(message: Dict[str, Any]) -> None:
  """One reply line for the parent."""
  print(REPLY_MARK + json.dumps(message), flush=True)


def baseline() -> None:
  """Imports TensorFlow and runs one small op: the memory every child starts from."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  tf.linalg.matmul(tf.ones([64, 64]), tf.ones([64, 64])).numpy()
  reply({'peak_rss_mb': peak_rss_mb()})


def serve(export_dir: str, signature: str, input_name: str, image_files: List[str], warmup: int):
  """Serves `signature` of the SavedModel on the images (one batch) as stdin asks."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from official_spinenet.serving import client_lib  # pylint: disable=g-import-not-at-top

  function = tf.saved_model.load(export_dir).signatures[signature]
  batch = {input_name: tf.constant(client_lib.read_files(image_files))}
  outputs = None
  for _ in range(warmup):
    outputs = {k: v.numpy() for k, v in function(**batch).items()}
  reply({'ready': True, 'peak_rss_mb': peak_rss_mb()})
  for line in sys.stdin:
    command = line.strip()
    if command == 'call':
      start = time.perf_counter()
      # .numpy() waits for every output before the clock stops.
      outputs = {k: v.numpy() for k, v in function(**batch).items()}
      reply({'seconds': time.perf_counter() - start})
    elif command == 'outputs':
      reply({k: v.tolist() for k, v in (outputs or {}).items()})
    elif command == 'quit':
      break
    else:
      raise ValueError(f'Unknown command {command!r}.')
  reply({'peak_rss_mb': peak_rss_mb()})


def train(side: str, batch_size: int, steps: int, config: str = '640') -> None:
  """A traced step, then `steps` steps of one side (workflows/train_throughput.py)."""
  from official_spinenet.workflows import train_throughput  # pylint: disable=g-import-not-at-top

  settings = train_throughput.CONFIGS[config]
  if side == 'model_garden' and settings.demo_width:
    # Model Garden's demo-width model reads our widths from the parsed gin config.
    from official_spinenet import configurables  # pylint: disable=g-import-not-at-top

    configurables.parse_gin([settings.gin_file], list(settings.gin_params))
  batch = train_throughput.one_batch(batch_size, settings)
  builders = {'ours': train_throughput.our_loop, 'model_garden': train_throughput.model_garden_loop}
  loop, _ = builders[side](batch, steps, settings)
  loop()  # traces
  start = time.perf_counter()
  float(loop())
  reply({'peak_rss_mb': peak_rss_mb(), 'seconds': time.perf_counter() - start})


JOBS = {'baseline': baseline, 'serve': serve, 'train': train}


def main() -> None:
  """Runs the job named in the JSON argument."""
  arguments = json.loads(sys.argv[1])
  JOBS[arguments.pop('job')](**arguments)


class Child:
  """A running benchmark subprocess (the parent's end of the protocol above)."""

  def __init__(self, job: str, **arguments):
    code = 'from official_spinenet.workflows import benchmark_child as c; c.main()'
    self._process = subprocess.Popen(
      [sys.executable, '-c', code, json.dumps({'job': job, **arguments})],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      text=True,
    )

  def read_reply(self) -> Dict[str, Any]:
    """The next reply line; RuntimeError if the child ends without one."""
    for line in self._process.stdout:
      if line.startswith(REPLY_MARK):
        return json.loads(line[len(REPLY_MARK) :])
    code = self._process.wait()
    raise RuntimeError(f'Benchmark child ended (exit code {code}) without replying.')

  def request(self, command: str) -> Dict[str, Any]:
    """Sends one stdin command ('call', 'outputs') and returns the reply."""
    self._process.stdin.write(command + '\n')
    self._process.stdin.flush()
    return self.read_reply()

  def finish(self, command: Optional[str] = 'quit') -> Dict[str, Any]:
    """Sends `command` (None: nothing), returns the last reply, waits for the exit."""
    last = self.request(command) if command else self.read_reply()
    self._process.stdin.close()
    if self._process.wait() != 0:
      raise RuntimeError(f'Benchmark child failed with exit code {self._process.returncode}.')
    return last


def run(job: str, **arguments) -> Dict[str, Any]:
  """Runs a job that needs no requests ('baseline', 'train') and returns its reply."""
  return Child(job, **arguments).finish(None)

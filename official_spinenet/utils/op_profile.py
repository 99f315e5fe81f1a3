"""Where a TensorFlow call spends its time, by op kind (for the benchmark tools).

`op_seconds(fn)` runs `fn` under the TensorFlow profiler and sums the duration of
every op the executor ran, by op kind. The profiler records one event per op on the
executor's threads, named '<node name>:<op type>'; oneDNN's kernels carry their own
type names ('_MklNativeFusedConv2D', '_MklNativeConv2DBackpropFilterWithBias', ...),
so `op_kind` folds a type into what it computes: 'convolution' (forward and both
backward passes, fused or not, depthwise too), else the type without oneDNN's
'_Mkl' / '_MklNative' prefix ('FusedBatchNormGradV3').

The sums are op time, not wall time: ops on different inter-op threads overlap, and
an op's own intra-op threads are counted once. Shares of that sum say where the work
is, which is what an upper bound on a speed-up needs (Amdahl).
"""

import collections
import glob
import os
import re
import tempfile
from typing import Any, Callable, Dict

import tensorflow as tf
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from official_spinenet.utils import timing

CONVOLUTION = 'convolution'
_CONVOLUTION_TYPE = re.compile(r'Conv2D|Conv3D|DepthwiseConv')
_KERNEL_PREFIX = re.compile(r'^_(Mkl)?(Native)?')
# The executor's own bookkeeping events on the same threads, not ops.
_NOT_OPS = ('ExecutorState::Process', 'ExecutorDoneCallback')


def op_kind(op_type: str) -> str:
  """'convolution' for any convolution kernel, else the op type without a kernel prefix."""
  if _CONVOLUTION_TYPE.search(op_type):
    return CONVOLUTION
  return _KERNEL_PREFIX.sub('', op_type) or op_type


def _read_xspace(log_dir: str) -> xplane_pb2.XSpace:
  paths = sorted(glob.glob(os.path.join(log_dir, 'plugins', 'profile', '*', '*.xplane.pb')))
  if not paths:
    raise RuntimeError(f'The profiler wrote no trace under {log_dir}.')
  space = xplane_pb2.XSpace()
  with open(paths[-1], 'rb') as f:
    space.ParseFromString(f.read())
  return space


def op_seconds_in(space: xplane_pb2.XSpace) -> Dict[str, float]:
  """Seconds of op time by op kind in a profile (the host's executor threads)."""
  totals = collections.Counter()
  for plane in space.planes:
    for line in plane.lines:
      if not line.name.startswith('tf_Compute'):
        continue
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        if ':' not in name or name.startswith(_NOT_OPS):
          continue
        totals[op_kind(name.rsplit(':', 1)[1])] += event.duration_ps * 1e-12
  return dict(totals)


def op_seconds(fn: Callable[[], Any]) -> Dict[str, float]:
  """Calls `fn` once under the profiler; seconds of op time by op kind.

  Call `fn` once before (its first call's tracing and graph optimisation would
  be profiled too); its results are waited for.
  """
  with tempfile.TemporaryDirectory() as log_dir:
    tf.profiler.experimental.start(log_dir)
    try:
      timing.block_until_ready(fn())
    finally:
      tf.profiler.experimental.stop()
    totals = op_seconds_in(_read_xspace(log_dir))
  if not totals:
    raise RuntimeError('The profile holds no op: did the call run a graph on the CPU?')
  return totals

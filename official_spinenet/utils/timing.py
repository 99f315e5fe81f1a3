"""Timing loops for the benchmark tools (never used in unit tests)."""

import statistics
import time
from typing import Any, Callable, Dict, List, Mapping, Tuple

import tensorflow as tf


def block_until_ready(outputs: Any) -> None:
  """Waits for eager results: reading every tensor forces the computation."""
  for value in tf.nest.flatten(outputs):
    if hasattr(value, 'numpy'):
      value.numpy()


def time_calls(fn: Callable[[], Any], runs: int, warmup: int = 1) -> Tuple[List[float], Any]:
  """Calls `fn` `warmup` times untimed (tracing), then `runs` times timed.

  Each call's outputs are waited for before the clock stops.

  Returns:
    (seconds of each timed call, the outputs of the last call).
  """
  if runs < 1:
    raise ValueError(f'runs must be >= 1, got {runs}.')
  outputs = None
  for _ in range(warmup):
    outputs = fn()
    block_until_ready(outputs)
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    outputs = fn()
    block_until_ready(outputs)
    times.append(time.perf_counter() - start)
  return times, outputs


def median_seconds(fn: Callable[[], Any], runs: int, warmup: int = 1) -> float:
  """The median wall time of `runs` calls of `fn` after `warmup` untimed calls."""
  return statistics.median(time_calls(fn, runs, warmup)[0])


def interleaved_medians(
  calls: Mapping[str, Callable[[], Any]], runs: Mapping[str, int]
) -> Tuple[Dict[str, float], Dict[str, Any]]:
  """Calls each once untimed, then in rounds each in turn until it has had its runs.

  Interleaving makes a busy machine slow every call alike, so their ratios hold.
  Each call's outputs are waited for before the clock stops.

  Returns:
    (name -> median seconds, name -> outputs of its last call).
  """
  times: Dict[str, List[float]] = {name: [] for name in calls}
  results = {}
  for name, call in calls.items():
    results[name] = call()
    block_until_ready(results[name])
  for round_index in range(max(runs.values())):
    for name, call in calls.items():
      if round_index < runs[name]:
        start = time.perf_counter()
        results[name] = call()
        block_until_ready(results[name])
        times[name].append(time.perf_counter() - start)
  return {name: float(statistics.median(t)) for name, t in times.items()}, results


def matmul_gflops(size: int = 2048, runs: int = 5) -> float:
  """This machine's float32 matmul throughput, to print beside absolute times."""
  a = tf.random.normal([size, size])
  b = tf.random.normal([size, size])
  seconds = median_seconds(lambda: tf.linalg.matmul(a, b), runs, warmup=2)
  return 2.0 * size**3 / seconds / 1e9

"""SIGTERM (a preempted VM or TPU host) -> a checkpoint at the next step boundary, then exit.

A Python signal handler runs only when the main thread is back in the
interpreter, which a compiled loop of `steps_per_loop` steps may not be for
minutes (a cloud VM gets about 30 s of notice). So the C-level handler's wakeup
byte (`signal.set_wakeup_fd`) wakes a watcher thread at once, and that thread
sets a tf.Variable the compiled loop reads before every step: the loop returns
after the step in flight, the trainer saves and raises `PreemptedError`.

Under MultiWorkerMirroredStrategy a worker that stopped on its own flag would
leave the others waiting in the next all-reduce, so the flag travels with the
gradients: each step's all-reduce carries every worker's stop vote, all workers
see the same sum, stop after that same step, save together and exit. A SIGTERM
to one worker therefore costs at most one more step. (TensorFlow's
PreemptionCheckpointHandler agrees on a step through the coordination service
instead; its watcher threads block in that service and can hang a worker's exit
once the chief is gone.)
"""

import contextlib
import signal
import socket
import threading
from typing import Iterator

from absl import logging
import tensorflow as tf

# The exit status of a preempted run: TensorFlow's PreemptionCheckpointHandler's
# restart code off Google Cloud, and not 0, so a job scheduler restarts (resumes) it.
PREEMPTED_EXIT_CODE = 42


class PreemptedError(Exception):
  """Training stopped on SIGTERM after saving a checkpoint; run again to resume."""

  def __init__(self, step: int, checkpoint: str):
    super().__init__(
      f'Preempted (SIGTERM): saved {checkpoint} at step {step}; run the same command again '
      'to resume from it.'
    )
    self.step = step
    self.checkpoint = checkpoint


class StopRequest:
  """A flag set on SIGTERM, readable by compiled loops (`variable`) and on the host."""

  def __init__(self):
    # Outside any strategy scope: a plain host variable, read in the loop's
    # cross-replica context.
    self.variable = tf.Variable(False, trainable=False, name='stop_requested')
    self._event = threading.Event()

  @property
  def requested(self) -> bool:
    return self._event.is_set()

  def request(self) -> None:
    if not self._event.is_set():
      logging.warning('SIGTERM received: saving a checkpoint after the current step.')
    self._event.set()
    self.variable.assign(True)

  def _watch(self, reader: socket.socket) -> None:
    while True:
      try:
        data = reader.recv(64)
      except OSError:
        return
      if not data:  # closed by watch()'s exit
        return
      if signal.SIGTERM in data:
        self.request()

  @contextlib.contextmanager
  def watch(self) -> Iterator[None]:
    """Turns SIGTERM into request() while inside (main thread only; else a no-op)."""
    if threading.current_thread() is not threading.main_thread():
      yield
      return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    old_handler = signal.signal(signal.SIGTERM, lambda signum, frame: self.request())
    old_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    watcher = threading.Thread(target=self._watch, args=(reader,), daemon=True)
    watcher.start()
    try:
      yield
    finally:
      signal.set_wakeup_fd(old_fd)
      signal.signal(signal.SIGTERM, old_handler)
      writer.close()
      watcher.join(timeout=5)
      reader.close()

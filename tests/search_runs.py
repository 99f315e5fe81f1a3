"""Running `spinenet-search` in its own process session, and finding what Ray left behind.

`start_search` runs `python -m official_spinenet.binaries.search` in a new session:
Ray's helper processes (gcs_server, raylet, agents, workers) stay in that session
(the workers in process groups of their own, so killing the driver's group is not
enough), `kill_session` SIGKILLs all of them and `session_processes` shows whether
any survived.
"""

import os
import subprocess
import sys
import time
from typing import List, Mapping, Optional, Sequence

import psutil

from tests import paths


def start_search(
  output_dir: str,
  gin_params: Sequence[str] = (),
  gin_file: str = 'testing/search_synthetic.gin',
  env: Optional[Mapping[str, str]] = None,
) -> subprocess.Popen:
  """Starts spinenet-search in a new session; stdout/stderr go to <output_dir>.log."""
  environment = dict(os.environ)
  environment.update({'TF_CPP_MIN_LOG_LEVEL': '2', 'RAY_USAGE_STATS_ENABLED': '0', **(env or {})})
  log = open(f'{output_dir}.log', 'ab')  # pylint: disable=consider-using-with
  try:
    return subprocess.Popen(
      [
        sys.executable,
        '-m',
        'official_spinenet.binaries.search',
        f'--gin_file={gin_file}',
        f'--output_dir={output_dir}',
        *[f'--gin_param={p}' for p in gin_params],
      ],
      stdout=log,
      stderr=subprocess.STDOUT,
      cwd=paths.REPO,
      env=environment,
      start_new_session=True,
    )
  finally:
    log.close()


def session_processes(session_id: int) -> List[psutil.Process]:
  """Live processes of the session (or process group) `session_id`."""
  found = []
  for process in psutil.process_iter(['pid', 'status']):
    try:
      if process.info['status'] == psutil.STATUS_ZOMBIE:
        continue
      pid = process.info['pid']
      if os.getsid(pid) == session_id or os.getpgid(pid) == session_id:
        found.append(process)
    except (ProcessLookupError, PermissionError, psutil.Error):
      continue
  return found


def kill_session(session_id: int, timeout: float = 20) -> List[str]:
  """SIGKILLs every process of the session; returns the command lines that outlived it."""
  for process in session_processes(session_id):
    try:
      process.kill()
    except psutil.Error:
      pass
  deadline = time.monotonic() + timeout
  left = session_processes(session_id)
  while left and time.monotonic() < deadline:
    time.sleep(0.2)
    left = session_processes(session_id)
  return [' '.join(p.cmdline()[:3]) for p in left if p.is_running()]


def wait_for(process: subprocess.Popen, timeout: float) -> int:
  """The process's exit status; kills its session if it outlives `timeout`."""
  try:
    return process.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    kill_session(process.pid)
    process.wait()
    raise


def read_log(output_dir: str) -> str:
  with open(f'{output_dir}.log', encoding='utf-8', errors='replace') as f:
    return f.read()

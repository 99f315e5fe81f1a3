"""Running the package's commands as a user does, for the smoke tests of each binary."""

import os
import subprocess
import sys
from typing import Mapping, Optional


def run_binary(
  name: str,
  *flags: str,
  timeout: float = 300,
  cwd: Optional[str] = None,
  env: Optional[Mapping[str, str]] = None,
) -> subprocess.CompletedProcess:
  """`python -m official_spinenet.binaries.<name> <flags>`; output captured as text.

  The installed package must be found by itself (PYTHONPATH is dropped); `env`
  adds variables. The caller checks `returncode` (and puts stderr in its message).
  """
  environment = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  environment.update({'TF_CPP_MIN_LOG_LEVEL': '2', **(env or {})})
  return subprocess.run(
    [sys.executable, '-m', f'official_spinenet.binaries.{name}', *flags],
    capture_output=True,
    text=True,
    timeout=timeout,
    cwd=cwd,
    env=environment,
    check=False,
  )

"""Where the gin configs are: the copy shipped in the package, else the source checkout's.

`gin_configs/` sits at the top of the repository (the layout users expect) and
setup.py ships it inside the distribution as `official_spinenet/gin_configs`. An
installed copy (a wheel, `pip install .`) finds it there through
`importlib.resources`; an editable install or a source checkout finds the
top-level folder beside the package. Either way a user names a config relative to
that folder: `--gin_file=retinanet/spinenet49_640.gin`.

No TensorFlow or gin import here: resolving a path stays instant.
"""

import importlib.resources
import os
from typing import List, Optional

_PACKAGE = 'official_spinenet'
_FOLDER = 'gin_configs'


def _candidates() -> List[str]:
  packaged = importlib.resources.files(_PACKAGE) / _FOLDER
  package_dir = os.path.dirname(os.path.abspath(__file__))
  return [str(packaged), os.path.join(os.path.dirname(package_dir), _FOLDER)]


def gin_configs_dir() -> str:
  """The folder holding the gin configs (packaged copy first).

  Raises:
    FileNotFoundError: neither the packaged copy nor a source checkout's folder
      exists (a broken install).
  """
  for candidate in _candidates():
    if os.path.isdir(candidate):
      return candidate
  raise FileNotFoundError(
    f'No gin_configs folder found (looked in {_candidates()}); the '
    'installation is incomplete: reinstall official_spinenet.'
  )


def list_gin_files() -> List[str]:
  """Every config, relative to gin_configs_dir() ('retinanet/spinenet49_640.gin', ...)."""
  root = gin_configs_dir()
  found = []
  for folder, _, files in os.walk(root):
    found += [os.path.relpath(os.path.join(folder, f), root) for f in files if f.endswith('.gin')]
  return sorted(p.replace(os.sep, '/') for p in found)


def resolve_gin_file(path: str, flag: Optional[str] = '--gin_file') -> str:
  """A gin file as given (if it exists), else relative to gin_configs_dir().

  Raises:
    ValueError: neither exists; the message names the flag, the folder searched
      and the configs of the same folder, so a typo is easy to spot.
  """
  if os.path.isfile(path):
    return path
  root = gin_configs_dir()
  candidate = os.path.join(root, path)
  if os.path.isfile(candidate):
    return candidate
  folder = os.path.dirname(path.replace(os.sep, '/'))
  nearby = [f for f in list_gin_files() if os.path.dirname(f) == folder] or list_gin_files()
  raise ValueError(
    f'{flag} {path!r} does not exist, neither as a path nor in the packaged '
    f'configs ({root}); they include {nearby[:12]}.'
  )

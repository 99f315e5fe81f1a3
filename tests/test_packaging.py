"""The distribution ships every gin config, and an installed (non-editable) copy finds them.

Builds a wheel from a copy of the sources (the checkout is left untouched), checks
that it holds every `.gin` file of gin_configs/ and a module for every console
script, installs it into a scratch folder and, from a folder outside the checkout,
resolves and parses a config through the installed package.
"""

import configparser
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from official_spinenet import config_files
from tests import paths

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
  source = tmp_path_factory.mktemp('source')
  for name in ('setup.py', 'README.md'):
    shutil.copy(os.path.join(paths.REPO, name), source)
  for folder in ('official_spinenet', 'gin_configs'):
    shutil.copytree(
      os.path.join(paths.REPO, folder),
      source / folder,
      ignore=shutil.ignore_patterns('__pycache__', '*.egg-info'),
    )
  out = tmp_path_factory.mktemp('wheel')
  subprocess.run(
    [
      sys.executable,
      '-m',
      'pip',
      'wheel',
      '--no-deps',
      '--no-build-isolation',
      '-q',
      '-w',
      str(out),
      str(source),
    ],
    check=True,
    capture_output=True,
    timeout=300,
  )
  (built,) = list(out.glob('official_spinenet-*.whl'))
  return built


def test_wheel_holds_every_gin_file(wheel):
  root = os.path.join(paths.REPO, 'gin_configs')
  expected = set()
  for folder, _, files in os.walk(root):
    expected |= {
      os.path.relpath(os.path.join(folder, f), root).replace(os.sep, '/')
      for f in files
      if f.endswith('.gin')
    }
  with zipfile.ZipFile(wheel) as archive:
    prefix = 'official_spinenet/gin_configs/'
    shipped = {n[len(prefix) :] for n in archive.namelist() if n.startswith(prefix)}
  assert len(expected) > 10
  assert expected <= shipped, sorted(expected - shipped)


def test_wheel_has_a_module_for_every_console_script(wheel):
  with zipfile.ZipFile(wheel) as archive:
    names = set(archive.namelist())
    entry_points_file = next(n for n in names if n.endswith('.dist-info/entry_points.txt'))
    parser = configparser.ConfigParser()
    parser.read_string(archive.read(entry_points_file).decode())
  scripts = dict(parser['console_scripts'])
  assert {'spinenet-train', 'spinenet-demo', 'spinenet-export', 'spinenet-predict'} <= set(scripts)
  for name, target in scripts.items():
    module, function = target.split(':')
    assert function == 'run', name
    assert module.replace('.', '/') + '.py' in names, (name, module)


def test_installed_copy_resolves_and_parses_configs(wheel, tmp_path):
  site = tmp_path / 'site'
  subprocess.run(
    [sys.executable, '-m', 'pip', 'install', '--no-deps', '-q', '--target', str(site), str(wheel)],
    check=True,
    capture_output=True,
    timeout=300,
  )
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  script = (
    'import official_spinenet, json\n'
    'from official_spinenet import config_files, configurables\n'
    "path = config_files.resolve_gin_file('retinanet/spinenet49_640.gin')\n"
    "configurables.parse_gin(['demo/retinanet_spinenet_shapes.gin'], [])\n"
    "print(json.dumps([official_spinenet.__file__, config_files.gin_configs_dir(), path]))\n"
  )
  env = dict(os.environ, PYTHONPATH=str(site), TF_CPP_MIN_LOG_LEVEL='2')
  result = subprocess.run(
    [sys.executable, '-c', script],
    cwd=elsewhere,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  package_file, configs_dir, resolved = json.loads(result.stdout.splitlines()[-1])
  for path in (package_file, configs_dir, resolved):
    assert path.startswith(str(site)), path
  assert os.path.isfile(resolved)


def test_source_checkout_resolves_to_the_top_level_folder():
  assert os.path.samefile(config_files.gin_configs_dir(), os.path.join(paths.REPO, 'gin_configs'))
  assert 'retinanet/spinenet49_640.gin' in config_files.list_gin_files()


def test_unknown_config_names_the_flag_and_nearby_configs():
  with pytest.raises(
    ValueError,
    match=r"--gin_file 'retinanet/spinenet50_640.gin' does not "
    r"exist.*retinanet/spinenet49_640.gin",
  ):
    config_files.resolve_gin_file('retinanet/spinenet50_640.gin')

"""The layout rules of the package, checked on its source (no imports, no TensorFlow).

- Binaries are thin: every module in official_spinenet/binaries/ and tools/ has
  `define_flags`, `main(argv)` and `run()` and stays under 100 lines besides its
  module docstring (the usage examples).
- Nothing imports a binary; imports run one way (utils and layers at the bottom).
- Gin stays at the edge: only configurables and binaries import gin.
- tf-models-official is imported in one place (model_garden.py), never at a
  module's top level elsewhere, and never its SpineNet / NAS-FPN.
- No function is longer than 80 lines, its docstring not counted (Keras
  constructors document 15-20 arguments; the code is what must stay short).
"""

import ast
import os

import pytest

from tests import paths

PACKAGE = os.path.join(paths.REPO, 'official_spinenet')
MAX_FUNCTION_LINES = 80
MAX_BINARY_LINES = 100
# Which package areas may import which (by first path component below the package).
GIN_USERS = ('configurables.py', 'binaries')
# A lower layer never imports a higher one.
LAYERS = [
  'utils',
  'model_garden.py',
  'ops',
  'modeling',
  'data',
  'evaluation',
  'tasks',
  'training',
  'search',
  'configurables.py',
  'serving',
  'workflows',
  'binaries',
]
# Areas that sit beside the layers: they may be imported by the layers above them.
SIDE = {'config_files.py': 0, 'visualize': 3, 'checkpoint_conversion.py': 3}


def _python_files(root):
  for folder, _, files in os.walk(root):
    if '__pycache__' in folder:
      continue
    for name in sorted(files):
      if name.endswith('.py'):
        yield os.path.join(folder, name)


def _tree(path):
  with open(path) as f:
    return ast.parse(f.read(), filename=path)


def _docstring_lines(node):
  """Lines taken by the docstring of a module or function (0 without one)."""
  first = node.body[0] if node.body else None
  if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
    return first.end_lineno - first.lineno + 1
  return 0


def _area(path):
  return os.path.relpath(path, PACKAGE).split(os.sep)[0]


def _imported_modules(tree):
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      yield node.module
      yield from (f'{node.module}.{alias.name}' for alias in node.names)


def _rank(area):
  if area in SIDE:
    return SIDE[area]
  return LAYERS.index(area) if area in LAYERS else None


PACKAGE_FILES = list(_python_files(PACKAGE))
BINARY_FILES = [
  p for p in PACKAGE_FILES if _area(p) == 'binaries' and not p.endswith('__init__.py')
] + list(_python_files(os.path.join(paths.REPO, 'tools')))


def test_there_are_binaries_and_tools():
  names = {os.path.basename(p) for p in BINARY_FILES}
  assert {'train.py', 'demo.py', 'export.py', 'predict.py', 'measure_demo.py'} <= names


@pytest.mark.parametrize('path', BINARY_FILES, ids=os.path.basename)
def test_binaries_are_thin_and_share_one_pattern(path):
  tree = _tree(path)
  functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
  assert {'define_flags', 'main', 'run'} <= set(functions), path
  assert [a.arg for a in functions['main'].args.args] == ['argv'], path
  assert not functions['run'].args.args, path
  with open(path) as f:
    length = len(f.read().splitlines())
  length -= _docstring_lines(tree)
  assert length < MAX_BINARY_LINES, (path, length)


def test_nothing_imports_a_binary_and_layers_point_down():
  problems = []
  for path in PACKAGE_FILES:
    here = _rank(_area(path))
    for module in _imported_modules(_tree(path)):
      if not module.startswith('official_spinenet.'):
        continue
      target = module.split('.')[1]
      target = target + '.py' if os.path.isfile(os.path.join(PACKAGE, target + '.py')) else target
      if target == 'binaries' and _area(path) != 'binaries':
        problems.append(f'{path} imports the binary {module}')
      there = _rank(target)
      if here is not None and there is not None and there > here:
        problems.append(f'{path} ({_area(path)}) imports {module} from a higher layer')
  assert not problems, '\n'.join(problems)


def test_gin_only_at_the_edge():
  users = [p for p in PACKAGE_FILES if 'gin' in set(_imported_modules(_tree(p)))]
  assert users, 'configurables must import gin'
  for path in users:
    assert _area(path) in GIN_USERS, path


def test_model_garden_is_imported_in_one_place():
  for path in PACKAGE_FILES:
    tree = _tree(path)
    for module in _imported_modules(tree):
      assert not module.startswith('official.'), f'{path} imports {module}'
    assert 'official.vision.modeling.backbones.spinenet' not in ast.dump(tree) or (
      path.endswith('model_garden.py')
    ), path


@pytest.mark.parametrize('root', ['official_spinenet', 'tools'])
def test_no_function_over_80_lines(root):
  long = []
  for path in _python_files(os.path.join(paths.REPO, root)):
    for node in ast.walk(_tree(path)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        length = node.end_lineno - node.lineno + 1 - _docstring_lines(node)
        if length > MAX_FUNCTION_LINES:
          long.append(
            f'{os.path.relpath(path, paths.REPO)}:{node.lineno} {node.name} ({length} lines)'
          )
  assert not long, '\n'.join(long)


def test_tests_do_not_edit_sys_path():
  for path in _python_files(os.path.join(paths.REPO, 'tests')):
    with open(path) as f:
      source = f.read()
    assert 'sys.path.insert' not in source or path.endswith('test_code_structure.py'), path

"""A found architecture against the published one of its family, trained in full (issue 12).

  options = found_architecture.FoundOptions(
      found_specs='/tmp/compare/ppo/seed0/best/1.json', output_dir='/tmp/found')
  study = found_architecture.run_study(options)
  study['rows'][0]['AP'], study['rows'][0]['latency_ms']

A search ranks architectures by a short proxy; what counts is how the best one does when
trained in full. As SpineNet does (Table 1-2: its searched models against ResNet-FPN at
the same width and at similar FLOPs), `run_study` trains on one shapes dataset, with the
protocol of the family's `Baseline` (`BASELINES`, keyed by the space's builder):

- 'found': the found specs (a search's best/<k>.json), on the protocol's width;
- the baseline at the same width: SpineNet-49 for a SpineNet space (the demo protocol,
  `demo/retinanet_spinenet_shapes.gin`, 2000 steps at 128 px), the paper's merging cells
  for the NAS-FPN space (its search proxy trained as long, 2000 steps);
- '<baseline>_equal_madds' (SpineNet only: its width is a continuous scale): SpineNet-49
  with the filter_size_scale whose model has the found one's multiply-adds
  (`matching_scale`; widths round to whole channels, so they match to about a percent),
  left out when the two already match within `madds_tolerance`.

Training goes through `proxy_fidelity`'s jobs (a fresh process each, `workers` at a time,
resumed when run again). Then each trained model is measured in this process, one after
the other: held-out AP / AP50, params and multiply-adds at the protocol's size, median
CPU latency at batch 1 (`search_trial.measure_model`). The found architecture and the
baseline are drawn side by side (<output_dir>/drawings).
"""

import dataclasses
import functools
import math
import os
import shutil
from typing import Any, Callable, Dict, List, Sequence, Tuple

from absl import logging

from official_spinenet import configurables
from official_spinenet.modeling import model_stats
from official_spinenet.search import proxy_config
from official_spinenet.search import spaces
from official_spinenet.utils import files
from official_spinenet.utils import tables
from official_spinenet.visualize import architecture as drawing
from official_spinenet.workflows import demo
from official_spinenet.workflows import loading
from official_spinenet.workflows import proxy_fidelity
from official_spinenet.workflows import search_trial

FOUND = 'found'
STUDY_FILE = 'found.json'


@dataclasses.dataclass(frozen=True)
class Baseline:
  """The published architecture a found one is measured against, and its training.

  Attributes:
    point: its key in `spaces.PUBLISHED_POINTS` (also its job's name).
    title: its name in drawings.
    gin_files / gin_params: the training protocol, unless FoundOptions names one.
    width_param: the binding that sets the width (reported for every model).
    scalable: whether width_param is a continuous scale (equal multiply-adds possible).
  """

  point: str
  title: str
  gin_files: Tuple[str, ...]
  gin_params: Tuple[str, ...]
  width_param: str
  scalable: bool

  @property
  def equal_madds_name(self) -> str:
    return f'{self.point}_equal_madds'


BASELINES = {
  'spinenet': Baseline(
    'spinenet49',
    'SpineNet-49',
    proxy_fidelity.FULL_GIN_FILES,
    (),
    'spinenet.filter_size_scale',
    True,
  ),
  # NAS-FPN has no demo training of its own; its search proxy (a half-width ResNet-10)
  # trained for the SpineNet demo's 2000 steps is the full protocol here.
  'nasfpn': Baseline(
    'nasfpn',
    'NAS-FPN (paper)',
    ('search/proxy_nasfpn_shapes.gin',),
    ('TRAIN_STEPS = 2000',),
    'nasfpn.num_filters',
    False,
  ),
}


@dataclasses.dataclass(frozen=True)
class FoundOptions:
  """What `run_study` trains and measures (the tool's flags).

  Attributes:
    found_specs: the found architecture's spec file (a search's best/<k>.json).
    output_dir: data, architectures, one folder per job, drawings, found.json / .md.
    found_space: the search space the specs belong to (its builder picks the baseline).
    gin_files: the training protocol; empty: the baseline's (its files and bindings).
    gin_params: bindings for every job, before the data and architecture ones.
    equal_madds: also train the baseline scaled to the found one's multiply-adds
      (where its width is a scale: SpineNet).
    madds_tolerance: relative multiply-add gap under which no scaled model is trained.
    workers: jobs at a time; threads_per_job: TF threads each (0: CPUs / workers).
    latency_image_size: square size of the latency runs (0: the protocol's size).
    latency_runs: timed forward passes per model (median).
    num_train_images / num_val_images: the shapes dataset (the demo's sizes).
  """

  found_specs: str
  output_dir: str = '/tmp/found_architecture'
  found_space: str = 'spinenet'
  gin_files: Tuple[str, ...] = ()
  gin_params: Tuple[str, ...] = ()
  equal_madds: bool = True
  madds_tolerance: float = 0.02
  workers: int = 2
  threads_per_job: int = 0
  latency_image_size: int = 0
  latency_runs: int = 20
  num_train_images: int = demo.DEMO_NUM_IMAGES['retinanet'][0]
  num_val_images: int = demo.DEMO_NUM_IMAGES['retinanet'][1]

  def __post_init__(self):
    for name in ('gin_files', 'gin_params'):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    builder = spaces.build_space(self.found_space).builder
    if builder not in BASELINES:
      raise ValueError(
        f'found_space {self.found_space!r} builds {builder!r}: no published baseline to '
        + f'compare with; spaces of {sorted(BASELINES)} have one.'
      )
    for name in ('workers', 'latency_runs', 'num_train_images', 'num_val_images'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}.')
    if self.threads_per_job < 0 or self.latency_image_size < 0:
      raise ValueError('threads_per_job and latency_image_size must be >= 0.')
    if not 0 < self.madds_tolerance < 1:
      raise ValueError(f'madds_tolerance must be in (0, 1), got {self.madds_tolerance}.')

  @property
  def baseline(self) -> Baseline:
    return BASELINES[spaces.build_space(self.found_space).builder]

  @property
  def protocol(self) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """(gin files, bindings) of every job, before the data and architecture bindings."""
    if self.gin_files:
      return self.gin_files, self.gin_params
    return self.baseline.gin_files, self.baseline.gin_params + self.gin_params


def load_found(options: FoundOptions) -> proxy_fidelity.Architecture:
  """Copies the found specs into <output_dir>/architectures (the study keeps its input)."""
  space = spaces.build_space(options.found_space)
  try:
    specs = space.spec_class.load(options.found_specs)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(
      f'found_specs {options.found_specs!r}: not a {options.found_space} spec file ({e}).'
    ) from e
  path = os.path.join(options.output_dir, 'architectures', f'{FOUND}.json')
  files.make_parent_dirs(path)
  space.spec_class.save(list(specs), path)
  return proxy_fidelity.Architecture(FOUND, options.found_space, path)


def multiply_adds(gin_files: Sequence[str], gin_params: Sequence[str]) -> float:
  """Multiply-adds of the config's model at its image size (built, not trained)."""
  task = loading.build_task(gin_files, gin_params)
  model = task.build_model()
  return float(model_stats.count_multiply_adds(model, [1, *task.image_size, 3]))


def matching_scale(
  target: float,
  madds_at: Callable[[float], float],
  start: float,
  tolerance: float,
  max_evaluations: int = 8,
) -> Tuple[float, float]:
  """The scale whose multiply-adds come nearest `target`, by the secant method.

  Multiply-adds grow smoothly with a width scale (quadratically in the blocks, linearly
  where a scaled layer meets a fixed one), so a secant step on sqrt(multiply-adds) lands
  within a few evaluations; every model build costs seconds.

  Args:
    target: the multiply-adds to match.
    madds_at: scale -> multiply-adds, increasing.
    start: the first scale tried.
    tolerance: stop when within this fraction of target.
    max_evaluations: at most this many calls of madds_at.

  Returns:
    (the best scale tried, its multiply-adds).
  """
  tried = {start: madds_at(start)}
  # First step: as if multiply-adds were quadratic in the scale.
  scale = start * math.sqrt(target / tried[start])
  previous = start
  while len(tried) < max_evaluations and scale not in tried:
    tried[scale] = madds_at(scale)
    if abs(tried[scale] - target) <= tolerance * target:
      break
    rise = math.sqrt(tried[scale]) - math.sqrt(tried[previous])
    if rise == 0:  # both rounded to the same channels: step further toward the target
      toward = 1.0 if tried[scale] < target else -1.0
      step = 2.0 * toward * abs(scale - previous)
    else:
      step = (math.sqrt(target) - math.sqrt(tried[scale])) * (scale - previous) / rise
    previous, scale = scale, max(scale + step, scale / 4)
  best = min(tried, key=lambda s: abs(tried[s] - target))
  return best, tried[best]


def _base_width(options: FoundOptions, data_params: Sequence[str]) -> float:
  """The protocol's width scale, as gin resolves it."""
  gin_files, params = options.protocol
  configurables.parse_gin(gin_files, list(params) + list(data_params))
  name = options.baseline.width_param
  try:
    return float(configurables.gin_value(name))
  except ValueError as e:
    raise ValueError(f'equal_madds scales {name}: bind it in the protocol ({e}).') from e


def job_specs(
  options: FoundOptions, found: proxy_fidelity.Architecture, data_params: Sequence[str]
) -> List[Tuple[proxy_fidelity.Architecture, str, Tuple[str, ...]]]:
  """(architecture, job name, extra bindings) of every job; the scaled one if it is needed."""
  base = options.baseline
  (baseline,) = proxy_fidelity.architectures(options.output_dir, 0, 0, (base.point,))
  result = [(found, FOUND, ()), (baseline, base.point, ())]
  if not options.equal_madds:
    return result
  if not base.scalable:
    logging.info('No equal multiply-adds model: %s is not a continuous scale.', base.width_param)
    return result
  gin_files, params = options.protocol
  common = list(params) + list(data_params)
  target = multiply_adds(gin_files, common + found.gin_bindings())
  width = _base_width(options, data_params)

  @functools.cache
  def madds_at(scale: float) -> float:
    return multiply_adds(
      gin_files, common + baseline.gin_bindings() + [f'{base.width_param} = {scale}']
    )

  if abs(madds_at(width) - target) <= options.madds_tolerance * target:
    return result
  scale, _ = matching_scale(target, madds_at, width, options.madds_tolerance / 4)
  return result + [(baseline, base.equal_madds_name, (f'{base.width_param} = {scale:.6g}',))]


def jobs(
  options: FoundOptions, found: proxy_fidelity.Architecture, data_params: Sequence[str]
) -> List[proxy_fidelity.Job]:
  """One training job per entry of `job_specs`, with the options' protocol."""
  threads = options.threads_per_job or max(1, (os.cpu_count() or 1) // options.workers)
  gin_files, protocol_params = options.protocol
  result = []
  for arch, name, extra in job_specs(options, found, data_params):
    params = (*protocol_params, *data_params, *arch.gin_bindings(), *extra)
    job_dir = os.path.join(options.output_dir, 'runs', name)
    job = proxy_fidelity.Job(
      dataclasses.replace(arch, name=name),
      proxy_fidelity.FULL,
      job_dir,
      gin_files,
      params,
      threads,
      options.latency_runs,
    )
    result.append(job)
  return result


def measure(options: FoundOptions, job: proxy_fidelity.Job, result: Dict[str, Any]) -> Dict:
  """The trained model's row: AP, AP50, params, multiply-adds, latency (ms), width."""
  row = {'name': job.architecture.name, 'status': result['status']}
  row.update({m: result[m] for m in proxy_fidelity.METRICS})
  row['train_minutes'] = result['seconds'] / 60
  if result['status'] == 'ok':  # a diverged job may have no checkpoint to measure
    measuring = proxy_config.ProxyConfig(
      gin_files=job.gin_files,
      latency_image_size=options.latency_image_size or None,
      latency_runs=options.latency_runs,
    )
    row.update(search_trial.measure_model(measuring, job.gin_params, job.job_dir))
    row['width'] = configurables.gin_value(options.baseline.width_param)
  return row


def markdown(rows: Sequence[Dict[str, Any]], width_param: str) -> str:
  """The comparison table in Markdown; width_param names the width column."""
  header = ['model', 'held-out AP', 'AP50', 'params (M)', 'multiply-adds (M)']
  header += ['CPU latency (ms)', width_param.rsplit('.', maxsplit=1)[-1], 'training (min)']
  cells = []
  for row in rows:
    millions = [row[k] / 1e6 if k in row else None for k in ('params', 'multiply_adds')]
    status = '' if row['status'] == 'ok' else ' (failed)'
    cells.append(
      [row['name'] + status, row['AP'], row['AP50'], *millions, row.get('latency_ms')]
      + [row.get('width'), row['train_minutes']]
    )
  return tables.format_table(header, cells, markdown=True)


def draw(options: FoundOptions, job_list: Sequence[proxy_fidelity.Job]) -> List[str]:
  """<output_dir>/drawings/<builder>_found.png / .svg and <baseline>.png / .svg."""
  base = options.baseline
  paths = []
  for arch in [j.architecture for j in job_list if j.architecture.name in (FOUND, base.point)]:
    space = spaces.build_space(arch.space)
    found = arch.name == FOUND
    name = f'{space.builder}_{FOUND}' if found else arch.name
    prefix = os.path.join(options.output_dir, 'drawings', name)
    specs = space.spec_class.load(arch.specs_path)
    title = 'found' if found else base.title
    paths += drawing.draw_searched(specs, space.builder, prefix, title, space.builder_overrides())
  return paths


def publish_drawings(drawings: Sequence[str], docs_dir: str) -> List[str]:
  """Copies the PNG drawings into docs_dir (made if missing) as search_<name>.png.

  Returns the copies' paths. Each copy is atomic: an interrupted run leaves the
  previous drawing, never half of one.
  """
  copies = []
  for path in drawings:
    if path.endswith('.png'):
      copy = os.path.join(docs_dir, 'search_' + os.path.basename(path))
      with files.atomic_output(copy) as tmp:
        shutil.copyfile(path, tmp)
      copies.append(copy)
  return copies


def run_study(options: FoundOptions) -> Dict[str, Any]:
  """Trains (or resumes) every job, measures the models, draws both architectures.

  Returns:
    {'rows', 'markdown', 'drawings'}; also <output_dir>/found.json and found.md.

  Raises:
    ValueError: bad options, spec file, gin file or binding (before any training).
  """
  found = load_found(options)  # a bad spec file fails before the data are made
  data_params = demo.ensure_demo_data(
    options.output_dir, 'retinanet', options.num_train_images, options.num_val_images
  )
  job_list = jobs(options, found, data_params)
  proxy_fidelity.check_bindings(job_list)
  results = proxy_fidelity.run_jobs(job_list, options.workers)
  rows = [measure(options, job, result) for job, result in zip(job_list, results)]
  study = {
    'rows': rows,
    'markdown': markdown(rows, options.baseline.width_param),
    'drawings': draw(options, job_list),
    'options': files.json_safe(dataclasses.asdict(options)),
  }
  files.write_json_atomically(study, os.path.join(options.output_dir, STUDY_FILE))
  files.atomic_write(os.path.join(options.output_dir, 'found.md'), study['markdown'] + '\n')
  return study

"""A found architecture against SpineNet-49 under the demo protocol (issue 12).

  options = found_architecture.FoundOptions(
      found_specs='/tmp/compare/ppo/seed0/best/1.json', output_dir='/tmp/found')
  study = found_architecture.run_study(options)
  study['rows'][0]['AP'], study['rows'][0]['latency_ms']

A search ranks architectures by a short proxy; what counts is how the best one does when
trained in full. As SpineNet does (Table 1-2: its searched models against ResNet-FPN at
the same width and at similar FLOPs), `run_study` trains with the demo protocol
(`demo/retinanet_spinenet_shapes.gin`, 2000 steps at 128 px) on one shapes dataset:

- 'found': the found specs (a search's best/<k>.json), on the protocol's width;
- 'spinenet49': SpineNet-49 at the same width (the same filter_size_scale);
- 'spinenet49_equal_madds': SpineNet-49 with the filter_size_scale whose model has the
  found one's multiply-adds (`matching_scale`; widths round to whole channels, so they
  match to about a percent), left out when the two already match within `madds_tolerance`.

Training goes through `proxy_fidelity`'s jobs (a fresh process each, `workers` at a time,
resumed when run again). Then each trained model is measured in this process, one after
the other: held-out AP / AP50, params and multiply-adds at the protocol's size, median
CPU latency at batch 1 (`search_trial.measure_model`). The found architecture and
SpineNet-49 are drawn side by side (<output_dir>/drawings).
"""

import dataclasses
import functools
import math
import os
from typing import Any, Callable, Dict, List, Sequence, Tuple

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

FOUND, BASELINE, EQUAL_MADDS = 'found', 'spinenet49', 'spinenet49_equal_madds'
WIDTH_PARAM = 'spinenet.filter_size_scale'
STUDY_FILE = 'found.json'


@dataclasses.dataclass(frozen=True)
class FoundOptions:
  """What `run_study` trains and measures (the tool's flags).

  Attributes:
    found_specs: the found architecture's spec file (a search's best/<k>.json).
    output_dir: data, architectures, one folder per job, drawings, found.json / .md.
    found_space: the search space the specs belong to (its builder and gin bindings).
    gin_files: the training protocol.
    gin_params: bindings for every job, before the data and architecture ones.
    equal_madds: also train SpineNet-49 scaled to the found one's multiply-adds.
    madds_tolerance: relative multiply-add gap under which no scaled model is trained.
    workers: jobs at a time; threads_per_job: TF threads each (0: CPUs / workers).
    latency_image_size: square size of the latency runs (0: the protocol's size).
    latency_runs: timed forward passes per model (median).
    num_train_images / num_val_images: the shapes dataset (the demo's sizes).
  """

  found_specs: str
  output_dir: str = '/tmp/found_architecture'
  found_space: str = 'spinenet'
  gin_files: Tuple[str, ...] = proxy_fidelity.FULL_GIN_FILES
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
    if spaces.build_space(self.found_space).builder != 'spinenet':
      # SpineNet-49 is the baseline: the found model must be a `spinenet` backbone too.
      raise ValueError(f'found_space {self.found_space!r} is not a SpineNet backbone space.')
    for name in ('workers', 'latency_runs', 'num_train_images', 'num_val_images'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}.')
    if self.threads_per_job < 0 or self.latency_image_size < 0:
      raise ValueError('threads_per_job and latency_image_size must be >= 0.')
    if not 0 < self.madds_tolerance < 1:
      raise ValueError(f'madds_tolerance must be in (0, 1), got {self.madds_tolerance}.')


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
  """The protocol's filter_size_scale, as gin resolves it."""
  configurables.parse_gin(options.gin_files, list(options.gin_params) + list(data_params))
  try:
    return float(configurables.gin_value(WIDTH_PARAM))
  except ValueError as e:
    raise ValueError(f'equal_madds scales {WIDTH_PARAM}: bind it in the protocol ({e}).') from e


def job_specs(
  options: FoundOptions, found: proxy_fidelity.Architecture, data_params: Sequence[str]
) -> List[Tuple[proxy_fidelity.Architecture, str, Tuple[str, ...]]]:
  """(architecture, job name, extra bindings) of every job; the scaled one if it is needed."""
  (baseline,) = proxy_fidelity.architectures(options.output_dir, 0, 0, (BASELINE,))
  result = [(found, FOUND, ()), (baseline, BASELINE, ())]
  if not options.equal_madds:
    return result
  common = list(options.gin_params) + list(data_params)
  target = multiply_adds(options.gin_files, common + found.gin_bindings())
  width = _base_width(options, data_params)

  @functools.cache
  def madds_at(scale: float) -> float:
    params = common + baseline.gin_bindings() + [f'{WIDTH_PARAM} = {scale}']
    return multiply_adds(options.gin_files, params)

  if abs(madds_at(width) - target) <= options.madds_tolerance * target:
    return result
  scale, _ = matching_scale(target, madds_at, width, options.madds_tolerance / 4)
  return result + [(baseline, EQUAL_MADDS, (f'{WIDTH_PARAM} = {scale:.6g}',))]


def jobs(
  options: FoundOptions, found: proxy_fidelity.Architecture, data_params: Sequence[str]
) -> List[proxy_fidelity.Job]:
  """One demo-protocol training job per entry of `job_specs`."""
  threads = options.threads_per_job or max(1, (os.cpu_count() or 1) // options.workers)
  result = []
  for arch, name, extra in job_specs(options, found, data_params):
    params = (*options.gin_params, *data_params, *arch.gin_bindings(), *extra)
    job_dir = os.path.join(options.output_dir, 'runs', name)
    job = proxy_fidelity.Job(
      dataclasses.replace(arch, name=name),
      proxy_fidelity.FULL,
      job_dir,
      options.gin_files,
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
      gin_files=options.gin_files,
      latency_image_size=options.latency_image_size or None,
      latency_runs=options.latency_runs,
    )
    row.update(search_trial.measure_model(measuring, job.gin_params, job.job_dir))
    row[WIDTH_PARAM] = float(configurables.gin_value(WIDTH_PARAM))
  return row


def markdown(rows: Sequence[Dict[str, Any]]) -> str:
  """The comparison table in Markdown."""
  header = ['model', 'held-out AP', 'AP50', 'params (M)', 'multiply-adds (M)']
  header += ['CPU latency (ms)', 'filter_size_scale', 'training (min)']
  cells = []
  for row in rows:
    millions = [row[k] / 1e6 if k in row else None for k in ('params', 'multiply_adds')]
    status = '' if row['status'] == 'ok' else ' (failed)'
    cells.append(
      [row['name'] + status, row['AP'], row['AP50'], *millions, row.get('latency_ms')]
      + [row.get(WIDTH_PARAM), row['train_minutes']]
    )
  return tables.format_table(header, cells, markdown=True)


def draw(options: FoundOptions, job_list: Sequence[proxy_fidelity.Job]) -> List[str]:
  """<output_dir>/drawings/<name>.png / .svg of the found architecture and SpineNet-49."""
  paths = []
  for arch in [j.architecture for j in job_list if j.architecture.name in (FOUND, BASELINE)]:
    space = spaces.build_space(arch.space)
    prefix = os.path.join(options.output_dir, 'drawings', arch.name)
    specs = space.spec_class.load(arch.specs_path)
    title = 'found' if arch.name == FOUND else 'SpineNet-49'
    paths += drawing.draw_searched(specs, space.builder, prefix, title, space.builder_overrides())
  return paths


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
    'markdown': markdown(rows),
    'drawings': draw(options, job_list),
    'options': files.json_safe(dataclasses.asdict(options)),
  }
  files.write_json_atomically(study, os.path.join(options.output_dir, STUDY_FILE))
  files.atomic_write(os.path.join(options.output_dir, 'found.md'), study['markdown'] + '\n')
  return study

"""Proxy fidelity (issue 12): does the search's proxy rank architectures as full training does?

  options = proxy_fidelity.FidelityOptions(output_dir='/tmp/fidelity', proxy_steps=(300, 150))
  study = proxy_fidelity.run_study(options)
  study['tau']['proxy300']['AP']        # Kendall's tau-b of proxy AP against full-training AP

A search scores each sampled architecture by a short proxy training (SpineNet Sec. 4.1,
NAS-FPN Sec. 3.1), so it finds good architectures only if the proxy ranks them as full
training does (NAS-FPN Fig. 4 checks this for its proxy). `run_study` trains a fixed set
of architectures under each protocol and compares the rankings:

- architectures: SpineNet-49, the four scale-permuted ResNets of SpineNet Sec. 3.3 (their
  scale-decreasing points, `spaces.PUBLISHED_POINTS`) and `num_random` seeded random points
  of the 'spinenet' space (`random_space_options` narrow it, e.g. to fewer intermediate
  blocks), each saved as a spec file in <output_dir>/architectures;
- 'full': the demo protocol (`demo/retinanet_spinenet_shapes.gin`, 2000 steps at 128 px);
- 'proxy<n>': the search's proxy (`search/proxy_spinenet_shapes.gin`) for n steps, scored
  as a search trial is (`search_trial.run_proxy_trial`: AP, AP50, params, multiply-adds);

all on one shapes dataset (<output_dir>/data, the demo's sizes). Then Kendall's tau-b
(`scipy.stats.kendalltau`) between each proxy's held-out AP (and AP50) and full training's.

Every job (architecture x protocol) runs in a fresh spawned process with its own TF
threads, `workers` at a time, its log in <job dir>/log.txt, and ends by writing
<job dir>/result.json atomically: a killed study resumes when run again (finished jobs are
read back, a job in flight resumes from its last checkpoint). A job whose training diverges
or whose evaluation is NaN is a result (status 'failed', AP 0, as a search scores it), not
an error.
"""

import concurrent.futures
import dataclasses
import math
import multiprocessing
import os
import random
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import logging
import pyglove as pg

from official_spinenet import configurables
from official_spinenet.search import proxy_config
from official_spinenet.search import spaces
from official_spinenet.utils import files
from official_spinenet.utils import tables
from official_spinenet.workflows import demo
from official_spinenet.workflows import search_trial
from official_spinenet.workflows import train

FULL = 'full'
# SpineNet-49's shapes protocol; the demo itself now trains the found architecture for
# 1200 steps (demo/retinanet_spinenet_found_shapes.gin, which includes this file).
FULL_GIN_FILES = ('demo/retinanet_spinenet_shapes.gin',)
PROXY_GIN_FILES = proxy_config.ProxyConfig().gin_files
PUBLISHED = ('spinenet49', 'r0_sp53', 'r14_sp39', 'r23_sp30', 'r35_sp18')
RANDOM_SPACE = 'spinenet'
METRICS = ('AP', 'AP50')
RESULT_FILE = 'result.json'
STUDY_FILE = 'fidelity.json'


@dataclasses.dataclass(frozen=True)
class FidelityOptions:
  """What `run_study` trains and where (the tool's flags).

  Attributes:
    output_dir: data, architectures, one folder per job, fidelity.json / .md.
    published: names of `spaces.PUBLISHED_POINTS` to include (default: SpineNet-49, R-SP).
    num_random: random points of the 'spinenet' space besides the published ones.
    seed: seed of the random points.
    random_space_options: `spaces.build_space('spinenet', **options)` options of the space
      the random points are drawn from, e.g. {'intermediate_block_levels': (3, 4)} for
      7-block backbones instead of 16 (quicker to build and train); {}: the paper's space.
    proxy_steps: one proxy per entry, trained for that many steps.
    full_gin_files: the full-training protocol.
    proxy_gin_files: the proxy.
    gin_params: bindings for every job, before the data and architecture ones.
    workers: jobs at a time (each in its own process).
    threads_per_job: TF intra-op threads of a job; 0: the machine's CPUs / workers.
    num_train_images: shapes training images.
    num_val_images: held-out shapes images (the AP).
    latency_runs: forward passes timed by each proxy job.
  """

  output_dir: str = '/tmp/proxy_fidelity'
  published: Tuple[str, ...] = PUBLISHED
  num_random: int = 3
  seed: int = 0
  random_space_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  proxy_steps: Tuple[int, ...] = (300, 150)
  full_gin_files: Tuple[str, ...] = FULL_GIN_FILES
  proxy_gin_files: Tuple[str, ...] = PROXY_GIN_FILES
  gin_params: Tuple[str, ...] = ()
  workers: int = 2
  threads_per_job: int = 0
  num_train_images: int = demo.DEMO_NUM_IMAGES['retinanet'][0]
  num_val_images: int = demo.DEMO_NUM_IMAGES['retinanet'][1]
  latency_runs: int = 5

  def __post_init__(self):
    for name in ('published', 'proxy_steps', 'full_gin_files', 'proxy_gin_files', 'gin_params'):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    allowed = [n for n, (space, _) in spaces.PUBLISHED_POINTS.items() if _is_spinenet(space)]
    unknown = sorted(set(self.published) - set(allowed))
    if unknown:
      # The protocols train a RetinaNet with a `spinenet` backbone; other points do not fit.
      raise ValueError(f'published: {unknown} are not SpineNet backbones; choose from {allowed}.')
    if self.num_random < 0:
      raise ValueError(f'num_random must be >= 0, got {self.num_random}.')
    object.__setattr__(self, 'random_space_options', dict(self.random_space_options))
    spaces.build_space(RANDOM_SPACE, **self.random_space_options)  # a bad option fails here
    if len(self.published) + self.num_random < 3:
      raise ValueError(
        f'A rank correlation needs at least 3 architectures, got {len(self.published)} '
        f'published + {self.num_random} random.'
      )
    if not self.proxy_steps or any(s < 1 for s in self.proxy_steps):
      raise ValueError(f'proxy_steps must be positive step counts, got {self.proxy_steps}.')
    if len(set(self.proxy_steps)) != len(self.proxy_steps):
      raise ValueError(f'proxy_steps has a repeated entry: {self.proxy_steps}.')
    for name in ('workers', 'num_train_images', 'num_val_images', 'latency_runs'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}.')
    if self.threads_per_job < 0:
      raise ValueError(f'threads_per_job must be >= 0, got {self.threads_per_job}.')

  @property
  def protocols(self) -> Tuple[str, ...]:
    """'full', then 'proxy<n>' per proxy_steps entry."""
    return (FULL,) + tuple(f'proxy{s}' for s in self.proxy_steps)

  def protocol_gin(self, protocol: str) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """(gin files, bindings) of a protocol, before the data and architecture bindings."""
    if protocol == FULL:
      return self.full_gin_files, self.gin_params
    steps = int(protocol[len('proxy') :])
    return self.proxy_gin_files, self.gin_params + (f'TRAIN_STEPS = {steps}',)


def _is_spinenet(space_name: str) -> bool:
  return spaces.build_space(space_name).builder == 'spinenet'


@dataclasses.dataclass(frozen=True)
class Architecture:
  """A point of a search space saved as a spec file.

  Attributes:
    name: its name in jobs and tables.
    space: the `spaces.build_space` name of its space.
    specs_path: the spec file.
    space_options: (option, value) pairs the space was built with (its bindings may
      depend on them, e.g. a stem); (): the defaults.
  """

  name: str
  space: str
  specs_path: str
  space_options: Tuple[Tuple[str, Any], ...] = ()

  def gin_bindings(self) -> List[str]:
    space = spaces.build_space(self.space, **dict(self.space_options))
    return space.gin_bindings(self.specs_path)


@dataclasses.dataclass(frozen=True)
class Job:
  """One architecture trained and evaluated under one protocol (picklable)."""

  architecture: Architecture
  protocol: str
  job_dir: str
  gin_files: Tuple[str, ...]
  gin_params: Tuple[str, ...]
  num_threads: int
  latency_runs: int

  @property
  def result_path(self) -> str:
    return os.path.join(self.job_dir, RESULT_FILE)


def architectures(
  output_dir: str,
  num_random: int,
  seed: int,
  published: Sequence[str] = PUBLISHED,
  random_space_options: Optional[Mapping[str, Any]] = None,
) -> List[Architecture]:
  """The `published` points, then `num_random` random points of the 'spinenet' space.

  random_space_options: `spaces.build_space` options of the space the random points are
  drawn from (None: the defaults).
  """
  points = [(name, *spaces.PUBLISHED_POINTS[name], ()) for name in published]
  options = tuple(sorted((random_space_options or {}).items()))
  space = spaces.build_space(RANDOM_SPACE, **dict(options))
  for i in range(num_random):
    dna = pg.random_dna(space.dna_spec, random.Random(f'{seed}/{i}'))
    points.append((f'random{i}', RANDOM_SPACE, space.decode(dna), options))
  result = []
  for name, space_name, specs, space_options in points:
    path = os.path.join(output_dir, 'architectures', f'{name}.json')
    files.make_parent_dirs(path)
    spaces.build_space(space_name).spec_class.save(list(specs), path)
    result.append(Architecture(name, space_name, path, space_options))
  return result


def jobs(options: FidelityOptions, archs: Sequence[Architecture], data_params) -> List[Job]:
  """Every (architecture, protocol) job, full training first (the longest go first)."""
  threads = options.threads_per_job or max(1, (os.cpu_count() or 1) // options.workers)
  result = []
  for protocol in options.protocols:
    gin_files, params = options.protocol_gin(protocol)
    for arch in archs:
      job_dir = os.path.join(options.output_dir, 'runs', protocol, arch.name)
      bindings = tuple(params) + tuple(data_params) + tuple(arch.gin_bindings())
      result.append(
        Job(arch, protocol, job_dir, gin_files, bindings, threads, options.latency_runs)
      )
  return result


def check_bindings(job_list: Sequence[Job]) -> None:
  """Parses each protocol's gin once (cheap): a bad file or binding fails before training."""
  seen = set()
  for job in job_list:
    if job.protocol not in seen:
      seen.add(job.protocol)
      configurables.parse_gin(job.gin_files, job.gin_params)


def _log_to_file(job_dir: str) -> None:
  """Sends this process's stdout and stderr (TF's C++ logs too) to <job_dir>/log.txt."""
  os.makedirs(job_dir, exist_ok=True)
  log = open(os.path.join(job_dir, 'log.txt'), 'a', encoding='utf-8')  # pylint: disable=consider-using-with
  sys.stdout.flush()
  sys.stderr.flush()
  os.dup2(log.fileno(), 1)
  os.dup2(log.fileno(), 2)
  logging.set_verbosity(logging.INFO)


def run_job(job: Job) -> Dict[str, Any]:
  """Trains and evaluates one job (in a fresh process); its result, also in result.json."""
  if os.path.exists(job.result_path):
    return files.read_json(job.result_path, 'Fidelity job result')
  _log_to_file(job.job_dir)
  search_trial.set_num_threads(job.num_threads)  # before this process runs its first op
  start = time.perf_counter()
  try:
    if job.protocol == FULL:
      metrics = train.launch(job.gin_files, job.gin_params, job.job_dir)
      result = search_trial.checked_metrics(metrics, 'AP')
    else:
      proxy = proxy_config.ProxyConfig(gin_files=job.gin_files, latency_runs=job.latency_runs)
      result = search_trial.run_proxy_trial(job.gin_params, proxy, job.job_dir)
    result.update(status='ok', error='')
  except (ValueError, FloatingPointError) as e:  # a diverging architecture is a finding
    result = {m: 0.0 for m in METRICS}
    result.update(status='failed', error=f'{type(e).__name__}: {e}'[:2000])
  result.update(
    architecture=job.architecture.name, protocol=job.protocol, seconds=time.perf_counter() - start
  )
  files.write_json_atomically(result, job.result_path)
  return result


def run_jobs(job_list: Sequence[Job], workers: int) -> List[Dict[str, Any]]:
  """Runs the jobs without a result, `workers` at a time, each in a fresh process."""
  done = {
    j.job_dir: files.read_json(j.result_path) for j in job_list if os.path.exists(j.result_path)
  }
  todo = [j for j in job_list if j.job_dir not in done]
  print(f'{len(done)} of {len(job_list)} jobs done; {len(todo)} to run, {workers} at a time.')
  if todo:
    context = multiprocessing.get_context('spawn')
    with concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=context, max_tasks_per_child=1
    ) as pool:
      futures = {pool.submit(run_job, j): j for j in todo}
      for future in concurrent.futures.as_completed(futures):
        job, result = futures[future], future.result()
        done[job.job_dir] = result
        print(
          f'[{len(done)}/{len(job_list)}] {job.protocol} {job.architecture.name}: '
          f"AP {result['AP']:.3f} AP50 {result['AP50']:.3f} ({result['status']}, "
          f"{result['seconds']:.0f} s)",
          flush=True,
        )
  return [done[j.job_dir] for j in job_list]


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> Tuple[float, float]:
  """Kendall's tau-b of two rankings (ties counted as scipy does) and its two-sided p-value."""
  from scipy import stats  # pylint: disable=g-import-not-at-top

  if len(x) != len(y) or len(x) < 2:
    raise ValueError(
      f'Kendall tau needs two equal-length sequences of >= 2, got {len(x)}, {len(y)}.'
    )
  tau = stats.kendalltau(x, y)
  return float(tau.statistic), float(tau.pvalue)


def summarize(
  results: Sequence[Mapping[str, Any]], protocols: Sequence[str]
) -> Tuple[List[Dict[str, Any]], Dict[str, Dict[str, Dict[str, float]]]]:
  """Per-architecture rows ({protocol}/{metric}, params, multiply_adds) and the taus.

  Returns:
    (rows in the architectures' order, {proxy protocol: {metric: {'tau', 'p'}}}).
  """
  rows: Dict[str, Dict[str, Any]] = {}
  for r in results:
    row = rows.setdefault(r['architecture'], {'architecture': r['architecture']})
    for metric in METRICS:
      row[f"{r['protocol']}/{metric}"] = r[metric]
    row[f"{r['protocol']}/status"] = r['status']
    for key in ('params', 'multiply_adds'):
      if key in r:
        row[key] = r[key]
  ordered = list(rows.values())
  taus = {}
  for protocol in protocols:
    if protocol == FULL:
      continue
    taus[protocol] = {}
    for metric in METRICS:
      tau, p = kendall_tau(
        [row[f'{protocol}/{metric}'] for row in ordered],
        [row[f'{FULL}/{metric}'] for row in ordered],
      )
      taus[protocol][metric] = {'tau': tau, 'p': p}
  return ordered, taus


def markdown(rows: Sequence[Mapping[str, Any]], taus, protocols: Sequence[str]) -> str:
  """The per-architecture table and the tau table, in Markdown."""
  header = ['architecture', 'params (M)', 'multiply-adds (M)']
  header += [f'{p} {m}' for p in protocols for m in METRICS]
  cells = []
  for row in rows:
    cells.append(
      [row['architecture'], _millions(row.get('params')), _millions(row.get('multiply_adds'))]
      + [_marked(row, p, m) for p in protocols for m in METRICS]
    )
  tau_header = ['proxy', *(f"Kendall's tau, {m} (p)" for m in METRICS)]
  tau_cells = [[p, *(_tau_cell(taus[p][m]) for m in METRICS)] for p in taus]
  return (
    tables.format_table(header, cells, markdown=True)
    + '\n\n'
    + tables.format_table(tau_header, tau_cells, markdown=True)
  )


def _tau_text(tau: float) -> str:
  # scipy gives nan when one side is all ties (e.g. every proxy AP is 0): no ranking.
  return 'undefined (all tied)' if math.isnan(tau) else f'{tau:.2f}'


def _tau_cell(tau: Mapping[str, float]) -> str:
  text = _tau_text(tau['tau'])
  return text if math.isnan(tau['tau']) else f"{text} ({tau['p']:.3f})"


def _millions(value) -> Any:
  return None if value is None else value / 1e6


def _marked(row: Mapping[str, Any], protocol: str, metric: str) -> str:
  value = row[f'{protocol}/{metric}']
  failed = row[f'{protocol}/status'] != 'ok'
  return f'{value:.3f}' + (' (failed)' if failed else '')


def plot(rows: Sequence[Mapping[str, Any]], taus, path: str) -> None:
  """One panel per proxy: proxy AP (x) against full-training AP (y), names beside the points."""
  from official_spinenet.utils import charts  # pylint: disable=g-import-not-at-top

  fig = charts.figure(5.2 * len(taus), 4.4)
  axes = fig.subplots(1, len(taus), squeeze=False)
  for ax, protocol in zip(axes[0], taus):
    x = [row[f'{protocol}/AP'] for row in rows]
    y = [row[f'{FULL}/AP'] for row in rows]
    ax.scatter(x, y)
    for row, xi, yi in zip(rows, x, y):
      ax.annotate(
        row['architecture'], (xi, yi), textcoords='offset points', xytext=(4, 3), fontsize=7
      )
    title = f"{protocol}: Kendall's tau {_tau_text(taus[protocol]['AP']['tau'])}"
    charts.label(
      ax, f'{protocol}: held-out AP', 'full training (demo protocol): held-out AP', title
    )
  charts.save_png(fig, path)


def run_study(options: FidelityOptions) -> Dict[str, Any]:
  """Makes the data and architectures, runs (or resumes) every job, and compares rankings.

  Returns:
    {'rows', 'tau', 'markdown', 'total_seconds'}; also written to <output_dir>/fidelity.json
    and fidelity.md.

  Raises:
    ValueError: bad options, gin file or binding (before any training).
  """
  data_params = demo.ensure_demo_data(
    options.output_dir, 'retinanet', options.num_train_images, options.num_val_images
  )
  archs = architectures(
    options.output_dir,
    options.num_random,
    options.seed,
    options.published,
    options.random_space_options,
  )
  job_list = jobs(options, archs, data_params)
  check_bindings(job_list)
  results = run_jobs(job_list, options.workers)
  rows, taus = summarize(results, options.protocols)
  study = {
    'rows': rows,
    'tau': taus,
    'markdown': markdown(rows, taus, options.protocols),
    'total_seconds': sum(r['seconds'] for r in results),
    'options': files.json_safe(dataclasses.asdict(options)),
  }
  files.write_json_atomically(study, os.path.join(options.output_dir, STUDY_FILE))
  files.atomic_write(os.path.join(options.output_dir, 'fidelity.md'), study['markdown'] + '\n')
  return study

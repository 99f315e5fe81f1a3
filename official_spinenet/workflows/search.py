"""The architecture search run: PyGlove proposes, Ray Tune runs the trials (`spinenet-search`).

  result = search.run_search(search_config.SearchConfig(num_trials=16), '/tmp/search')

One run lives in `output_dir`:

  search_config.json   the configuration (a resume must use the same)
  data/                the shapes data the proxy trains on (made once; not for the
                       synthetic reward)
  tune/                Ray Tune's experiment: its state, the searcher's state
                       (`tune_searcher.PyGloveSearcher`) and per-trial results
  trials/<trial id>/   each trial's architecture (specs.json) and proxy model
  trials.csv           every finished trial (rewritten atomically after each)
  best/                the top_k architectures: <k>.json (block or cell specs a
                       config names, e.g. spinenet.block_specs='best/1.json'),
                       <k>.gin (the bindings that build it) and <k>.png/.svg
  ray_temp_dir.txt     the running session's Ray folder (under /tmp)

Trials run in parallel on one machine (`max_concurrent_trials`, the CPUs split
between them) or, with RAY_ADDRESS set (e.g. `RAY_ADDRESS=auto` on a node of a
cluster started with `ray start`), on a Ray cluster; `output_dir` must then be
storage every node sees. A run killed at any moment (even SIGKILL) resumes when
run again with the same output_dir: `Tuner.restore` re-runs the trials that were
in flight, and the searcher feeds each trial back exactly once. Ray's helper
processes (gcs_server, raylet, workers) end with `ray.shutdown()` on any exit the
driver sees; if the driver itself is SIGKILLed, kill its whole session too
(`kill -9 -- -<pgid>` only reaches the driver's group: Ray's workers have
process groups of their own; `tests/search_runs.kill_session` shows how).
"""

import csv
import dataclasses
import io
import json
import logging as py_logging
import math
import os
import shutil
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

from absl import logging

from official_spinenet.data import shapes
from official_spinenet.search import search_config as search_config_lib
from official_spinenet.search import spaces
from official_spinenet.utils import files
from official_spinenet.workflows import demo

try:
  import ray  # pylint: disable=g-import-not-at-top
  from ray import tune  # pylint: disable=g-import-not-at-top
except ImportError as e:  # Ray is an optional extra.
  raise ImportError(
    'The architecture search runs its trials on Ray Tune: pip install official_spinenet[search]'
  ) from e

from official_spinenet.search import tune_searcher  # pylint: disable=g-bad-import-order

SearchConfig = search_config_lib.SearchConfig

RUN_NAME = 'tune'
CONFIG_FILE = 'search_config.json'
# Names the Ray temp folder of the session running, so that a run killed before it
# could remove it has it removed by the run that resumes it.
RAY_TEMP_FILE = 'ray_temp_dir.txt'
CSV_FILE = 'trials.csv'
BEST_DIR = 'best'
TRIALS_DIR = 'trials'
CSV_COLUMNS = (
  'trial_id',
  'dna',
  'reward',
  'AP',
  'params',
  'multiply_adds',
  'latency_ms',
  'status',
  'seconds',
  'error',
)
# Ray's object store only carries the trainable's parameters: keep it small.
_OBJECT_STORE_BYTES = 100 * 1024 * 1024
_RAY_TEMP_ROOT = '/tmp'
# Test and demo hook: seconds a synthetic-reward trial pretends to train, so that a
# dry run has trials in flight long enough to watch (or to kill) it.
SYNTHETIC_DELAY_ENV = 'SPINENET_SEARCH_SYNTHETIC_DELAY'
# Seconds between Tune's experiment snapshots (trials + searcher state): what a
# SIGKILL can lose is re-run, never double-counted.
_SNAPSHOT_SECONDS = '1'


# Exit status of a search stopped before its budget (a shell's for a SIGINT).
EXIT_STOPPED = 130


class SearchStoppedError(RuntimeError):
  """A search was stopped (Ctrl+C) before its budget; the same command resumes it."""


@dataclasses.dataclass
class SearchResult:
  """What a finished search produced.

  Attributes:
    best_reward: the highest reward of a trial that did not fail (None if all failed).
    best_specs_path: best/1.json (None if all failed).
    csv_path: trials.csv.
    num_trials_done: trials finished (failed ones included).
    output_dir: the run's folder.
    num_trials: the search's budget; fewer done means it was stopped (Ctrl+C / SIGINT,
      on which Ray Tune saves its state and returns) and the same command resumes it.
  """

  best_reward: Optional[float]
  best_specs_path: Optional[str]
  csv_path: str
  num_trials_done: int
  output_dir: str
  num_trials: int

  @property
  def finished(self) -> bool:
    return self.num_trials_done >= self.num_trials

  @property
  def stopped_message(self) -> str:
    return (
      f'The search in {self.output_dir} stopped after {self.num_trials_done} of '
      + f'{self.num_trials} trials; run the same command again to resume it.'
    )


def _synthetic_reward(config: Dict[str, Any], space: spaces.SearchSpace, seed: int) -> float:
  import pyglove as pg  # pylint: disable=g-import-not-at-top

  from official_spinenet.search import synthetic_reward  # pylint: disable=g-import-not-at-top

  # The target's seed differs from the algorithm's: a seeded random search must
  # not start at the target.
  reward_fn = synthetic_reward.hidden_target_reward(space.dna_spec, seed + 7919)
  time.sleep(float(os.environ.get(SYNTHETIC_DELAY_ENV, '0')))
  return float(reward_fn(pg.DNA.from_numbers(config['dna'], space.dna_spec)))


def score_trial(
  config: Dict[str, Any],
  space: spaces.SearchSpace,
  search: SearchConfig,
  data_params: Sequence[str],
  trial_dir: str,
  num_threads: int,
) -> Dict[str, Any]:
  """Scores one architecture; a crash or NaN gives a failed trial, never an exception.

  Args:
    config: the trial's config from `PyGloveSearcher.suggest`: {'dna', 'specs'}.
    space: the search space.
    search: the search (its proxy, seed, failed_reward).
    data_params: gin bindings of the shapes data.
    trial_dir: where the trial writes its specs.json and proxy model.
    num_threads: TensorFlow's intra-op threads.

  Returns:
    What the trial reports: the proxy's metrics (reward, AP, params, ...), 'status'
    ('ok' or 'failed'), 'error' (the exception, '' if none) and 'seconds'.
  """
  start = time.perf_counter()
  try:
    specs = [space.spec_class.from_any(s) for s in config['specs']]
    specs_path = os.path.join(trial_dir, 'specs.json')
    space.spec_class.save(specs, specs_path)
    if search.proxy is None:
      metrics = {'reward': _synthetic_reward(config, space, search.seed)}
    else:
      # Imported in the trial: it loads the training stack, which the driver does not need.
      from official_spinenet.workflows import search_trial  # pylint: disable=g-import-not-at-top

      metrics = search_trial.run_proxy_trial(
        space.gin_bindings(specs_path), search.proxy, trial_dir, data_params, num_threads
      )
    if not math.isfinite(metrics['reward']):
      raise FloatingPointError(f'the reward is {metrics["reward"]}')
    status, error = 'ok', ''
  except Exception as e:  # pylint: disable=broad-except  # one bad architecture never stops a search
    logging.warning('Trial in %s failed: %s', trial_dir, e)
    metrics, status = {'reward': search.failed_reward}, 'failed'
    error = f'{type(e).__name__}: {e}'
  report = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
  seconds = time.perf_counter() - start
  return {**report, 'status': status, 'error': error[:2000], 'seconds': seconds}


def _trial(config: Dict[str, Any], trials_dir: str, **kwargs) -> None:
  """The Tune trainable: `score_trial` in <trials_dir>/<trial id>, reported to Tune."""
  trial_dir = os.path.join(trials_dir, tune.get_context().get_trial_id())
  tune.report(score_trial(config, trial_dir=trial_dir, **kwargs))


def _csv_row(trial) -> Dict[str, Any]:
  result = dict(trial.last_result or {})
  row = {name: result.get(name, '') for name in CSV_COLUMNS}
  row['trial_id'] = trial.trial_id
  row['dna'] = ' '.join(str(n) for n in trial.config.get('dna', ()))
  if 'reward' not in result:  # Tune saw it raise: it never reported
    row.update(status='failed', error=row['error'] or 'the trial raised (see its error file)')
  return row


class _TrialLog(tune.Callback):
  """In the driver: trials.csv after every trial, and one progress line per trial.

  Its rows are part of Tune's experiment snapshot (`get_state`), so a resumed run
  starts from exactly the trials the restored searcher knows.
  """

  def __init__(self, csv_path: str, num_trials: int, max_concurrent: int, failed_reward: float):
    self._csv_path = csv_path
    self._num_trials = num_trials
    self._max_concurrent = max_concurrent
    self._failed_reward = failed_reward
    self._rows: Dict[str, Dict[str, Any]] = {}

  def get_state(self) -> Dict[str, Any]:
    return {'rows': self._rows}

  def set_state(self, state: Dict[str, Any]) -> None:
    self._rows = dict(state['rows'])
    self._write()

  def on_trial_complete(self, iteration, trials, trial, **info) -> None:
    del iteration, trials, info
    self._add(trial)

  def on_trial_error(self, iteration, trials, trial, **info) -> None:
    del iteration, trials, info
    self._add(trial)

  def _add(self, trial) -> None:
    row = _csv_row(trial)
    if row['status'] == 'failed':
      row['reward'] = self._failed_reward
    self._rows[trial.trial_id] = row
    self._write()
    line = progress_line(list(self._rows.values()), self._num_trials, self._max_concurrent)
    print(line, flush=True)

  def _write(self) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(self._rows.values())
    files.atomic_write(self._csv_path, text.getvalue())


def progress_line(rows: Sequence[Dict[str, Any]], num_trials: int, max_concurrent: int) -> str:
  """E.g. 'trials 5/16 (1 failed), best reward 0.412 (3ab2c4d1), mean trial 62.0 s, ETA 5.7 min'.

  The ETA assumes the remaining trials take the mean time of the finished ones
  and run `max_concurrent` at a time.
  """
  done = len(rows)
  ok = [r for r in rows if r['status'] != 'failed']
  best = max(ok, key=lambda r: float(r['reward']), default=None)
  best_text = 'none yet' if best is None else f'{float(best["reward"]):.4g} ({best["trial_id"]})'
  seconds = [float(r['seconds']) for r in rows if r.get('seconds') not in ('', None)]
  mean = sum(seconds) / len(seconds) if seconds else 0.0
  eta = max(num_trials - done, 0) * mean / max_concurrent / 60
  failed = done - len(ok)
  return (
    f'trials {done}/{num_trials} ({failed} failed), best reward {best_text}, '
    f'mean trial {mean:.1f} s, ETA {eta:.1f} min'
  )


def read_trials_csv(path: str) -> List[Dict[str, str]]:
  """The rows of trials.csv (strings, as written)."""
  with open(path, newline='', encoding='utf-8') as f:
    return list(csv.DictReader(f))


def _rows_so_far(csv_path: str) -> List[Dict[str, str]]:
  """trials.csv's rows; none before the first trial has finished."""
  return read_trials_csv(csv_path) if os.path.exists(csv_path) else []


def _config_json(config: SearchConfig) -> Dict[str, Any]:
  return json.loads(json.dumps(files.json_safe(dataclasses.asdict(config)), sort_keys=True))


def _check_or_write_config(config: SearchConfig, output_dir: str) -> None:
  """Records the configuration; a resumed run must have the same one."""
  path = os.path.join(output_dir, CONFIG_FILE)
  wanted = _config_json(config)
  if os.path.exists(path):
    saved = files.read_json(path, 'Search configuration')
    if saved != wanted:
      changed = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
      raise ValueError(
        f'{output_dir} holds a search with another configuration (differs in {changed}); '
        'resume it with the same configuration or use a new --output_dir.'
      )
    return
  files.write_json_atomically(wanted, path)


def _data_params(config: SearchConfig, output_dir: str) -> List[str]:
  """The shapes data the proxy trains on, made once in output_dir/data (if it does)."""
  if config.proxy is None or not config.make_shapes_data:
    return []
  paths = shapes.ensure_shapes_dataset(
    os.path.join(output_dir, 'data'),
    config.num_train_images,
    config.num_val_images,
    image_size=demo.DEMO_IMAGE_SIZE,
    seed=0,
  )
  return demo.shapes_data_params(paths)


def _check_proxy_data(config: SearchConfig) -> None:
  """A proxy that names its own data: its files must exist before Ray starts (else
  every trial would fail on them, on every node).

  Raises:
    ValueError: a missing data file or macro (the message names it).
  """
  if config.proxy is None or config.make_shapes_data:
    return
  from official_spinenet import configurables  # pylint: disable=g-import-not-at-top

  configurables.parse_gin(config.proxy.gin_files, config.proxy.gin_params)
  try:
    configurables.build_experiment()['task'].validate('train_and_eval')
  except ValueError as e:
    raise ValueError(
      f'SearchConfig.make_shapes_data is False, so the proxy ({", ".join(config.proxy.gin_files)}'
      f' and ProxyConfig.gin_params) must name its data: {e}'
    ) from e


def _new_ray_temp_dir(output_dir: str) -> str:
  """A short private folder for Ray's session (its socket paths must stay under 108
  characters); removes the one a killed run of output_dir left behind."""
  marker = os.path.join(output_dir, RAY_TEMP_FILE)
  if os.path.exists(marker):
    with open(marker, encoding='utf-8') as f:
      old = f.read().strip()
    # Only a folder this function made: never whatever the file names.
    if os.path.dirname(old) == _RAY_TEMP_ROOT and os.path.basename(old).startswith('ray'):
      shutil.rmtree(old, ignore_errors=True)
  temp_dir = tempfile.mkdtemp(prefix='ray', dir=_RAY_TEMP_ROOT)
  files.atomic_write(marker, temp_dir)
  return temp_dir


def _start_ray(config: SearchConfig, temp_dir: str) -> int:
  """Starts a private local Ray cluster (or joins RAY_ADDRESS); returns CPUs per trial."""
  os.environ.setdefault('RAY_USAGE_STATS_ENABLED', '0')
  os.environ.setdefault('TUNE_GLOBAL_CHECKPOINT_S', _SNAPSHOT_SECONDS)
  os.environ.setdefault('RAY_AIR_NEW_OUTPUT', '0')  # verbose=0 then prints nothing
  quiet = dict(include_dashboard=False, log_to_driver=False, logging_level=py_logging.WARNING)
  address = os.environ.get('RAY_ADDRESS')
  if address:
    ray.init(address=address, **quiet)
    return config.trial_cpus(int(ray.cluster_resources().get('CPU', 1)))
  cpus = config.trial_cpus(os.cpu_count() or 1)
  ray.init(
    address='local',
    # Enough logical CPUs that max_concurrent_trials really run at once.
    num_cpus=max(os.cpu_count() or 1, cpus * config.max_concurrent_trials),
    object_store_memory=_OBJECT_STORE_BYTES,
    _temp_dir=temp_dir,
    **quiet,
  )
  return cpus


def _trial_dirname(trial) -> str:
  return f'trial_{trial.trial_id}'


def _tuner(config: SearchConfig, space, output_dir: str, data_params, cpus: int):
  """A new Tuner, or the restored one if output_dir holds a run."""
  trainable = tune.with_resources(
    tune.with_parameters(
      _trial,
      space=space,
      search=config,
      data_params=tuple(data_params),
      trials_dir=os.path.join(output_dir, TRIALS_DIR),
      num_threads=cpus,
    ),
    {'cpu': cpus},
  )
  run_dir = os.path.join(output_dir, RUN_NAME)
  if tune.Tuner.can_restore(run_dir):
    logging.info('Resuming the search in %s.', run_dir)
    # Errored trials were fed back as failed: re-running them would count them twice.
    return tune.Tuner.restore(run_dir, trainable, resume_unfinished=True, restart_errored=False)
  searcher = tune_searcher.PyGloveSearcher(
    space,
    config.algorithm,
    config.algorithm_options,
    seed=config.seed,
    num_trials=config.num_trials,
    failed_reward=config.failed_reward,
  )
  log = _TrialLog(
    os.path.join(output_dir, CSV_FILE),
    config.num_trials,
    config.max_concurrent_trials,
    config.failed_reward,
  )
  return tune.Tuner(
    trainable,
    tune_config=tune.TuneConfig(
      search_alg=searcher,
      num_samples=config.num_trials,
      max_concurrent_trials=config.max_concurrent_trials,
      metric='reward',
      mode='max',
      # One worker process serves many trials: TensorFlow loads once per worker.
      reuse_actors=True,
      trial_dirname_creator=_trial_dirname,
    ),
    run_config=tune.RunConfig(
      name=RUN_NAME,
      storage_path=output_dir,
      failure_config=tune.FailureConfig(max_failures=0),
      verbose=0,
      callbacks=[log],
    ),
  )


def run_search(config: SearchConfig, output_dir: str) -> SearchResult:
  """Runs (or resumes) a search and writes its best architectures.

  Args:
    config: the search.
    output_dir: the run's folder (see the module docstring); a folder that holds
      a run of the same configuration resumes it, or, if all its trials are in
      trials.csv, reports it without starting Ray.

  Returns:
    The best reward and where the results are (of the trials done so far if it
    was stopped: `SearchResult.finished`).

  Raises:
    ValueError: output_dir holds a run of another configuration; a bad space option.
  """
  output_dir = os.path.abspath(output_dir)
  space = spaces.build_space(config.space, **config.space_options)
  os.makedirs(output_dir, exist_ok=True)
  _check_proxy_data(config)
  _check_or_write_config(config, output_dir)
  csv_path = os.path.join(output_dir, CSV_FILE)
  rows = _rows_so_far(csv_path)
  if len(rows) >= config.num_trials:
    # Finished: its configuration and trials.csv are the whole result (best/ is decoded
    # from the DNA), so a run carried to another machine without Tune's state is
    # reported, not searched again.
    logging.info('The search in %s has all %d trials.', output_dir, config.num_trials)
  else:
    data_params = _data_params(config, output_dir)
    temp_dir = _new_ray_temp_dir(output_dir)
    try:
      cpus = _start_ray(config, temp_dir)
      _tuner(config, space, output_dir, data_params, cpus).fit()
    finally:
      ray.shutdown()
      shutil.rmtree(temp_dir, ignore_errors=True)
    rows = _rows_so_far(csv_path)
  best = write_best(rows, space, output_dir, config.top_k)
  return SearchResult(
    best_reward=float(best[0]['reward']) if best else None,
    best_specs_path=os.path.join(output_dir, BEST_DIR, '1.json') if best else None,
    csv_path=csv_path,
    num_trials_done=len(rows),
    output_dir=output_dir,
    num_trials=config.num_trials,
  )


def _ranked(rows: Sequence[Dict[str, str]]) -> List[Dict[str, str]]:
  """Trials that did not fail, best reward first (ties: the earlier trial)."""
  ok = [r for r in rows if r['status'] != 'failed' and r['dna']]
  return sorted(ok, key=lambda r: -float(r['reward']))


def write_best(
  rows: Sequence[Dict[str, str]], space: spaces.SearchSpace, output_dir: str, top_k: int
) -> List[Dict[str, str]]:
  """best/<k>.json, <k>.gin and a drawing of the top_k trials; returns their rows.

  The specs are decoded from each trial's DNA, so they need nothing the trials wrote.
  """
  import pyglove as pg  # pylint: disable=g-import-not-at-top

  from official_spinenet.visualize import architecture  # pylint: disable=g-import-not-at-top

  best = _ranked(rows)[:top_k]
  best_dir = os.path.join(output_dir, BEST_DIR)
  for rank, row in enumerate(best, start=1):
    dna = pg.DNA.from_numbers([int(n) for n in row['dna'].split()], space.dna_spec)
    specs = space.decode(dna)
    specs_path = os.path.join(best_dir, f'{rank}.json')
    space.spec_class.save(specs, specs_path)
    header = f'# Search rank {rank}: trial {row["trial_id"]}, reward {row["reward"]}.\n'
    bindings = space.gin_bindings(os.path.abspath(specs_path))
    files.atomic_write(os.path.join(best_dir, f'{rank}.gin'), header + '\n'.join(bindings) + '\n')
    title = f'{space.name} search #{rank}: reward {float(row["reward"]):.4g}'
    try:
      architecture.draw_searched(
        specs, space.builder, os.path.join(best_dir, str(rank)), title, space.builder_overrides()
      )
    except (ValueError, KeyError) as e:  # a drawing never loses the search's result
      logging.warning('Could not draw best architecture %d: %s', rank, e)
  return best

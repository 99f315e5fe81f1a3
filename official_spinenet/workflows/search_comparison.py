"""Search algorithms at an equal budget (issue 12): PPO, regularized evolution, random search.

  options = search_comparison.ComparisonOptions(output_dir='/tmp/compare', num_trials=24)
  study = search_comparison.run_comparison(options)
  study['curves']['ppo']['mean']        # best-so-far reward after 1..num_trials trials

NAS-FPN (Fig. 4) and SpineNet compare their RL controller with random search by the best
reward found after a number of trials. `run_comparison` runs one ordinary search
(`workflows/search.run_search`, the gin files' space and proxy) per algorithm and seed,
each with the same number of trials, in <output_dir>/<algorithm>/seed<k>; each resumes if
interrupted, and the runs go seed by seed (every algorithm's seed 0 first), so a study cut
short still compares the algorithms on the seeds it finished. From each run's trials.csv
(rows in completion order) it takes the best-so-far reward after each trial (a failed
trial scores `SearchConfig.failed_reward`, as in the search), and over the seeds the mean,
min and max per trial count.

Small budgets: the papers' algorithm settings assume thousands of trials (evolution's
initial population of 20 is random search; PPO updates every 8 feedbacks). With tens of
trials, `DEFAULT_ALGORITHM_OPTIONS` shrinks both so that each algorithm gets to act on
its feedback: population 8, tournament 3; PPO batches of 4.
"""

import dataclasses
import os
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from official_spinenet import configurables
from official_spinenet.search import algorithms
from official_spinenet.search import search_config as search_config_lib
from official_spinenet.utils import files
from official_spinenet.utils import tables
from official_spinenet.workflows import search

DEFAULT_ALGORITHM_OPTIONS = {
  'random': {},
  'evolution': {'population_size': 8, 'tournament_size': 3},
  'ppo': {'batch_size': 4},
}
STUDY_FILE = 'comparison.json'


@dataclasses.dataclass(frozen=True)
class ComparisonOptions:
  """What `run_comparison` searches and where (the tool's flags).

  Attributes:
    output_dir: one search per <algorithm>/seed<k>, comparison.json / .md.
    gin_files: the search (space, proxy, concurrency), as for spinenet-search.
    gin_params: bindings after the files; the algorithm, its options, the seed and the
      number of trials are bound after these.
    algorithms: names of `algorithms.ALGORITHMS`.
    seeds: one search per algorithm and seed.
    num_trials: the equal budget.
    algorithm_options: per algorithm, `SearchConfig.algorithm_options`.
  """

  output_dir: str = '/tmp/search_comparison'
  gin_files: Tuple[str, ...] = ('search/spinenet_shapes.gin',)
  gin_params: Tuple[str, ...] = ()
  algorithms: Tuple[str, ...] = algorithms.ALGORITHMS
  seeds: Tuple[int, ...] = (0, 1, 2)
  num_trials: int = 24
  algorithm_options: Mapping[str, Mapping[str, Any]] = dataclasses.field(
    default_factory=lambda: dict(DEFAULT_ALGORITHM_OPTIONS)
  )

  def __post_init__(self):
    for name in ('gin_files', 'gin_params', 'algorithms', 'seeds'):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    unknown = sorted(set(self.algorithms) - set(algorithms.ALGORITHMS))
    if unknown or not self.algorithms:
      raise ValueError(
        f'algorithms: unknown or none {unknown or list(self.algorithms)}; choose from '
        f'{algorithms.ALGORITHMS}.'
      )
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f'seeds must be distinct and at least one, got {self.seeds}.')
    if self.num_trials < 1:
      raise ValueError(f'num_trials must be >= 1, got {self.num_trials}.')


def run_dir(output_dir: str, algorithm: str, seed: int) -> str:
  return os.path.join(output_dir, algorithm, f'seed{seed}')


def search_configs(options: ComparisonOptions) -> Dict[Tuple[str, int], Any]:
  """(algorithm, seed) -> SearchConfig, seed by seed; all built (and checked) before any run.

  Raises:
    ValueError: a bad gin file, binding or algorithm option (the message names it).
  """
  configs = {}
  for seed in options.seeds:
    for algorithm in options.algorithms:
      params = list(options.gin_params) + [
        f"SearchConfig.algorithm = '{algorithm}'",
        f'SearchConfig.algorithm_options = {dict(options.algorithm_options.get(algorithm, {}))!r}',
        f'SearchConfig.seed = {seed}',
        f'SearchConfig.num_trials = {options.num_trials}',
      ]
      configurables.parse_gin(options.gin_files, params)
      config = configurables.search_config()
      algorithms.build_algorithm(config.algorithm, seed, **config.algorithm_options)  # checks them
      configs[(algorithm, seed)] = config
  return configs


def best_so_far(rows: Sequence[Mapping[str, str]], num_trials: int) -> np.ndarray:
  """The best reward after each of the first `num_trials` rows (completion order).

  Raises:
    ValueError: fewer rows than num_trials (the run did not finish).
  """
  if len(rows) < num_trials:
    raise ValueError(f'Only {len(rows)} of {num_trials} trials are done.')
  rewards = np.array([float(r['reward']) for r in rows[:num_trials]])
  return np.maximum.accumulate(rewards)


def curves(per_run: Mapping[Tuple[str, int], np.ndarray]) -> Dict[str, Dict[str, List[float]]]:
  """Per algorithm: mean, min and max over seeds of the best-so-far reward, per trial."""
  result = {}
  for algorithm in dict.fromkeys(a for a, _ in per_run):
    stacked = np.stack([c for (a, _), c in per_run.items() if a == algorithm])
    result[algorithm] = {
      'mean': stacked.mean(axis=0).tolist(),
      'min': stacked.min(axis=0).tolist(),
      'max': stacked.max(axis=0).tolist(),
      'seeds': len(stacked),
    }
  return result


def markdown(per_run: Mapping[Tuple[str, int], np.ndarray], seeds: Sequence[int]) -> str:
  """Per algorithm: the best reward of each seed, their mean, and the mean at half budget."""
  header = ['algorithm', *(f'best, seed {s}' for s in seeds), 'mean best', 'mean best at half']
  rows = []
  for algorithm in dict.fromkeys(a for a, _ in per_run):
    finals = [per_run[(algorithm, s)][-1] if (algorithm, s) in per_run else None for s in seeds]
    done = [per_run[(algorithm, s)] for s in seeds if (algorithm, s) in per_run]
    half = [c[(len(c) - 1) // 2] for c in done]
    rows.append([algorithm, *finals, float(np.mean([c[-1] for c in done])), float(np.mean(half))])
  return tables.format_table(header, rows, markdown=True, digits=4)


def plot(study_curves: Mapping[str, Mapping[str, Sequence[float]]], path: str, title: str) -> None:
  """Best-so-far reward against trials: the mean over seeds, shaded from min to max."""
  from official_spinenet.utils import charts  # pylint: disable=g-import-not-at-top

  fig = charts.figure(6.4, 4.4)
  ax = fig.subplots()
  for algorithm, curve in study_curves.items():
    trials = np.arange(1, len(curve['mean']) + 1)
    (line,) = ax.plot(trials, curve['mean'], label=f"{algorithm} ({curve['seeds']} seeds)")
    ax.fill_between(trials, curve['min'], curve['max'], color=line.get_color(), alpha=0.15)
  ylabel = 'best reward so far (mean over seeds; band: min-max)'
  charts.label(ax, 'trials', ylabel, title, legend='lower right')
  charts.save_png(fig, path)


def run_comparison(options: ComparisonOptions) -> Dict[str, Any]:
  """Runs (or resumes) every search, then compares their best-so-far curves.

  Returns:
    {'curves', 'markdown', 'runs': {'<algorithm>/seed<k>': best-so-far list},
    'trial_seconds', 'title'}; also written to <output_dir>/comparison.json and .md.

  Raises:
    ValueError: bad options or gin (before any search runs).
    search.SearchStoppedError: a search was stopped (Ctrl+C); running again resumes it.
  """
  configs = search_configs(options)
  per_run, seconds = {}, 0.0
  for (algorithm, seed), config in configs.items():
    result = search.run_search(config, run_dir(options.output_dir, algorithm, seed))
    if not result.finished:  # Ctrl+C: Ray Tune returns; the later runs must not start
      raise search.SearchStoppedError(result.stopped_message)
    rows = search.read_trials_csv(result.csv_path)
    per_run[(algorithm, seed)] = best_so_far(rows, options.num_trials)
    seconds += sum(float(r['seconds'] or 0) for r in rows)
  study = {
    'curves': curves(per_run),
    'markdown': markdown(per_run, options.seeds),
    'runs': {f'{a}/seed{s}': c.tolist() for (a, s), c in per_run.items()},
    'trial_seconds': seconds,
    'title': config_summary(next(iter(configs.values()))),
  }
  files.write_json_atomically(study, os.path.join(options.output_dir, STUDY_FILE))
  files.atomic_write(os.path.join(options.output_dir, 'comparison.md'), study['markdown'] + '\n')
  return study


def config_summary(config: search_config_lib.SearchConfig) -> str:
  """E.g. 'spinenet space, 24 trials, search/proxy_spinenet_shapes.gin TRAIN_STEPS = 75'."""
  if config.proxy is None:
    proxy = 'synthetic reward'
  else:
    proxy = ' '.join((*config.proxy.gin_files, *config.proxy.gin_params))
  return f'{config.space} space, {config.num_trials} trials, {proxy}'

"""Comparing search algorithms at an equal budget: configs, curves, tables, resume order."""

import csv
import os
import shutil

import numpy as np
import pytest

from official_spinenet.workflows import search
from official_spinenet.workflows import search_comparison
from tests import paths

SYNTHETIC = ('testing/search_synthetic.gin',)


def test_configs_bind_algorithm_options_seed_and_budget():
  options = search_comparison.ComparisonOptions(
    gin_files=SYNTHETIC, seeds=(3, 4), num_trials=7, gin_params=('SearchConfig.top_k = 1',)
  )
  configs = search_comparison.search_configs(options)
  # Seed by seed: a study cut short has every algorithm's first seeds.
  assert list(configs) == [(a, s) for s in (3, 4) for a in ('random', 'evolution', 'ppo')]
  for (algorithm, seed), config in configs.items():
    assert (config.algorithm, config.seed, config.num_trials) == (algorithm, seed, 7)
    assert dict(config.algorithm_options) == search_comparison.DEFAULT_ALGORITHM_OPTIONS[algorithm]
    assert config.top_k == 1 and config.proxy is None


@pytest.mark.parametrize(
  'kwargs, message',
  [
    ({'algorithms': ('ppo', 'annealing')}, 'annealing'),
    ({'seeds': (1, 1)}, 'distinct'),
    ({'num_trials': 0}, 'num_trials'),
  ],
)
def test_bad_options_name_the_problem(kwargs, message):
  with pytest.raises(ValueError, match=message):
    search_comparison.ComparisonOptions(**kwargs)


def test_bad_algorithm_option_fails_before_any_search():
  options = search_comparison.ComparisonOptions(
    gin_files=SYNTHETIC, algorithm_options={'evolution': {'population': 8}}
  )
  with pytest.raises(ValueError, match="Unknown option.*'population'"):
    search_comparison.search_configs(options)


def test_best_so_far_and_curves():
  rows = [{'reward': r} for r in ('0.1', '0.3', '0.2', '0.5', '0.4')]
  np.testing.assert_allclose(search_comparison.best_so_far(rows, 4), [0.1, 0.3, 0.3, 0.5])
  with pytest.raises(ValueError, match='Only 5 of 6 trials'):
    search_comparison.best_so_far(rows, 6)
  curves = search_comparison.curves(
    {
      ('ppo', 0): np.array([0.1, 0.4]),
      ('ppo', 1): np.array([0.3, 0.3]),
      ('random', 0): np.array([0.2, 0.2]),
    }
  )
  np.testing.assert_allclose(curves['ppo']['mean'], [0.2, 0.35])
  np.testing.assert_allclose(curves['ppo']['min'], [0.1, 0.3])
  np.testing.assert_allclose(curves['ppo']['max'], [0.3, 0.4])
  assert curves['ppo']['seeds'] == 2 and curves['random']['seeds'] == 1


def _fake_search(calls, stop_at=None):
  """run_search writing a trials.csv whose rewards depend on the algorithm and seed.

  With stop_at=(algorithm, seed), that run stops after one trial, as on Ctrl+C.
  """

  def run_search(config, output_dir):
    calls.append((config.algorithm, config.seed, output_dir))
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, search.CSV_FILE)
    offset = {'random': 0.0, 'evolution': 0.1, 'ppo': 0.2}[config.algorithm] + 0.01 * config.seed
    with open(path, 'w', newline='', encoding='utf-8') as f:
      writer = csv.DictWriter(f, ['reward', 'seconds'])
      writer.writeheader()
      done = 1 if stop_at == (config.algorithm, config.seed) else config.num_trials
      for t in range(done):
        writer.writerow({'reward': offset + 0.1 * (t % 2), 'seconds': 2.0})
    return search.SearchResult(None, None, path, done, output_dir, config.num_trials)

  return run_search


def test_comparison_runs_each_search_and_reports(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(search, 'run_search', _fake_search(calls))
  options = search_comparison.ComparisonOptions(
    output_dir=str(tmp_path), gin_files=SYNTHETIC, seeds=(0, 1), num_trials=3
  )
  study = search_comparison.run_comparison(options)
  assert [c[:2] for c in calls] == [(a, s) for s in (0, 1) for a in ('random', 'evolution', 'ppo')]
  assert calls[0][2] == os.path.join(str(tmp_path), 'random', 'seed0')
  np.testing.assert_allclose(study['curves']['ppo']['mean'], [0.205, 0.305, 0.305])
  assert study['runs']['evolution/seed1'] == pytest.approx([0.11, 0.21, 0.21])
  assert study['trial_seconds'] == pytest.approx(6 * 3 * 2.0)
  assert study['title'] == 'spinenet space, 3 trials, synthetic reward'
  assert '| ppo | 0.3000 | 0.3100 | 0.3050 | 0.3050 |' in study['markdown']
  assert (tmp_path / 'comparison.md').read_text().startswith('| algorithm |')
  search_comparison.plot(study['curves'], str(tmp_path / 'plot.png'), study['title'])
  assert (tmp_path / 'plot.png').read_bytes()[:4] == b'\x89PNG'


def test_a_stopped_search_stops_the_comparison_and_says_how_to_resume(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(search, 'run_search', _fake_search(calls, stop_at=('evolution', 0)))
  options = search_comparison.ComparisonOptions(
    output_dir=str(tmp_path), gin_files=SYNTHETIC, seeds=(0, 1), num_trials=3
  )
  stopped = r'evolution/seed0 stopped after 1 of 3 trials.*resume'
  with pytest.raises(search.SearchStoppedError, match=stopped):
    search_comparison.run_comparison(options)
  assert [c[:2] for c in calls] == [('random', 0), ('evolution', 0)]  # nothing after it


def test_docs_table_is_what_the_committed_searches_give(tmp_path, monkeypatch):
  """docs/search.md section 2 against docs/search_comparison/: the nine searches, as
  committed, are reported without searching again, and their table is in the docs."""
  shutil.copytree(os.path.join(paths.DOCS, 'search_comparison'), tmp_path, dirs_exist_ok=True)

  def no_search(*unused_args, **unused_kwargs):
    raise AssertionError('A committed search is unfinished: it would search again.')

  monkeypatch.setattr(search, '_start_ray', no_search)
  options = search_comparison.ComparisonOptions(output_dir=str(tmp_path), num_trials=16)
  study = search_comparison.run_comparison(options)
  with open(os.path.join(paths.DOCS, 'search.md'), encoding='utf-8') as f:
    docs = f.read()
  for line in study['markdown'].splitlines():
    assert line in docs

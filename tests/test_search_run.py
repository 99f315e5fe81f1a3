"""The search run on Ray Tune (issue 11, parts 4-6): config, searcher, trials, resume.

The fast tests drive the pieces without Ray: `SearchConfig` validation, the
`PyGloveSearcher` adapter (failed trials, FINISHED, save / restore with trials in
flight), a trial's scoring and failure capture, the progress line and best/. The
slow ones run `spinenet-search` in its own session: a synthetic search stopped with
Ctrl+C, resumed, killed with SIGKILL and resumed again, failing proxy trials, and
the tiny real proxy.
"""

# Ray (tune_searcher, workflows.search) comes with the `test` extra; users get it with
# the `search` extra.
import csv
import json
import math
import os
import pickle
import signal
import time

import pytest

from official_spinenet import config_files
from official_spinenet import configurables
from official_spinenet.modeling.backbones import spinenet_specs
from official_spinenet.modeling.decoders import nasfpn_specs
from official_spinenet.search import proxy_config
from official_spinenet.search import search_config
from official_spinenet.search import spaces
from official_spinenet.search import tune_searcher
from official_spinenet.visualize import architecture
from official_spinenet.workflows import search
from tests import search_runs

SearchConfig = search_config.SearchConfig
BAD_BINDING = 'spinenet.not_a_parameter = 1'


@pytest.mark.parametrize(
  'gin_file',
  [
    'search/spinenet_shapes.gin',
    'search/nasfpn_shapes.gin',
    'search/spinenet_coco.gin',
    'testing/search_synthetic.gin',
  ],
)
def test_search_gin_files_give_a_search_config(gin_file):
  configurables.parse_gin([gin_file])
  config = configurables.search_config()
  assert config.space == ('nasfpn' if 'nasfpn' in gin_file else 'spinenet')
  assert config.make_shapes_data == ('coco' not in gin_file)
  if config.proxy is not None:
    for proxy_file in config.proxy.gin_files:
      assert os.path.isfile(config_files.resolve_gin_file(proxy_file))


def test_bad_search_binding_names_it():
  configurables.parse_gin(['testing/search_synthetic.gin'], ['SearchConfig.num_trials = 0'])
  with pytest.raises(ValueError, match='num_trials'):
    configurables.search_config()


@pytest.mark.parametrize(
  'field, value',
  [
    ('space', 'resnet'),
    ('algorithm', 'grid'),
    ('num_trials', 0),
    ('max_concurrent_trials', 0),
    ('cpus_per_trial', 0),
    ('top_k', 0),
    ('failed_reward', math.nan),
    ('num_val_images', 0),
    ('space_options', 3),
    ('make_shapes_data', 'no'),
  ],
)
def test_search_config_names_the_bad_field(field, value):
  with pytest.raises(ValueError, match=f'SearchConfig.{field}'):
    SearchConfig(**{field: value})


def test_a_proxy_with_its_own_data_is_checked_before_ray_starts(tmp_path):
  configurables.parse_gin(['search/spinenet_coco.gin'])
  config = configurables.search_config()  # its data bindings are left to the user
  with pytest.raises(
    ValueError, match='make_shapes_data is False.*train_data.file_pattern is empty'
  ):
    search.run_search(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run' / search.CSV_FILE).exists()


def test_search_config_cpus_split_between_trials():
  assert SearchConfig(max_concurrent_trials=2).trial_cpus(8) == 4
  assert SearchConfig(max_concurrent_trials=4).trial_cpus(2) == 1
  assert SearchConfig(cpus_per_trial=3).trial_cpus(2) == 3


def _searcher(space, algorithm='ppo', num_trials=5):
  return tune_searcher.PyGloveSearcher(
    space, algorithm, seed=1, num_trials=num_trials, failed_reward=-1.0
  )


def test_searcher_scores_failures_and_finishes():
  space = spaces.build_space('spinenet')
  searcher = _searcher(space, 'random', num_trials=4)
  configs = [searcher.suggest(f't{i}') for i in range(4)]
  assert searcher.suggest('t4') == tune_searcher.Searcher.FINISHED
  for config in configs:
    specs = [spinenet_specs.BlockSpec.from_any(s) for s in config['specs']]
    spinenet_specs.validate_block_specs(specs, 2, 3, 7)
  searcher.on_trial_complete('t0', {'reward': 0.25})
  searcher.on_trial_complete('t1', {'reward': math.nan})
  searcher.on_trial_complete('t2', None, error=True)
  searcher.on_trial_complete('t3', {'reward': 0.0, 'status': 'failed', 'error': 'boom'})
  searcher.on_trial_complete('t3', {'reward': 0.5})  # a second completion is ignored
  assert [reward for _, reward in searcher.history] == [0.25, -1.0, -1.0, -1.0]
  assert [dna for dna, _ in searcher.history] == [c['dna'] for c in configs]
  assert searcher.records[3]['error'] == 'boom'
  assert not searcher.in_flight


def test_searcher_restores_trials_in_flight_exactly_once(tmp_path):
  space = spaces.build_space('spinenet')
  searcher = _searcher(space)
  configs = {f't{i}': searcher.suggest(f't{i}') for i in range(3)}
  searcher.on_trial_complete('t0', {'reward': 0.5})
  path = str(tmp_path / 'searcher-state.json')
  searcher.save(path)
  with open(path, encoding='utf-8') as f:
    assert sorted(json.load(f)['in_flight']) == ['t1', 't2']  # plain JSON

  restored = _searcher(space)
  restored.restore(path)
  assert restored.in_flight == ['t1', 't2']
  assert restored.history == [(configs['t0']['dna'], 0.5)] + [
    (configs[t]['dna'], None) for t in ('t1', 't2')
  ]
  # Tune re-runs the in-flight trials under their ids: each is fed back once.
  restored.on_trial_complete('t1', {'reward': 0.1})
  restored.on_trial_complete('t2', {'reward': 0.2})
  restored.on_trial_complete('t2', {'reward': 0.9})
  assert [r for _, r in restored.history] == [0.5, 0.1, 0.2]
  assert restored.suggest('t3')['dna'] and restored.suggest('t4')
  assert restored.suggest('t5') == tune_searcher.Searcher.FINISHED
  # Tune pickles the searcher with the Tuner: the state travels, not the model.
  copy = pickle.loads(pickle.dumps(restored))
  assert copy.history == restored.history and copy.in_flight == restored.in_flight

  with pytest.raises(ValueError, match='space'):
    _searcher(spaces.build_space('nasfpn')).restore(path)


def _config_of(space, name):
  specs = spaces.PUBLISHED_POINTS[name][1]
  return {'dna': space.encode(specs).to_numbers(), 'specs': [s.to_dict() for s in specs]}


def test_trial_scores_synthetic_reward(tmp_path):
  space = spaces.build_space('spinenet')
  config = _config_of(space, 'spinenet49')
  report = search.score_trial(config, space, SearchConfig(proxy=None), (), str(tmp_path), 1)
  assert report['status'] == 'ok' and 0 <= report['reward'] <= 1
  saved = spinenet_specs.BlockSpec.load(str(tmp_path / 'specs.json'))
  assert [s.to_dict() for s in saved] == config['specs']


def test_crashing_trial_is_scored_failed(tmp_path):
  space = spaces.build_space('spinenet')
  proxy = proxy_config.ProxyConfig(
    gin_files=('testing/search_proxy_tiny.gin',), gin_params=(BAD_BINDING,)
  )
  config = SearchConfig(proxy=proxy, failed_reward=-0.5)
  report = search.score_trial(_config_of(space, 'spinenet49'), space, config, (), str(tmp_path), 1)
  assert report['status'] == 'failed' and report['reward'] == -0.5
  assert 'not_a_parameter' in report['error']


def test_progress_line():
  rows = [
    {'trial_id': 'a', 'reward': 0.2, 'status': 'ok', 'seconds': 10},
    {'trial_id': 'b', 'reward': 0.0, 'status': 'failed', 'seconds': 20},
    {'trial_id': 'c', 'reward': 0.4, 'status': 'ok', 'seconds': 30},
  ]
  line = search.progress_line(rows, 7, 2)
  assert line == ('trials 3/7 (1 failed), best reward 0.4 (c), mean trial 20.0 s, ETA 0.7 min')


@pytest.mark.parametrize('space_name', ['r35_sp18', 'nasfpn'])
def test_best_architectures_are_config_files(tmp_path, space_name):
  space = spaces.build_space(space_name)
  point = spaces.PUBLISHED_POINTS['nasfpn' if space_name == 'nasfpn' else space_name][1]
  dna = ' '.join(str(n) for n in space.encode(point).to_numbers())
  rows = [
    {'trial_id': 'x', 'dna': dna, 'reward': '0.3', 'status': 'ok'},
    {'trial_id': 'y', 'dna': dna, 'reward': '0.9', 'status': 'failed'},
  ]
  best = search.write_best(rows, space, str(tmp_path), top_k=3)
  assert [r['trial_id'] for r in best] == ['x']
  specs = space.spec_class.load(str(tmp_path / 'best' / '1.json'))
  if space_name == 'nasfpn':
    nasfpn_specs.validate_cell_specs(specs, 3, 7)
  else:
    spinenet_specs.validate_block_specs(
      specs, len(space.builder_overrides()['stem_block_levels']), 3, 7
    )
  assert list(specs) == list(point)
  gin_text = (tmp_path / 'best' / '1.gin').read_text()
  assert space.gin_bindings(str(tmp_path / 'best' / '1.json'))[0] in gin_text
  assert (tmp_path / 'best' / '1.png').stat().st_size > 0


def test_a_finished_run_is_reported_without_starting_ray(tmp_path, monkeypatch):
  # A finished run carried to another machine: its configuration and trials.csv, no
  # Tune state. It is reported as it is, not searched again (which would overwrite it).
  config = SearchConfig(proxy=None, num_trials=2)
  space = spaces.build_space(config.space)
  point = spaces.PUBLISHED_POINTS['spinenet49'][1]
  dna = ' '.join(str(n) for n in space.encode(point).to_numbers())
  output_dir = str(tmp_path / 'carried')
  os.makedirs(output_dir)
  search._check_or_write_config(config, output_dir)  # pylint: disable=protected-access
  with open(os.path.join(output_dir, search.CSV_FILE), 'w', newline='', encoding='utf-8') as f:
    writer = csv.DictWriter(f, search.CSV_COLUMNS)
    writer.writeheader()
    for trial_id, reward in (('a', 0.2), ('b', 0.4)):
      writer.writerow({'trial_id': trial_id, 'dna': dna, 'reward': reward, 'status': 'ok'})

  def no_ray(*args):
    raise AssertionError(f'Ray started for a finished search: {args}')

  monkeypatch.setattr(search, '_start_ray', no_ray)
  result = search.run_search(config, output_dir)
  assert result.finished and result.num_trials_done == 2 and result.best_reward == 0.4
  best = spinenet_specs.BlockSpec.load(result.best_specs_path)
  assert [s.to_dict() for s in best] == [s.to_dict() for s in point]
  with pytest.raises(ValueError, match='another configuration'):  # still checked first
    search.run_search(SearchConfig(proxy=None, num_trials=2, seed=1), output_dir)


def test_draw_cells_and_other_stems(tmp_path):
  paths = architecture.draw_published('nasfpn', str(tmp_path / 'cells'))
  paths += architecture.draw_published('spinenet', str(tmp_path / 'rsp'), stem_levels=(2, 2, 3, 3))
  assert all(os.path.getsize(p) > 0 for p in paths)
  with pytest.raises(ValueError, match='no stem'):
    architecture.draw_published('nasfpn', str(tmp_path / 'x'), stem_levels=(2, 2))


def _finished_trials(output_dir):
  path = os.path.join(output_dir, search.CSV_FILE)
  return search.read_trials_csv(path) if os.path.exists(path) else []


def _run_to_end(output_dir, timeout=300, **kwargs):
  process = search_runs.start_search(output_dir, **kwargs)
  try:
    returncode = search_runs.wait_for(process, timeout)
  finally:
    left = search_runs.kill_session(process.pid)
  assert returncode == 0, search_runs.read_log(output_dir)[-3000:]
  assert not left, f'Ray processes outlived the search: {left}'
  return search_runs.read_log(output_dir)


def _searcher_state(output_dir):
  run_dir = os.path.join(output_dir, search.RUN_NAME)
  # One file per session (the resumed run adds one): the newest is what Tune restores.
  name = max(n for n in os.listdir(run_dir) if n.startswith('searcher-state-'))
  with open(os.path.join(run_dir, name), encoding='utf-8') as f:
    return json.load(f)


def _wait_for_trials(process, output_dir, count):
  deadline = time.monotonic() + 240
  while len(_finished_trials(output_dir)) < count and process.poll() is None:
    assert time.monotonic() < deadline, search_runs.read_log(output_dir)[-3000:]
    time.sleep(0.2)
  assert process.poll() is None, search_runs.read_log(output_dir)[-3000:]


@pytest.mark.slow
def test_search_resumes_after_ctrl_c_and_after_sigkill(tmp_path):
  output_dir = str(tmp_path / 'run')
  env = {search.SYNTHETIC_DELAY_ENV: '1'}
  # Ctrl+C: Ray Tune saves its state and returns; the binary says so and exits 130.
  process = search_runs.start_search(output_dir, env=env)
  try:
    _wait_for_trials(process, output_dir, 2)
    process.send_signal(signal.SIGINT)
    returncode = search_runs.wait_for(process, 120)
  finally:
    left = search_runs.kill_session(process.pid)
  log = search_runs.read_log(output_dir)
  assert returncode == 130, log[-3000:]
  assert not left, f'Ray processes outlived Ctrl+C: {left}'
  stopped_at = len(_finished_trials(output_dir))
  assert f'stopped after {stopped_at} of 12 trials; run the same command again' in log
  assert 2 <= stopped_at < 12

  # SIGKILL of the resumed search, at any moment: the next run resumes again.
  process = search_runs.start_search(output_dir, env=env)
  try:
    _wait_for_trials(process, output_dir, stopped_at + 2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
  finally:
    left = search_runs.kill_session(process.pid)
  assert not left, f'Ray processes outlived the kill: {left}'
  done_before = len(_finished_trials(output_dir))
  assert stopped_at + 2 <= done_before < 12
  with open(os.path.join(output_dir, search.RAY_TEMP_FILE), encoding='utf-8') as f:
    killed_temp_dir = f.read().strip()
  assert os.path.isdir(killed_temp_dir)

  log = _run_to_end(output_dir, env=env)
  rows = _finished_trials(output_dir)
  assert len(rows) == 12 and len({r['trial_id'] for r in rows}) == 12
  assert all(r['status'] == 'ok' for r in rows)
  state = _searcher_state(output_dir)
  assert not state['in_flight'] and len(state['trials']) == 12
  assert all(t['reward'] is not None for t in state['trials'])
  # Every trial Tune ran was proposed once and fed back once.
  assert sorted(t['trial_id'] for t in state['trials']) == sorted(r['trial_id'] for r in rows)
  assert 'trials 12/12' in log and 'ETA' in log
  assert not os.path.exists(killed_temp_dir)  # the resumed run removed the killed run's
  best = spinenet_specs.BlockSpec.load(os.path.join(output_dir, 'best', '1.json'))
  spinenet_specs.validate_block_specs(best, 2, 3, 7)
  assert float(rows[0]['reward']) <= max(float(r['reward']) for r in rows)


def _tiny_proxy(*more):
  """Bindings of a 2-trial search with the tiny proxy on 8 + 4 shapes images.

  The space is SpineNet's without intermediate blocks: each point is the five output
  blocks (levels, types, parents searched), the size of the tiny proxy's default
  backbone; a point of the full space has 15 blocks, which take most of a trial's time
  to build and trace.
  """
  return [
    'SearchConfig.num_trials = 2',
    "SearchConfig.space_options = {'intermediate_block_levels': ()}",
    'SearchConfig.proxy = @ProxyConfig()',
    'SearchConfig.num_train_images = 8',
    'SearchConfig.num_val_images = 4',
    "ProxyConfig.gin_files = ['testing/search_proxy_tiny.gin']",
    *more,
  ]


@pytest.mark.slow
def test_failing_trials_do_not_stop_the_search(tmp_path):
  output_dir = str(tmp_path / 'run')
  # One at a time: the second trial starts after the first failed, in the same Ray
  # worker (Tune reuses it), which imports the training stack once.
  bindings = _tiny_proxy(
    'SearchConfig.max_concurrent_trials = 1', f"ProxyConfig.gin_params = ['{BAD_BINDING}']"
  )
  _run_to_end(output_dir, gin_params=bindings)
  rows = _finished_trials(output_dir)
  assert len(rows) == 2 and {r['status'] for r in rows} == {'failed'}
  assert all('not_a_parameter' in r['error'] for r in rows)
  assert not os.path.exists(os.path.join(output_dir, 'best', '1.json'))


@pytest.mark.slow
def test_tiny_proxy_search(tmp_path):
  output_dir = str(tmp_path / 'run')
  # One trial: the synthetic searches above already run trials two at a time; this
  # one checks that a real proxy trial runs inside a Ray worker and reports back.
  _run_to_end(
    output_dir,
    timeout=540,
    gin_params=_tiny_proxy(
      'SearchConfig.num_trials = 1',
      'SearchConfig.max_concurrent_trials = 1',
      'ProxyConfig.latency_runs = 1',
    ),
  )
  rows = _finished_trials(output_dir)
  assert len(rows) == 1, rows
  for row in rows:
    assert row['status'] == 'ok', row['error']
    assert float(row['params']) > 0 and float(row['multiply_adds']) > 0
    assert float(row['latency_ms']) > 0 and row['AP'] != ''
  assert os.path.exists(os.path.join(output_dir, 'best', '1.gin'))

"""The proxy-fidelity study: architectures, jobs, Kendall's tau, tables, a tiny real run."""

import json
import os

import pytest

from official_spinenet.search import spaces
from official_spinenet.workflows import proxy_fidelity

TINY = ('testing/search_proxy_tiny.gin',)
# One intermediate block besides the 5 output blocks: random points of 6 blocks, not
# the full space's 16, which take most of a tiny job's time to build and trace.
SMALL_RANDOM = {'intermediate_block_levels': (4,)}


def test_kendall_tau_matches_a_count_by_hand():
  # Pairs of [1, 2, 3, 4] vs [1, 3, 2, 4]: 5 concordant, 1 discordant -> (5 - 1) / 6.
  tau, p = proxy_fidelity.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4])
  assert tau == pytest.approx(4 / 6)
  assert 0 < p <= 1
  assert proxy_fidelity.kendall_tau([0.1, 0.2, 0.3], [0.3, 0.2, 0.1])[0] == pytest.approx(-1.0)
  with pytest.raises(ValueError, match='equal-length'):
    proxy_fidelity.kendall_tau([1, 2], [1])


def test_architectures_are_saved_points_reproducible_by_seed(tmp_path):
  archs = proxy_fidelity.architectures(str(tmp_path), num_random=2, seed=0)
  assert [a.name for a in archs] == [*proxy_fidelity.PUBLISHED, 'random0', 'random1']
  for arch in archs:
    space = spaces.build_space(arch.space)
    specs = space.spec_class.load(arch.specs_path)
    space.validate(specs)
    assert arch.gin_bindings()[0] == f"spinenet.block_specs = '{arch.specs_path}'"
  again = proxy_fidelity.architectures(str(tmp_path / 'again'), num_random=2, seed=0)
  other = proxy_fidelity.architectures(str(tmp_path / 'other'), num_random=2, seed=1)

  def text(arch):
    with open(arch.specs_path, encoding='utf-8') as f:
      return f.read()

  assert text(again[-1]) == text(archs[-1])
  assert text(other[-1]) != text(archs[-1])
  assert text(archs[-1]) != text(archs[-2])


def test_random_points_come_from_the_space_the_options_build(tmp_path):
  archs = proxy_fidelity.architectures(str(tmp_path), 2, 0, (), SMALL_RANDOM)
  small = spaces.build_space('spinenet', **SMALL_RANDOM)
  for arch in archs:
    specs = small.spec_class.load(arch.specs_path)
    assert len(specs) == 6 and small.decode(small.encode(specs)) == list(specs)
  stem = {'stem_block_levels': (2, 2, 3)}
  (arch,) = proxy_fidelity.architectures(str(tmp_path / 'stem'), 1, 0, (), stem)
  assert arch.gin_bindings()[1] == 'spinenet.stem_block_levels = (2, 2, 3)'
  options = proxy_fidelity.FidelityOptions(random_space_options=SMALL_RANDOM)
  assert options.random_space_options == SMALL_RANDOM


def test_jobs_bind_protocol_then_data_then_architecture(tmp_path):
  options = proxy_fidelity.FidelityOptions(
    output_dir=str(tmp_path), num_random=0, proxy_steps=(300, 75), gin_params=('A = 1',)
  )
  archs = proxy_fidelity.architectures(str(tmp_path), 0, 0, options.published)
  jobs = proxy_fidelity.jobs(options, archs, ["TRAIN_FILE_PATTERN = 'x'"])
  assert len(jobs) == 3 * len(archs)
  assert [j.protocol for j in jobs[:: len(archs)]] == ['full', 'proxy300', 'proxy75']
  full, proxy = jobs[0], jobs[len(archs)]
  assert full.gin_files == proxy_fidelity.FULL_GIN_FILES
  assert proxy.gin_files == proxy_fidelity.PROXY_GIN_FILES
  bindings = archs[0].gin_bindings()
  assert full.gin_params == ('A = 1', "TRAIN_FILE_PATTERN = 'x'", *bindings)
  assert proxy.gin_params == ('A = 1', 'TRAIN_STEPS = 300', "TRAIN_FILE_PATTERN = 'x'", *bindings)
  assert proxy.job_dir == os.path.join(str(tmp_path), 'runs', 'proxy300', 'spinenet49')
  # An R-SP point's longer stem is bound in every one of its jobs.
  assert archs[-1].name == 'r35_sp18'
  stem = 'spinenet.stem_block_levels = (2, 2, 3, 3, 3, 4, 4, 4, 4, 4, 5)'
  assert all(j.gin_params[-1] == stem for j in jobs if j.architecture.name == 'r35_sp18')


@pytest.mark.parametrize(
  'kwargs, message',
  [
    ({'proxy_steps': ()}, 'proxy_steps'),
    ({'proxy_steps': (10, 10)}, 'repeated'),
    ({'published': ('nasfpn',)}, 'not SpineNet backbones'),
    ({'published': ('spinenet49',), 'num_random': 1}, 'at least 3 architectures'),
    ({'workers': 0}, 'workers'),
    ({'random_space_options': {'levels': (4,)}}, r"Unknown option\(s\) \['levels'\]"),
  ],
)
def test_bad_options_name_the_problem(kwargs, message):
  with pytest.raises(ValueError, match=message):
    proxy_fidelity.FidelityOptions(**kwargs)


def _result(arch, protocol, ap, status='ok'):
  return {'architecture': arch, 'protocol': protocol, 'AP': ap, 'AP50': 2 * ap, 'status': status}


def test_summary_rows_taus_and_table():
  results = [_result(a, 'full', v) for a, v in (('a', 0.3), ('b', 0.2), ('c', 0.1))]
  results += [
    _result(
      'a',
      'proxy5',
      0.03,
    ),
    _result('b', 'proxy5', 0.01),
    _result('c', 'proxy5', 0.02),
  ]
  results[-1]['params'] = 1.5e6
  results += [
    _result('a', 'proxy9', 0.0, 'failed'),
    _result('b', 'proxy9', 0.2),
    _result('c', 'proxy9', 0.1),
  ]
  rows, taus = proxy_fidelity.summarize(results, ('full', 'proxy5', 'proxy9'))
  assert [r['architecture'] for r in rows] == ['a', 'b', 'c']
  assert taus['proxy5']['AP']['tau'] == pytest.approx(1 / 3)
  assert taus['proxy9']['AP50']['tau'] == pytest.approx(-1 / 3)
  table = proxy_fidelity.markdown(rows, taus, ('full', 'proxy5', 'proxy9'))
  assert '| c | 1.500 |' in table
  assert '0.000 (failed)' in table
  assert '| proxy5 | 0.33 (' in table
  tied = {'proxy5': {m: {'tau': float('nan'), 'p': float('nan')} for m in ('AP', 'AP50')}}
  assert '| proxy5 | undefined (all tied) |' in proxy_fidelity.markdown(
    rows, tied, ('full', 'proxy5')
  )


@pytest.mark.slow
def test_tiny_study_runs_resumes_and_plots(tmp_path):
  options = proxy_fidelity.FidelityOptions(
    output_dir=str(tmp_path),
    published=(),  # the published points' jobs are pinned down above; they train as these
    num_random=3,
    random_space_options=SMALL_RANDOM,
    proxy_steps=(1,),
    full_gin_files=TINY,
    proxy_gin_files=TINY,
    num_train_images=8,
    num_val_images=4,
    latency_runs=1,
  )
  study = proxy_fidelity.run_study(options)
  assert [r['architecture'] for r in study['rows']] == ['random0', 'random1', 'random2']
  for row in study['rows']:
    assert row['full/status'] == 'ok' and row['proxy1/status'] == 'ok'
    assert row['params'] > 0 and row['multiply_adds'] > 0
  with open(tmp_path / 'runs' / 'proxy1' / 'random1' / 'log.txt', encoding='utf-8') as f:
    assert 'Proxy trial in' in f.read()
  result_files = sorted(str(p) for p in tmp_path.glob('runs/*/*/result.json'))
  assert len(result_files) == 6
  mtimes = [os.path.getmtime(p) for p in result_files]

  again = proxy_fidelity.run_study(options)  # resumes: every job is read back, none rerun
  assert [os.path.getmtime(p) for p in result_files] == mtimes
  assert again['rows'] == study['rows']
  with open(tmp_path / proxy_fidelity.STUDY_FILE, encoding='utf-8') as f:
    assert json.load(f)['rows'] == study['rows']
  plot_path = tmp_path / 'fidelity.png'
  rows = [{**r, 'full/AP': 0.1 * i, 'proxy1/AP': 0.05 * i} for i, r in enumerate(study['rows'])]
  proxy_fidelity.plot(rows, {'proxy1': {'AP': {'tau': 1.0, 'p': 0.3}}}, str(plot_path))
  assert plot_path.read_bytes()[:4] == b'\x89PNG'

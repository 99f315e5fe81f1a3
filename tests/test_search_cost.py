"""The search-cost estimate: proxy sizes from gin, the per-trial formula, the cluster simulation."""

import csv

import pytest

from official_spinenet.workflows import search
from official_spinenet.workflows import search_cost


def test_simulation_fills_the_first_free_machine():
  assert search_cost.simulate_wall_seconds([3, 1, 1, 1], machines=2) == 3
  assert search_cost.simulate_wall_seconds([1, 1, 1, 3], machines=2) == 4  # 3 starts at 1
  assert search_cost.simulate_wall_seconds([2] * 7, machines=3) == 6  # ceil(7 / 3) rounds
  result = search_cost.simulate(10.0, num_trials=7, machines=3, spread=[], seed=0)
  assert result == {'wall_seconds': 30.0, 'machine_seconds': 70.0, 'utilisation': 70 / 90}


def test_spread_draws_are_seeded_and_scale_the_time(tmp_path):
  path = tmp_path / search.CSV_FILE
  with open(path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.DictWriter(f, ['status', 'seconds'])
    writer.writeheader()
    for status, seconds in (('ok', 100), ('ok', 200), ('ok', 300), ('failed', 5), ('ok', '')):
      writer.writerow({'status': status, 'seconds': seconds})
  spread = search_cost.spread_from_trials_csv(str(path))
  assert spread == [0.5, 1.0, 1.5]
  one = search_cost.simulate(10.0, 50, 4, spread, seed=1)
  assert one == search_cost.simulate(10.0, 50, 4, spread, seed=1)
  assert (
    one['machine_seconds'] != search_cost.simulate(10.0, 50, 4, spread, seed=2)['machine_seconds']
  )
  assert 5.0 * 50 <= one['machine_seconds'] <= 15.0 * 50
  with open(path, 'w', encoding='utf-8') as f:
    f.write('status,seconds\nfailed,3\n')
  with pytest.raises(ValueError, match='no finished trial'):
    search_cost.spread_from_trials_csv(str(path))


def test_the_coco_proxy_is_five_epochs_at_512():
  shape = search_cost.proxy_shape('search/proxy_spinenet_coco.gin', [])
  assert (shape.image_size, shape.train_batch_size, shape.num_classes) == (512, 64, 91)
  assert 5 * 118287 <= shape.train_images < 5 * 118287 + 64
  seconds = search_cost.trial_seconds(shape, per_image=0.01, reward_images=300)
  assert seconds == pytest.approx(0.01 * (shape.train_images + 100))


def test_estimate_measures_a_tiny_proxy_and_tabulates_every_cluster():
  options = search_cost.CostOptions(
    proxy_gin_file='testing/search_proxy_tiny.gin',
    gin_params=("TRAIN_FILE_PATTERN = 'unused'",),
    batch_size=1,
    steps=1,
    repeats=1,
    num_trials=(4, 8),
    machines=(1, 2),
    reward_images=0,
  )
  result = search_cost.estimate(options)
  assert result['per_image_seconds'] > 0 and result['gflops'] > 0
  assert result['trial_seconds'] == pytest.approx(result['per_image_seconds'] * 2 * 4)
  assert [(r['num_trials'], r['machines']) for r in result['rows']] == [
    (4, 1),
    (4, 2),
    (8, 1),
    (8, 2),
  ]
  assert result['rows'][1]['wall_seconds'] == pytest.approx(2 * result['trial_seconds'])
  assert result['markdown'].count('\n') == 5


@pytest.mark.parametrize(
  'kwargs, message', [({'machines': ()}, 'machines'), ({'batch_size': 0}, 'batch_size')]
)
def test_bad_options_name_the_problem(kwargs, message):
  with pytest.raises(ValueError, match=message):
    search_cost.CostOptions(**kwargs)

"""What an architecture search costs at COCO scale, from a measured training step (issue 12).

  estimate = search_cost.estimate(search_cost.CostOptions())
  print(estimate['markdown'])

A trial of a COCO-scale proxy (gin_configs/search/proxy_spinenet_coco.gin: SpineNet
Sec. 4.1's 5 epochs at 512 px) is too long to run here, so its cost is computed:

1. measured: seconds per training image of the proxy's model on this machine, its
   training step at the gin file's IMAGE_SIZE (`train_throughput.our_loop`: the
   trainer's compiled loop on one batch; median of `repeats` runs of `steps` steps);
2. computed: one trial = TRAIN_STEPS x TRAIN_BATCH_SIZE training images plus the reward's
   held-out images (NAS-FPN Sec. 3.1: 7,392), each forward pass counted as a third of a
   training image (a training step does the forward pass, and about twice its arithmetic
   again for the gradients);
3. simulated: a Ray cluster of K machines like this one, each running one trial at a time
   on all its cores, takes trials from one queue as its machines come free (what Tune does
   with `max_concurrent_trials = K`). Trial times vary with the architecture: each trial's
   time is the computed one times a factor drawn (seeded) from a real search's spread,
   trial seconds / their median (`--trials_csv`: a search's trials.csv; without it every
   trial takes the computed time). The wall time is the last trial's end.

The controller's own time (a PPO update every few trials: milliseconds) is left out.
"""

import dataclasses
import heapq
import random
import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

from official_spinenet import configurables
from official_spinenet.utils import tables
from official_spinenet.utils import timing

# NAS-FPN Sec. 3.1 rewards its controller with AP on 7,392 images held out of train2017.
REWARD_IMAGES = 7392
FORWARD_SHARE = 1 / 3  # a forward pass as a share of a training image's arithmetic


@dataclasses.dataclass(frozen=True)
class CostOptions:
  """What `estimate` measures and simulates (the tool's flags).

  Attributes:
    proxy_gin_file: the COCO-scale proxy, one gin file (its IMAGE_SIZE, TRAIN_STEPS,
      TRAIN_BATCH_SIZE and model are used).
    gin_params: bindings after it (e.g. another architecture).
    batch_size: images per measured step (the cost is per image).
    steps: steps per timed run.
    repeats: timed runs (the median counts).
    num_trials: search sizes to simulate.
    machines: cluster sizes to simulate.
    reward_images: held-out images each trial is evaluated on.
    trials_csv: a search's trials.csv, whose trial times give the spread; None: none.
    seed: seed of the drawn factors.
  """

  proxy_gin_file: str = 'search/proxy_spinenet_coco.gin'
  gin_params: Tuple[str, ...] = ()
  batch_size: int = 2
  steps: int = 2
  repeats: int = 3
  num_trials: Tuple[int, ...] = (1000, 5000)
  machines: Tuple[int, ...] = (1, 10, 100)
  reward_images: int = REWARD_IMAGES
  trials_csv: Optional[str] = None
  seed: int = 0

  def __post_init__(self):
    for name in ('gin_params', 'num_trials', 'machines'):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    for name in ('batch_size', 'steps', 'repeats'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}.')
    for name in ('num_trials', 'machines'):
      values = getattr(self, name)
      if not values or any(v < 1 for v in values):
        raise ValueError(f'{name} must be positive integers, got {values}.')
    if self.reward_images < 0:
      raise ValueError(f'reward_images must be >= 0, got {self.reward_images}.')


@dataclasses.dataclass(frozen=True)
class ProxyShape:
  """What one trial of a proxy trains (from its gin file)."""

  image_size: int
  train_steps: int
  train_batch_size: int
  anchor_size: float
  num_classes: int

  @property
  def train_images(self) -> int:
    return self.train_steps * self.train_batch_size


def proxy_shape(gin_file: str, gin_params: Sequence[str]) -> ProxyShape:
  """Reads the proxy's sizes from its gin bindings.

  Raises:
    ValueError: a bad gin file or binding, or a non-square IMAGE_SIZE.
  """
  configurables.parse_gin([gin_file], gin_params)
  experiment = configurables.build_experiment()
  task = experiment['task']
  height, width = task.image_size
  if height != width:
    raise ValueError(f'{gin_file}: IMAGE_SIZE must be square here, got {task.image_size}.')
  return ProxyShape(
    image_size=height,
    train_steps=experiment['config'].train_steps,
    train_batch_size=task.train_data.global_batch_size,
    anchor_size=task.anchor_size,
    num_classes=task.num_classes,
  )


def seconds_per_training_image(options: CostOptions, shape: ProxyShape) -> float:
  """Median seconds of the proxy's training step on this machine, per image."""
  # pylint: disable=g-import-not-at-top  # the training stack, only when measuring
  from official_spinenet.workflows import train_throughput

  config = train_throughput.Config(
    shape.image_size,
    options.proxy_gin_file,
    options.gin_params,
    shape.anchor_size,
    shape.num_classes,
    demo_width=False,
  )
  batch = train_throughput.one_batch(options.batch_size, config)
  loop, _ = train_throughput.our_loop(batch, options.steps, config)
  seconds = timing.median_seconds(loop, options.repeats, warmup=1)  # the warm-up traces
  return seconds / (options.steps * options.batch_size)


def trial_seconds(shape: ProxyShape, per_image: float, reward_images: int) -> float:
  """One trial: its training images plus the reward's forward passes."""
  return per_image * (shape.train_images + FORWARD_SHARE * reward_images)


def spread_from_trials_csv(path: str) -> List[float]:
  """Trial seconds / their median, for the trials of a search that did not fail.

  Raises:
    ValueError: no finished trial with a time.
  """
  from official_spinenet.workflows import search  # pylint: disable=g-import-not-at-top

  seconds = [
    float(r['seconds'])
    for r in search.read_trials_csv(path)
    if r['status'] != 'failed' and r.get('seconds')
  ]
  if not seconds:
    raise ValueError(f'{path}: no finished trial with its seconds.')
  middle = statistics.median(seconds)
  return [s / middle for s in seconds]


def simulate_wall_seconds(durations: Sequence[float], machines: int) -> float:
  """Wall time of running `durations` in order on `machines`, each trial on the first free one."""
  free = [0.0] * machines
  for duration in durations:
    start = heapq.heappop(free)
    heapq.heappush(free, start + duration)
  return max(free)


def simulate(
  seconds: float, num_trials: int, machines: int, spread: Sequence[float], seed: int
) -> Dict[str, float]:
  """{'wall_seconds', 'machine_seconds', 'utilisation'} of one simulated search."""
  rng = random.Random(seed)
  factors = [rng.choice(spread) for _ in range(num_trials)] if spread else [1.0] * num_trials
  durations = [seconds * f for f in factors]
  wall = simulate_wall_seconds(durations, machines)
  busy = sum(durations)
  return {'wall_seconds': wall, 'machine_seconds': busy, 'utilisation': busy / (wall * machines)}


def markdown(rows: Sequence[Dict[str, Any]]) -> str:
  header = ['trials', 'machines', 'wall time (days)', 'machine-hours', 'machines busy']
  cells = [
    [
      r['num_trials'],
      r['machines'],
      r['wall_seconds'] / 86400,
      r['machine_seconds'] / 3600,
      f"{100 * r['utilisation']:.0f}%",
    ]
    for r in rows
  ]
  return tables.format_table(header, cells, markdown=True, digits=1, left_columns=0)


def estimate(options: CostOptions, per_image: Optional[float] = None) -> Dict[str, Any]:
  """Measures the proxy's step (unless `per_image` is given), then simulates each cluster.

  Returns:
    {'per_image_seconds', 'trial_seconds', 'train_images', 'image_size', 'gflops',
    'rows' (one per num_trials x machines), 'markdown', 'spread_trials'}.

  Raises:
    ValueError: bad options, gin, or trials.csv (before the measurement).
  """
  shape = proxy_shape(options.proxy_gin_file, options.gin_params)
  spread = spread_from_trials_csv(options.trials_csv) if options.trials_csv else []
  gflops = timing.matmul_gflops()
  if per_image is None:
    per_image = seconds_per_training_image(options, shape)
  seconds = trial_seconds(shape, per_image, options.reward_images)
  rows = []
  for num_trials in options.num_trials:
    for machines in options.machines:
      result = simulate(seconds, num_trials, machines, spread, options.seed)
      rows.append({'num_trials': num_trials, 'machines': machines, **result})
  return {
    'per_image_seconds': per_image,
    'trial_seconds': seconds,
    'train_images': shape.train_images,
    'image_size': shape.image_size,
    'gflops': gflops,
    'rows': rows,
    'markdown': markdown(rows),
    'spread_trials': len(spread),
  }

"""What one architecture search is: space, algorithm, proxy, budget, concurrency.

`SearchConfig` is the gin-configured description `spinenet-search` runs
(`workflows/search.run_search`): which PyGlove space (`spaces.SPACE_NAMES`), which
algorithm proposes points of it (`algorithms.ALGORITHMS`), how each point is scored
(a `ProxyConfig`, or None for the synthetic reward used by dry runs and tests), how
many trials and how many at a time. Bad values fail when the config is made, with
a message naming the field, before any data is written or Ray is started.
"""

import dataclasses
import math
from typing import Any, Mapping, Optional

from official_spinenet.search import algorithms
from official_spinenet.search import proxy_config
from official_spinenet.search import spaces


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """One search (gin name `SearchConfig`).

  Attributes:
    space: a name of `spaces.SPACE_NAMES`.
    space_options: keyword options of `spaces.build_space`.
    algorithm: 'random', 'evolution' or 'ppo' (`algorithms.ALGORITHMS`).
    algorithm_options: keyword options of `algorithms.build_algorithm`.
    proxy: how a trial is trained and scored; None: the synthetic reward
      (agreement with a hidden target point, `synthetic_reward.hidden_target_reward`),
      which trains nothing (dry runs, tests).
    num_trials: architectures to sample and score.
    max_concurrent_trials: trials that run at once.
    cpus_per_trial: CPUs Ray reserves per trial (and TF's intra-op threads);
      None: the machine's CPUs split evenly between the concurrent trials.
    seed: seed of the algorithm (and of the synthetic reward's target).
    failed_reward: the reward of a trial that crashed or produced NaN.
    top_k: how many of the best architectures `best/` gets.
    num_train_images: training images of the shapes data the proxy uses.
    num_val_images: held-out images the proxy's reward is measured on.
    make_shapes_data: True: the proxy trains on shapes data made in <output_dir>/data
      (num_train_images, num_val_images); False: the proxy's gin files or bindings
      name the data (TRAIN_FILE_PATTERN, EVAL_FILE_PATTERN, ANNOTATION_FILE), e.g.
      COCO TFRecords on storage every node of a Ray cluster reads.
  """

  space: str = 'spinenet'
  space_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  algorithm: str = 'ppo'
  algorithm_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  proxy: Optional[proxy_config.ProxyConfig] = dataclasses.field(
    default_factory=proxy_config.ProxyConfig
  )
  num_trials: int = 16
  max_concurrent_trials: int = 2
  cpus_per_trial: Optional[int] = None
  seed: int = 0
  failed_reward: float = 0.0
  top_k: int = 3
  num_train_images: int = 1000
  num_val_images: int = 200
  make_shapes_data: bool = True

  def __post_init__(self):
    if self.space not in spaces.SPACE_NAMES:
      raise ValueError(
        f'SearchConfig.space: unknown space {self.space!r}; choose one of {spaces.SPACE_NAMES}.'
      )
    if self.algorithm not in algorithms.ALGORITHMS:
      raise ValueError(
        f'SearchConfig.algorithm: unknown algorithm {self.algorithm!r}; choose one of '
        f'{algorithms.ALGORITHMS}.'
      )
    for name in ('space_options', 'algorithm_options'):
      if not isinstance(getattr(self, name), Mapping):
        raise ValueError(f'SearchConfig.{name} must be a mapping, got {getattr(self, name)!r}.')
    if self.proxy is not None and not isinstance(self.proxy, proxy_config.ProxyConfig):
      raise ValueError(f'SearchConfig.proxy must be a ProxyConfig or None, got {self.proxy!r}.')
    minimums = {
      'num_trials': 1,
      'max_concurrent_trials': 1,
      'top_k': 1,
      'num_train_images': 1,
      'num_val_images': 1,
    }
    if self.cpus_per_trial is not None:
      minimums['cpus_per_trial'] = 1
    for name, minimum in minimums.items():
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f'SearchConfig.{name} must be an integer >= {minimum}, got {value!r}.')
    if not isinstance(self.failed_reward, (int, float)) or not math.isfinite(self.failed_reward):
      raise ValueError(
        f'SearchConfig.failed_reward must be a finite number, got {self.failed_reward!r}.'
      )
    if not isinstance(self.make_shapes_data, bool):
      raise ValueError(
        f'SearchConfig.make_shapes_data must be True or False, got {self.make_shapes_data!r}.'
      )
    if isinstance(self.seed, bool) or not isinstance(self.seed, int):
      raise ValueError(f'SearchConfig.seed must be an integer, got {self.seed!r}.')

  @property
  def synthetic(self) -> bool:
    """Whether trials are scored by the synthetic reward (no training)."""
    return self.proxy is None

  def trial_cpus(self, num_cpus: int) -> int:
    """CPUs per trial on a machine with `num_cpus`: the setting, or an even split."""
    if self.cpus_per_trial is not None:
      return self.cpus_per_trial
    return max(1, num_cpus // self.max_concurrent_trials)

"""The proxy task of a search trial, and the reward it gives (issue 11).

Both papers score a sampled architecture by a short training run, the proxy task,
rather than the full protocol: SpineNet Sec. 4.1 trains the candidate at 512 px for
5 epochs with a narrower model; NAS-FPN Sec. 3.1 trains a ResNet-10 RetinaNet at
512 px for 10 epochs. The reward is the proxy's held-out AP. `ProxyConfig` says
which gin files define the proxy (gin_configs/search/proxy_*.gin run it on the shapes
data) and how a trial is scored; `workflows/search_trial.run_proxy_trial` runs it.

Searching under a budget: MnasNet's soft constraint (Tan et al., CVPR 2019, Eq. 2)
multiplies the metric by (value / target) ** w for latency and/or multiply-adds;
with w < 0 a model over its target loses reward smoothly, one under it gains a
little, so the search trades accuracy against cost instead of hitting a wall.
"""

import dataclasses
import math
from typing import Optional, Tuple


@dataclasses.dataclass(frozen=True)
class ProxyConfig:
  """What a search trial trains and how its reward is computed (picklable: Ray ships it).

  Attributes:
    gin_files: the proxy's gin files (relative to gin_configs/ or paths), in order.
    gin_params: bindings applied after them (before the data and architecture ones).
    reward_metric: the evaluation metric the reward starts from ('AP', 'AP50', ...).
    latency_image_size: square input size of the latency measurement; None: the
      proxy's IMAGE_SIZE.
    latency_runs: timed forward passes at batch 1; the median counts.
    target_latency_ms: MnasNet latency target T; None: latency does not shape the reward.
    target_multiply_adds: multiply-add target; None: multiply-adds do not shape it.
    latency_exponent: MnasNet's w (-0.07 in the paper), for both targets.
  """

  gin_files: Tuple[str, ...] = ('search/proxy_spinenet_shapes.gin',)
  gin_params: Tuple[str, ...] = ()
  reward_metric: str = 'AP'
  latency_image_size: Optional[int] = None
  latency_runs: int = 5
  target_latency_ms: Optional[float] = None
  target_multiply_adds: Optional[float] = None
  latency_exponent: float = -0.07

  def __post_init__(self):
    # Gin passes lists and a lone string is easy to write: store tuples (hashable).
    for name in ('gin_files', 'gin_params'):
      value = getattr(self, name)
      object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
    if not self.gin_files:
      raise ValueError('ProxyConfig.gin_files is empty; name the proxy gin file(s).')
    if not self.reward_metric:
      raise ValueError('ProxyConfig.reward_metric is empty; e.g. "AP".')
    if self.latency_image_size is not None and self.latency_image_size <= 0:
      raise ValueError(
        f'ProxyConfig.latency_image_size must be positive, got {self.latency_image_size}.'
      )
    if self.latency_runs < 1:
      raise ValueError(f'ProxyConfig.latency_runs must be >= 1, got {self.latency_runs}.')
    for name in ('target_latency_ms', 'target_multiply_adds'):
      value = getattr(self, name)
      if value is not None and not value > 0:
        raise ValueError(f'ProxyConfig.{name} must be positive (or None), got {value}.')
    if not math.isfinite(self.latency_exponent):
      raise ValueError(f'ProxyConfig.latency_exponent must be finite, got {self.latency_exponent}.')


def _factor(value: float, target: Optional[float], exponent: float, what: str) -> float:
  if target is None:
    return 1.0
  if not value > 0:
    raise ValueError(f'Cannot shape the reward by {what}={value}: it must be positive.')
  return (value / target) ** exponent


def shaped_reward(
  metric: float, latency_ms: float, multiply_adds: float, config: ProxyConfig
) -> float:
  """MnasNet's soft-constrained reward: metric * (latency / T) ** w * (madds / T') ** w.

  Each factor applies only when its target is set in `config`; with neither, the
  reward is the metric itself (the SpineNet and NAS-FPN papers' reward).

  Args:
    metric: the proxy's reward_metric (e.g. AP in [0, 1]).
    latency_ms: median forward-pass latency at batch 1.
    multiply_adds: multiply-adds of one image.
    config: the targets and exponent w.

  Raises:
    ValueError: a shaping value that is not positive.
  """
  w = config.latency_exponent
  return (
    metric
    * _factor(latency_ms, config.target_latency_ms, w, 'latency_ms')
    * _factor(multiply_adds, config.target_multiply_adds, w, 'multiply_adds')
  )

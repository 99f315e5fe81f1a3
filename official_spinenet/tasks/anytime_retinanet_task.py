"""Anytime RetinaNet: deep supervision over every NAS-FPN repeat (NAS-FPN Sec. 3.2).

`AnytimeRetinaNetTask` is a `RetinaNetTask` whose model is an
`AnytimeRetinaNetModel`: a RetinaNet head after every repeat of a stacked NAS-FPN.
Training sums the RetinaNet loss of every exit (optionally weighted), so every
exit learns to detect; evaluation detects with one exit (`eval_exit`, default the
last) and runs only the repeats up to it.

Losses (`loss_names`): total_loss = sum_k w_k * model_loss_k + l2_loss, with
cls_loss, box_loss and model_loss the weighted sums over exits, l2_loss once, and
exit_{k}/cls_loss, exit_{k}/box_loss, exit_{k}/model_loss (unweighted) per exit.
"""

from typing import Any, Dict, List, Optional, Sequence

import tensorflow as tf

from official_spinenet.modeling import anytime_retinanet_model
from official_spinenet.tasks import retinanet_losses
from official_spinenet.tasks import retinanet_task

_BASE_LOSS_NAMES = ('total_loss', 'cls_loss', 'box_loss', 'model_loss', 'l2_loss')
_EXIT_LOSSES = ('cls_loss', 'box_loss', 'model_loss')


def exit_loss_names(num_exits: int) -> List[str]:
  """['exit_1/cls_loss', 'exit_1/box_loss', 'exit_1/model_loss', 'exit_2/...', ...]."""
  return [f'exit_{k}/{name}' for k in range(1, num_exits + 1) for name in _EXIT_LOSSES]


class _ExitDetector:
  """The model as `RetinaNetTask.eval_outputs` sees it: detect() uses one exit."""

  def __init__(self, model: anytime_retinanet_model.AnytimeRetinaNetModel, exit_index: int):
    self._model = model
    self._exit_index = exit_index

  def detect(self, *args, **kwargs):
    return self._model.detect(*args, exit_index=self._exit_index, **kwargs)


class AnytimeRetinaNetTask(retinanet_task.RetinaNetTask):
  """RetinaNet with a head after every NAS-FPN repeat, trained with deep supervision."""

  def __init__(
    self,
    *args,
    separate_heads: bool = False,
    exit_weights: Optional[Sequence[float]] = None,
    eval_exit: Optional[int] = None,
    **kwargs,
  ):
    """Configures the task (nothing is built yet).

    Args:
      *args: RetinaNetTask arguments; its `decoder` builder must give a NAS-FPN
        (it is called as for RetinaNetTask; the number of exits is its
        num_repeats).
      separate_heads: one head per exit instead of one shared by all exits.
      exit_weights: loss weight of each exit (exit 1 first; None: all 1, the
        paper's plain sum); must have one entry per exit.
      eval_exit: the exit evaluation detects with (1-based, negative from the end;
        None: the last).
      **kwargs: RetinaNetTask keyword arguments.
    """
    super().__init__(*args, **kwargs)
    self.separate_heads = separate_heads
    self.exit_weights = None if exit_weights is None else tuple(float(w) for w in exit_weights)
    self.eval_exit = eval_exit
    self._num_exits = None

  @property
  def num_exits(self) -> int:
    """Exits of the built model (known once build_model has run)."""
    if self._num_exits is None:
      raise RuntimeError(
        'AnytimeRetinaNetTask: the number of exits is known once build_model() has run.'
      )
    return self._num_exits

  @property
  def loss_names(self) -> List[str]:  # pytype: disable=signature-mismatch
    return list(_BASE_LOSS_NAMES) + exit_loss_names(self.num_exits)

  def validate(self, mode: str) -> None:
    super().validate(mode)
    if self._decoder_fn is None:
      raise ValueError(
        'AnytimeRetinaNetTask needs a NAS-FPN decoder (e.g. '
        'AnytimeRetinaNetTask.decoder = @nasfpn); it has none.'
      )
    if self.exit_weights is not None and any(w < 0 for w in self.exit_weights):
      raise ValueError(
        f'AnytimeRetinaNetTask.exit_weights must be >= 0, got {list(self.exit_weights)}.'
      )

  def _check_exits(self, num_exits: int) -> None:
    if self.exit_weights is not None and len(self.exit_weights) != num_exits:
      raise ValueError(
        f'AnytimeRetinaNetTask.exit_weights has {len(self.exit_weights)} '
        f'entries but the model has {num_exits} exits (one per NAS-FPN '
        'repeat).'
      )
    anytime_retinanet_model.resolve_exit_index(self.eval_exit, num_exits)

  def build_model(self) -> anytime_retinanet_model.AnytimeRetinaNetModel:
    model = super().build_model()  # a RetinaNetModel: its parts, built and called once
    if model.decoder is None or not hasattr(model.decoder, 'early_exit_model'):
      raise ValueError(
        'AnytimeRetinaNetTask.decoder must build a NAS-FPN (with '
        f'early_exit_model), got {model.decoder!r}.'
      )
    self._check_exits(int(model.decoder.num_repeats))
    config = model.get_config()
    anytime = anytime_retinanet_model.AnytimeRetinaNetModel(
      backbone=model.backbone,
      head=model.head,
      decoder=model.decoder,
      num_scales=config['num_scales'],
      aspect_ratios=config['aspect_ratios'],
      anchor_size=config['anchor_size'],
      separate_heads=self.separate_heads,
      default_exit_index=self.eval_exit,
    )
    height, width = self.image_size
    # Builds every exit's weights now (separate heads too).
    anytime(tf.zeros([1, height, width, 3]), training=False, all_exits=True)
    self._num_exits = anytime.num_exits
    return anytime

  def build_losses(self, outputs: Sequence[Dict[str, Any]], labels, model) -> Dict[str, tf.Tensor]:
    """Deep supervision: the RetinaNet losses of every exit, summed with exit_weights.

    Args:
      outputs: the per-exit outputs (a list, exit 1 first) of a training call; a
        single dict counts as one exit.
      labels: the retinanet input's labels.
      model: the model (for its weight-decay losses).
    """
    if isinstance(outputs, dict):
      outputs = [outputs]
    weights = self.exit_weights or (1.0,) * len(outputs)
    if len(weights) != len(outputs):
      raise ValueError(f'{len(outputs)} exits but {len(weights)} exit_weights.')
    # The last exit through RetinaNetTask (which adds the weight decay, once); the
    # others through the same loss function.
    last = super().build_losses(outputs[-1], labels, model)
    losses = {'l2_loss': last['l2_loss']}
    weighted = {name: 0.0 for name in _EXIT_LOSSES}
    for k, (exit_outputs, weight) in enumerate(zip(outputs, weights), start=1):
      if k == len(outputs):
        exit_losses = last
      else:
        exit_losses = retinanet_losses.retinanet_loss(
          exit_outputs, labels, self.num_classes, **self._loss_args
        )
        exit_losses['model_loss'] = exit_losses['total_loss']
      for name in _EXIT_LOSSES:
        losses[f'exit_{k}/{name}'] = exit_losses[name]
        weighted[name] += weight * exit_losses[name]
    losses.update(weighted)
    losses['total_loss'] = weighted['model_loss'] + losses['l2_loss']
    return losses

  def eval_outputs(self, model, inputs, labels) -> Dict[str, tf.Tensor]:
    return super().eval_outputs(_ExitDetector(model, self.eval_exit), inputs, labels)

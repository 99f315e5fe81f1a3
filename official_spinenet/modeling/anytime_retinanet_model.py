"""Anytime (early-exit) RetinaNet on a stacked NAS-FPN (NAS-FPN Sec. 3.2).

NAS-FPN stacks one pyramid network N times, and every repeat gives a complete
pyramid {P3..P7}. Attaching the class and box head after every repeat and training
all of them (deep supervision) gives one model that can stop after any repeat k and
still detect: fewer repeats, less compute, lower latency, lower AP.

`AnytimeRetinaNetModel` is a `RetinaNetModel` whose decoder is a NAS-FPN (anything
with `num_repeats` and `early_exit_model(k)`):

  call(images, training=True)                 -> list of N {'cls_outputs', 'box_outputs'}
  call(images, training=False)                -> the default exit's dict (the last)
  call(images, training=False, exit_index=k)  -> exit k's dict; runs repeats 1..k only
  call(images, all_exits=True, exit_index=k)  -> list of exits 1..k
  detect(images, exit_index=k)                -> detections of exit k
  exit_model(k)                               -> a plain RetinaNetModel of exit k

Exits are numbered 1..N (exit k follows repeat k); negative indices count from the
end (-1 is the last).

Heads: one RetinaNetHead shared by every exit (default; the paper's "classifier and
box regression heads attached to all intermediate pyramid networks"), or with
`separate_heads=True` a head of its own per exit, each built from the given head's
config. Either way `head` is the last exit's head.

Checkpoint layout: the backbone, decoder and head are tracked under the same
attribute names as in `RetinaNetModel` (the other exits' heads, if separate, under
`_exit_heads`), so the checkpoint of an anytime model restores into a plain
`RetinaNetModel` of the same backbone, decoder and head, which then computes the
last exit, and can be exported like any RetinaNet. At inference this model itself
also returns a plain outputs dict, so `serving.export_lib` takes it too;
`default_exit_index` picks the exit it serves.
"""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import tensorflow as tf
import tf_keras

from official_spinenet.modeling import retinanet_model
from official_spinenet.modeling.heads import retinanet_head as retinanet_head_lib
from official_spinenet.utils import tracking

Outputs = Dict[str, Dict[str, tf.Tensor]]


def resolve_exit_index(
  exit_index: Optional[int], num_exits: int, default: Optional[int] = None
) -> int:
  """The 1-based exit for exit_index (None: default, else the last; negative: from the end).

  Raises:
    ValueError: an index outside [1, num_exits] (or [-num_exits, -1]).
  """
  if exit_index is None:
    exit_index = num_exits if default is None else default
  if isinstance(exit_index, bool) or not isinstance(exit_index, int):
    raise ValueError(f'exit_index must be an int, got {exit_index!r}.')
  resolved = exit_index + num_exits + 1 if exit_index < 0 else exit_index
  if not 1 <= resolved <= num_exits:
    raise ValueError(
      f'exit_index must be in [1, {num_exits}] (or [-{num_exits}, -1] from the '
      f'end) for a model with {num_exits} exits, got {exit_index}.'
    )
  return resolved


@tf_keras.utils.register_keras_serializable(package='official_spinenet')
class AnytimeRetinaNetModel(retinanet_model.RetinaNetModel):
  """Backbone -> stacked NAS-FPN -> a RetinaNet head after every repeat."""

  def __init__(
    self,
    backbone: tf_keras.Model,
    head: retinanet_head_lib.RetinaNetHead,
    decoder: tf_keras.Model,
    num_scales: int = 3,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    anchor_size: float = 4.0,
    separate_heads: bool = False,
    default_exit_index: Optional[int] = None,
    **kwargs,
  ):
    """Initializes the model.

    Args:
      backbone: maps images to dict str(level) -> features.
      head: the RetinaNetHead (of every exit when shared; of the last exit, and the
        template of the others, when separate).
      decoder: a NAS-FPN (`modeling.decoders.nasfpn.NASFPN`, with or without
        return_all_repeats): it must have `num_repeats` and `early_exit_model(k)`.
      num_scales, aspect_ratios, anchor_size: anchors (for `detect`).
      separate_heads: one head per exit (built from head's config) instead of one
        shared head.
      default_exit_index: the exit inference uses when none is given (None: last).
      **kwargs: passed to tf_keras.Model.
    """
    if decoder is None or not (
      hasattr(decoder, 'early_exit_model') and hasattr(decoder, 'num_repeats')
    ):
      raise ValueError(
        'AnytimeRetinaNetModel needs a stacked decoder with `num_repeats` and '
        f'`early_exit_model(k)` (a NASFPN); got {decoder!r}.'
      )
    super().__init__(
      backbone=backbone,
      head=head,
      decoder=decoder,
      num_scales=num_scales,
      aspect_ratios=aspect_ratios,
      anchor_size=anchor_size,
      **kwargs,
    )
    self._num_exits = int(decoder.num_repeats)
    if separate_heads:
      head_class, head_config = type(head), head.get_config()
      # The last exit uses `head` itself (tracked as `_head`, as in RetinaNetModel).
      self._exit_heads = [
        head_class.from_config({**head_config, 'name': f'exit_{k}_head'})
        for k in range(1, self._num_exits)
      ]
    self._separate_heads = bool(separate_heads)
    self._default_exit_index = resolve_exit_index(default_exit_index, self._num_exits)
    self._update_config(separate_heads=self._separate_heads, default_exit_index=default_exit_index)
    self._all_exits_decoders = tracking.Untracked({})

  @property
  def num_exits(self) -> int:
    return self._num_exits

  @property
  def separate_heads(self) -> bool:
    return self._separate_heads

  @property
  def heads(self) -> List[retinanet_head_lib.RetinaNetHead]:
    """The head of each exit, exit 1 first (the same object N times when shared)."""
    if self._separate_heads:
      return list(self._exit_heads) + [self._head]
    return [self._head] * self._num_exits

  @property
  def default_exit_index(self) -> int:
    """The exit inference runs when call/detect get none (1-based)."""
    return self._default_exit_index

  @default_exit_index.setter
  def default_exit_index(self, exit_index: Optional[int]) -> None:
    self._default_exit_index = resolve_exit_index(exit_index, self._num_exits)
    self._update_config(default_exit_index=exit_index)

  @property
  def checkpoint_items(self) -> Dict[str, Any]:
    items = super().checkpoint_items
    if self._separate_heads:
      items['exit_heads'] = self._exit_heads
    return items

  def resolve_exit(self, exit_index: Optional[int] = None) -> int:
    """exit_index resolved against this model (None: default_exit_index)."""
    return resolve_exit_index(exit_index, self._num_exits, self._default_exit_index)

  def _decoder_up_to(self, num_exits: int, all_exits: bool) -> tf_keras.Model:
    """A functional view of the decoder's first num_exits repeats (no new weights).

    Returns the pyramid after repeat num_exits, or with all_exits the list of the
    pyramids after repeats 1..num_exits.
    """
    if not all_exits:
      return self._decoder.early_exit_model(num_exits)
    cache = self._all_exits_decoders.value
    if num_exits not in cache:
      views = [self._decoder.early_exit_model(k) for k in range(1, num_exits + 1)]
      cache[num_exits] = tf_keras.Model(views[0].input, [v.output for v in views])
    return cache[num_exits]

  def call(
    self, images, training=None, exit_index: Optional[int] = None, all_exits: Optional[bool] = None
  ) -> Union[Outputs, List[Outputs]]:
    """Runs the backbone, the first k NAS-FPN repeats and the heads.

    Args:
      images: [B, H, W, 3].
      training: BN / DropBlock mode.
      exit_index: the last exit to compute (1-based; negative from the end); None:
        the last exit with all_exits, else default_exit_index. Repeats after it
        are not run.
      all_exits: return the outputs of every exit up to exit_index (a list, exit 1
        first) instead of only exit_index's; default: True when training (deep
        supervision), False otherwise.

    Returns:
      {'cls_outputs': {str(level): logits}, 'box_outputs': {str(level): deltas}},
      or a list of such dicts with all_exits.
    """
    if all_exits is None:
      all_exits = isinstance(training, bool) and training
    last = (
      resolve_exit_index(exit_index, self._num_exits)
      if all_exits
      else self.resolve_exit(exit_index)
    )
    features = self._backbone(images, training=training)
    pyramids = self._decoder_up_to(last, all_exits)(features, training=training)
    if not all_exits:
      cls_outputs, box_outputs = self.heads[last - 1](pyramids, training=training)
      return {'cls_outputs': cls_outputs, 'box_outputs': box_outputs}
    outputs = []
    for head, pyramid in zip(self.heads, pyramids):
      cls_outputs, box_outputs = head(pyramid, training=training)
      outputs.append({'cls_outputs': cls_outputs, 'box_outputs': box_outputs})
    return outputs

  def detect(
    self,
    images: tf.Tensor,
    image_shape: Optional[tf.Tensor] = None,
    anchor_boxes: Optional[Mapping[str, tf.Tensor]] = None,
    training: bool = False,
    exit_index: Optional[int] = None,
    **nms_settings,
  ) -> Dict[str, tf.Tensor]:
    """Detections of one exit; see `RetinaNetModel.detect`.

    Args:
      images, image_shape, anchor_boxes, training, **nms_settings: as
        `RetinaNetModel.detect`.
      exit_index: the exit to detect with (None: default_exit_index); only the
        repeats up to it run.
    """
    outputs = self(images, training=training, exit_index=exit_index, all_exits=False)
    return self.detections_from_outputs(outputs, images, image_shape, anchor_boxes, **nms_settings)

  def exit_model(self, exit_index: Optional[int] = None) -> retinanet_model.RetinaNetModel:
    """A plain RetinaNetModel computing one exit, sharing this model's weights.

    For inference, multiply-add counts and export of an early exit (its decoder is
    a functional view of the first k repeats). Save checkpoints from the anytime
    model, not from this view: its decoder's checkpoint layout is not NASFPN's.
    """
    k = self.resolve_exit(exit_index)
    config = self._config_dict
    return retinanet_model.RetinaNetModel(
      backbone=self._backbone,
      head=self.heads[k - 1],
      decoder=self._decoder.early_exit_model(k),
      num_scales=config['num_scales'],
      aspect_ratios=config['aspect_ratios'],
      anchor_size=config['anchor_size'],
      name=f'{self.name}_exit_{k}',
    )

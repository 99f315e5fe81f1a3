"""Network topology as data: what SpineNet's blocks and NAS-FPN's cells have in common.

A scale-permuted backbone (SpineNet, Du et al., CVPR 2020, Sec. 3.1) and a NAS-FPN
pyramid network (Ghiasi et al., CVPR 2019, Sec. 3.1) are both a list of nodes that
starts with some input nodes (SpineNet: the stem blocks; NAS-FPN: the input pyramid)
and grows by one node per spec. A spec gives the new node a feature level (its
resolution is 1/2^level of the image), an operation (a block type, a binary op), two
earlier nodes as inputs (`input_offsets`, indices into `input nodes + nodes built so
far`) and whether it is an output node, the one that gives its level's endpoint.

This module holds the part that needs no TensorFlow, so that the drawing and the
architecture search use the very rules the models are built with:

  SpecBase          base of BlockSpec and CellSpec: the fields, dict, tuple and JSON
                    forms, and the graph checks both share
  Node              a node's level and channel count
  merge_unconsumed  the rule by which an output node absorbs the nodes nothing consumed
  unused_nodes      the nodes that no endpoint depends on
"""

import dataclasses
import json
from typing import Any, Callable, ClassVar, List, Mapping, NamedTuple, Optional, Sequence, Tuple


@dataclasses.dataclass(frozen=True)
class SpecBase:
  """One node of a network: the base of BlockSpec and CellSpec.

  A family subclasses it with the words for its nodes as class keywords, e.g.

    class BlockSpec(topology.SpecBase, node='block', input_name='parent',
                    op_field='block_fn'):

  node: what a node is called ('block'): messages say 'Block spec 3 ...' and a
    JSON file may hold the list under '<node>_specs'.
  input_name: what a node's input is called in messages ('parent').
  op_field: the operation's key in dicts and JSON files ('block_fn').
  op_aliases: optional other names of ops, read as the family's own.

  Attributes:
    level: feature level; the node's output is 1/2^level of the image size.
    op: the operation (a block type, a binary op).
    input_offsets: indices of the two inputs in `input nodes + earlier nodes`.
    is_output: whether the node gives the endpoint of its level.
  """

  KIND: ClassVar[str] = 'Spec'
  NODE: ClassVar[str] = 'node'
  INPUT: ClassVar[str] = 'input'
  OP_FIELD: ClassVar[str] = 'op'
  OP_ALIASES: ClassVar[Mapping[str, str]] = {}

  level: int
  op: str
  input_offsets: Tuple[int, int]
  is_output: bool

  def __init_subclass__(
    cls,
    *,
    node: str,
    input_name: str,
    op_field: str,
    op_aliases: Optional[Mapping[str, str]] = None,
    **kwargs,
  ):
    super().__init_subclass__(**kwargs)
    cls.KIND = f'{node.capitalize()} spec'
    cls.NODE, cls.INPUT, cls.OP_FIELD = node, input_name, op_field
    cls.OP_ALIASES = dict(op_aliases or {})

  @classmethod
  def field_names(cls) -> Tuple[str, ...]:
    """The keys of the dict form, in tuple order."""
    return ('level', cls.OP_FIELD, 'input_offsets', 'is_output')

  def to_dict(self) -> dict[str, Any]:
    """The JSON form: {level, <OP_FIELD>, input_offsets (a list), is_output}."""
    return dict(
      zip(self.field_names(), (self.level, self.op, list(self.input_offsets), self.is_output))
    )

  @classmethod
  def from_any(cls, value) -> 'SpecBase':
    """Accepts a spec, a dict (the JSON form) or a (level, op, (a, b), is_output) tuple.

    Raises:
      ValueError: a missing key, a tuple of another length, or not two offsets.
    """
    if isinstance(value, cls):
      return value
    names = cls.field_names()
    is_mapping = isinstance(value, Mapping) or hasattr(value, 'keys')  # Keras wraps dicts.
    if not is_mapping and len(value) != len(names):
      raise ValueError(
        f'{cls.KIND} {value!r} must be (level, {cls.OP_FIELD}, (input0, input1), is_output).'
      )
    fields = dict(value) if is_mapping else dict(zip(names, value))
    missing = sorted(set(names) - set(fields))
    if missing:
      raise ValueError(f'{cls.KIND} {fields} lacks the keys {missing}.')
    offsets, op = fields['input_offsets'], str(fields[cls.OP_FIELD])
    if len(offsets) != 2:
      raise ValueError(f'{cls.KIND} {value!r} must have exactly two input offsets.')
    return cls(
      int(fields['level']),
      cls.OP_ALIASES.get(op, op),
      (int(offsets[0]), int(offsets[1])),
      bool(fields['is_output']),
    )

  @classmethod
  def build(cls, specs: Optional[Sequence], default: Sequence) -> List['SpecBase']:
    """Specs from tuples, dicts or specs; None means `default`."""
    return [cls.from_any(s) for s in (default if specs is None else specs)]

  @classmethod
  def resolve(cls, specs, default: Sequence) -> List['SpecBase']:
    """Specs from None (`default`), a path to a JSON file (see `save`) or a list."""
    if isinstance(specs, str):
      return cls.load(specs)
    return cls.build(specs, default)

  @classmethod
  def to_json(cls, specs: Sequence) -> str:
    return json.dumps([cls.from_any(s).to_dict() for s in specs], indent=1)

  @classmethod
  def save(cls, specs: Sequence, path: str) -> None:
    """Writes specs as a JSON list of dicts, atomically (local path or gs://)."""
    # Imported here: utils.files loads TensorFlow, which the specs themselves
    # (read by the drawing and the search) do not need.
    from official_spinenet.utils import files  # pylint: disable=g-import-not-at-top

    files.atomic_write(path, cls.to_json(specs))

  @classmethod
  def load(cls, path: str) -> List['SpecBase']:
    """Reads specs written by `save`; a dict holding the list under '<node>_specs' too.

    Raises:
      ValueError: a missing or malformed file, or a bad entry (the message names it).
    """
    from official_spinenet.utils import files  # pylint: disable=g-import-not-at-top

    where = f'{cls.KIND} file {path!r}'
    data = files.read_json(path, f'{cls.KIND} file')
    if isinstance(data, Mapping):
      data = data.get(f'{cls.NODE}_specs')
    if not isinstance(data, list):
      raise ValueError(f'{where} must hold a JSON list of {cls.NODE} specs.')
    specs = []
    for i, item in enumerate(data):
      try:
        specs.append(cls.from_any(item))
      except (ValueError, TypeError) as e:
        raise ValueError(f'{where}, entry {i}: {e}') from e
    return specs

  @classmethod
  def validate_graph(
    cls,
    specs: Sequence['SpecBase'],
    num_inputs: int,
    inputs_name: str,
    endpoint_levels: Tuple[int, int],
    allowed_ops: Sequence[str],
    level_range: Tuple[int, int],
    level_range_name: str,
  ) -> None:
    """Raises a ValueError naming the first spec that cannot be built.

    Checks: known ops; levels within level_range; inputs that are input nodes or
    earlier nodes; one output node per endpoint level and no level with two.

    Args:
      specs: the specs.
      num_inputs: how many input nodes precede the specs.
      inputs_name: the input nodes in messages ('2 stem blocks').
      endpoint_levels: (min_level, max_level) of the endpoints.
      allowed_ops: the ops the builder can build.
      level_range: (lowest, highest) level a node may have.
      level_range_name: the range in messages ('the allowed range').
    """
    min_level, max_level = endpoint_levels
    check_level_order(min_level, max_level)
    if not specs:
      raise ValueError(f'{cls.NODE}_specs is empty.')
    output_specs = {}
    for i, spec in enumerate(specs):
      if spec.op not in allowed_ops:
        raise ValueError(
          f'{cls.KIND} {i} has {cls.OP_FIELD} {spec.op!r}; choose one of {list(allowed_ops)}.'
        )
      if not level_range[0] <= spec.level <= level_range[1]:
        raise ValueError(
          f'{cls.KIND} {i} has level {spec.level}, outside '
          f'{level_range_name} [{level_range[0]}, {level_range[1]}].'
        )
      limit = num_inputs + i
      for offset in spec.input_offsets:
        if not 0 <= offset < limit:
          raise ValueError(
            f'{cls.KIND} {i} has {cls.INPUT} {offset}, out of range: it may use the '
            f'{inputs_name} and the {cls.NODE}s before it (0..{limit - 1}).'
          )
      if spec.is_output:
        if spec.level in output_specs:
          raise ValueError(
            f'{cls.KIND}s {output_specs[spec.level]} and {i} are both output '
            f'{cls.NODE}s of level {spec.level}.'
          )
        output_specs[spec.level] = i
    missing = [l for l in range(min_level, max_level + 1) if l not in output_specs]
    if missing:
      raise ValueError(
        f'No output {cls.NODE} for levels {missing}; the endpoints need one '
        f'output {cls.NODE} per level in [{min_level}, {max_level}].'
      )


def check_level_order(min_level: int, max_level: int) -> None:
  if min_level > max_level:
    raise ValueError(f'min_level {min_level} is greater than max_level {max_level}.')


class Node(NamedTuple):
  """What the merge rule knows of a node.

  Attributes:
    level: feature level.
    channels: output channels; None where all nodes have the same (NAS-FPN).
  """

  level: int
  channels: Optional[int] = None


def merge_unconsumed(
  specs: Sequence[SpecBase],
  inputs: Sequence[Node],
  node_of: Callable[[SpecBase], Node] = lambda spec: Node(spec.level),
) -> List[Tuple[int, ...]]:
  """The earlier nodes each output node absorbs, so that no node is computed in vain.

  The rule (SpineNet Sec. 3.2, NAS-FPN Sec. 3.1): when an output node is built, every
  earlier node (input nodes included) that nothing has consumed yet and that has the
  output node's level and channel count is added to it. A node counts as consumed
  once it is an input of a node built so far, the output node's own inputs included
  (so an input is never added twice), or once it has been absorbed.

  Args:
    specs: the specs in build order.
    inputs: the input nodes (stem blocks, input pyramid).
    node_of: the node a spec builds; default: its level, all channels equal.

  Returns:
    One tuple per spec: the absorbed node indices (into `inputs + nodes built`),
    ascending; empty for a spec that is not an output.
  """
  nodes = list(inputs)
  consumed = [False] * len(nodes)
  merges = []
  for spec in specs:
    for offset in spec.input_offsets:
      consumed[offset] = True
    node = node_of(spec)
    absorbed = ()
    if spec.is_output:
      absorbed = tuple(j for j, other in enumerate(nodes) if not consumed[j] and other == node)
      for j in absorbed:
        consumed[j] = True
    merges.append(absorbed)
    nodes.append(node)
    consumed.append(False)
  return merges


def unused_nodes(
  specs: Sequence[SpecBase],
  inputs: Sequence[Node],
  node_of: Callable[[SpecBase], Node],
  min_level: int,
  max_level: int,
) -> List[int]:
  """Indices of the nodes that no endpoint in [min_level, max_level] depends on.

  A node is used if an output node of an endpoint level depends on it, through
  inputs or merges (`merge_unconsumed`). E.g. SpineNet-49's last block is the
  level-2 output, which only a min_level=2 model reads.

  Args:
    specs: the specs in build order.
    inputs: the input nodes.
    node_of: the node a spec builds (see `merge_unconsumed`).
    min_level: lowest endpoint level.
    max_level: highest endpoint level.

  Returns:
    Sorted indices into `inputs + nodes built`.
  """
  num_inputs = len(inputs)
  sources = {
    num_inputs + i: list(spec.input_offsets) + list(absorbed)
    for i, (spec, absorbed) in enumerate(zip(specs, merge_unconsumed(specs, inputs, node_of)))
  }
  endpoints = [
    num_inputs + i
    for i, spec in enumerate(specs)
    if spec.is_output and min_level <= spec.level <= max_level
  ]
  used = _reachable(endpoints, sources)
  return [n for n in range(num_inputs + len(specs)) if n not in used]


def _reachable(starts: Sequence[int], sources: Mapping[int, Sequence[int]]) -> set[int]:
  """All nodes reachable from `starts` by following `sources` edges backwards."""
  seen, stack = set(starts), list(starts)
  while stack:
    for source in sources.get(stack.pop(), ()):
      if source not in seen:
        seen.add(source)
        stack.append(source)
  return seen

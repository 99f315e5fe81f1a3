"""A search space as an ordered list of named choices, with exact encode and decode.

A space is a flat `pg.Dict` of named choices (`Choice`): a `pg.one_of`, a
`pg.sublist_of` (two parents, two inputs) or a `pg.permutate` (an order of levels).
Its DNA holds one decision per choice, in the order the space lists them, so a
controller walks e.g. the permutation of levels first, then block by block.

The `pg.Dict` (`hyper_value`) defines the DNA (`dna_spec`) that PyGlove's algorithms
propose. `decode` and `encode` read and write the DNA's numbers (`dna.to_numbers()`)
choice by choice themselves: `pg.materialize` gives the same values (a test pins it)
but costs about 0.1 s a DNA, and PyGlove's encoder picks the first of equal candidates
for every position of a permutation, which is no DNA when candidates repeat (a
permutation of the levels [2, 3, 3, 3, ...]). `Choice.indices` gives each value the
lowest unused candidate index equal to it instead, so a point has one DNA `encode`
returns among the several that decode to it.

`SearchSpace` is the base of the spaces (`spaces.py`): it turns specs into choice
values and back (`_values`, `_specs`, given by each space) and checks every
decoded point with the builder's validator.
"""

import dataclasses
import functools
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import pyglove as pg

from official_spinenet.modeling import topology


@dataclasses.dataclass(frozen=True)
class Choice:
  """One named decision of a space.

  Attributes:
    name: the key in the space's `pg.Dict` (no dots: PyGlove reads them as paths).
    candidates: the values it chooses from (may repeat, for a permutation).
    k: None for one value (`pg.one_of`); else the number of distinct candidates
      chosen (`pg.sublist_of`; a permutation when k == len(candidates) and the
      order is chosen).
    ascending: with k, the chosen candidates are in candidate order (a set, e.g. a
      block's two parents); otherwise their order is chosen too.
    specs: indices of the specs the choice decides (for messages).
  """

  name: str
  candidates: Tuple[Any, ...]
  k: Optional[int] = None
  ascending: bool = False
  specs: Tuple[int, ...] = ()

  @property
  def is_fixed(self) -> bool:
    """Whether one value is possible: then the space holds it as a constant."""
    if self.k is None:
      return len(self.candidates) == 1
    return self.k == len(self.candidates) and (self.ascending or self.k <= 1)

  @property
  def width(self) -> int:
    """How many DNA numbers the choice takes (unless fixed)."""
    return 1 if self.k is None else self.k

  def hyper(self) -> Any:
    """The PyGlove hyper value; a constant if the choice is fixed."""
    candidates = list(self.candidates)
    if self.is_fixed:
      return candidates[0] if self.k is None else candidates
    if self.k is None:
      return pg.one_of(candidates)
    return pg.sublist_of(self.k, candidates, choices_distinct=True, choices_sorted=self.ascending)

  def value(self, indices: Sequence[int]) -> Any:
    """The value that DNA numbers `indices` stand for (one number for a one_of).

    Raises:
      ValueError: an index out of range, repeated, or out of order where it must not be.
    """
    indices = list(indices)
    if len(indices) != self.width or not all(0 <= i < len(self.candidates) for i in indices):
      raise ValueError(f'DNA numbers {indices} are no choice of {self.name}.')
    if self.k is None:
      return self.candidates[indices[0]]
    if len(set(indices)) != len(indices) or (self.ascending and indices != sorted(indices)):
      raise ValueError(f'DNA numbers {indices} of {self.name} repeat or are out of order.')
    return [self.candidates[i] for i in indices]

  def indices(self, value: Any) -> List[int]:
    """The DNA numbers of `value`: its candidate indices.

    Raises:
      ValueError: the value is not one the choice can take (the message says why).
    """
    if self.k is None:
      if value not in self.candidates:
        raise ValueError(f'{value!r} is not one of {list(self.candidates)}')
      return [self.candidates.index(value)]
    value = list(value)
    if len(value) != self.k:
      raise ValueError(f'{value} does not have {self.k} entries')
    used, indices = set(), []
    for item in value:
      free = [i for i, c in enumerate(self.candidates) if c == item and i not in used]
      if not free:
        raise ValueError(f'{value} is not {self.k} distinct entries of {list(self.candidates)}')
      used.add(free[0])
      indices.append(free[0])
    if self.ascending and indices != sorted(indices):
      raise ValueError(f'{value} is not in ascending order')
    return indices


class SearchSpace:
  """A search space whose points are lists of specs (the interface of `spaces.py`).

  Attributes:
    name: the space's name (`spaces.SPACE_NAMES`).
    spec_class: the spec type of its points (BlockSpec or CellSpec).
    builder: the gin configurable that takes the specs ('spinenet', ...).
    specs_argument: the builder's argument for them ('block_specs', ...).
    options: the options the space was built with, defaults filled in.
    choices: the choices, in DNA order.
    hyper_value: the `pg.Dict` of the choices.
    dna_spec: `pg.dna_spec(hyper_value)`.
  """

  name: str
  spec_class: type
  builder: str
  specs_argument: str

  def __init__(self, name: str, options: Mapping[str, Any], choices: Sequence[Choice]):
    self.name = name
    self.options = dict(options)
    self.choices = tuple(choices)

  # Built on first use: the DNA spec of the SpineNet space takes ~1 s, and most
  # users of a space (its builder, spec class, gin bindings, decode) never need it.
  @functools.cached_property
  def hyper_value(self) -> pg.Dict:
    """The `pg.Dict` of the choices."""
    return pg.Dict([(c.name, c.hyper()) for c in self.choices])

  @functools.cached_property
  def dna_spec(self) -> pg.DNASpec:
    """`pg.dna_spec(hyper_value)`."""
    return pg.dna_spec(self.hyper_value)

  def __repr__(self) -> str:
    return f'{type(self).__name__}({self.name!r}, {self.options})'

  @property
  def num_numbers(self) -> int:
    """The length of a DNA's `to_numbers()`."""
    return sum(c.width for c in self.choices if not c.is_fixed)

  @property
  def space_size(self) -> int:
    """The number of DNAs (a point with repeated permutation candidates has several)."""
    return self.dna_spec.space_size

  def decode(self, dna: Union[pg.DNA, Sequence[int]]) -> List[topology.SpecBase]:
    """The specs of a DNA (or of its `to_numbers()`): always a buildable network.

    Reads the DNA's numbers choice by choice, which gives what
    `pg.materialize(hyper_value, dna)` gives (a test pins it) at a fraction of its
    cost: sampled DNAs are decoded by the thousand.

    Raises:
      ValueError: numbers that are no DNA of this space.
    """
    numbers = dna.to_numbers() if isinstance(dna, pg.DNA) else [int(n) for n in dna]
    if len(numbers) != self.num_numbers:
      raise ValueError(
        f'{len(numbers)} DNA numbers for the {self.name!r} space, which takes {self.num_numbers}.'
      )
    values, position = {}, 0
    for choice in self.choices:
      if choice.is_fixed:
        values[choice.name] = choice.hyper()
      else:
        values[choice.name] = choice.value(numbers[position : position + choice.width])
        position += choice.width
    specs = self._specs(values)
    self.validate(specs)
    return specs

  def encode(self, specs: Sequence[Any]) -> pg.DNA:
    """The DNA that decodes to exactly `specs` (tuples, dicts or specs).

    Raises:
      ValueError: a spec the space cannot express; the message names it.
    """
    return pg.DNA.from_numbers(self.encode_numbers(specs), self.dna_spec)

  def encode_numbers(self, specs: Sequence[Any]) -> List[int]:
    """`encode(specs).to_numbers()`, without building the DNA (which costs ~0.1 s)."""
    specs = [self.spec_class.from_any(s) for s in specs]
    values = self._values(specs)
    numbers = []
    for choice in self.choices:
      value = values[choice.name]
      try:
        if choice.is_fixed:
          if _as_list(value) != _as_list(choice.hyper()):
            raise ValueError(f'{value!r} is not {choice.hyper()!r}')
        else:
          numbers.extend(choice.indices(value))
      except ValueError as e:
        raise ValueError(
          f'{describe_specs(specs, choice.specs)} is outside the {self.name!r} space: '
          f'its {choice.name} {e}.'
        ) from e
    if self.decode(numbers) != specs:  # A bug of the space, not of the specs.
      raise AssertionError(f'{self.name}: {specs} encodes to {numbers}, which decodes otherwise.')
    return numbers

  def builder_overrides(self) -> Dict[str, Any]:
    """Builder arguments other than the specs that every point needs; {} if none."""
    return {}

  def gin_bindings(self, specs_path: str) -> List[str]:
    """Gin bindings that build a point saved (`spec_class.save`) at `specs_path`."""
    bindings = {self.specs_argument: specs_path, **self.builder_overrides()}
    return [f'{self.builder}.{key} = {value!r}' for key, value in bindings.items()]

  # What a space supplies.

  def _specs(self, values: Mapping[str, Any]) -> List[topology.SpecBase]:
    """Choice name -> value  ->  the specs."""
    raise NotImplementedError

  def _values(self, specs: Sequence[topology.SpecBase]) -> Dict[str, Any]:
    """The specs -> choice name -> value; ValueError naming a spec it cannot express."""
    raise NotImplementedError

  def validate(self, specs: Sequence[topology.SpecBase]) -> None:
    """The builder's own validator; raises ValueError."""
    raise NotImplementedError


def describe_specs(specs: Sequence[topology.SpecBase], indices: Sequence[int]) -> str:
  """'Block spec 3 {...}' or 'Block specs [0, 1, ...]', for messages."""
  if len(indices) == 1:
    return f'{specs[indices[0]].KIND} {indices[0]} {specs[indices[0]].to_dict()}'
  kind = specs[0].KIND if specs else 'Spec'
  return f'{kind}s {list(indices)}'


def _as_list(value: Any) -> List[Any]:
  return list(value) if isinstance(value, (list, tuple)) else [value]

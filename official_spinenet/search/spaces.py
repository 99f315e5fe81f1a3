"""The architecture search spaces, by name, and the published points in them.

  'spinenet'         SpineNet (Du et al., CVPR 2020, Sec. 3.1): scale permutation,
                     cross-scale connections (Sec. 3.2) and block adjustments after
                     SpineNet's stem; SpineNet-49 is a point.
  'r0_sp53', 'r14_sp39', 'r23_sp30', 'r35_sp18'
                     the scale-permuted ResNets (Sec. 3.3): the SpineNet space with a
                     ResNet stem of their length, permutations and connections only.
  'spinenet_mobile'  SpineNet-Mobile's (Du et al., ECCV 2020): 'mbconv' blocks after
                     the L1, L2 stem; SpineNet-Mobile-49 is a point.
  'nasfpn'           NAS-FPN's merging cells (Ghiasi et al., CVPR 2019, Sec. 3.1); the
                     paper's cell is a point.

`build_space(name, **options)` returns a `choice_space.SearchSpace`: `decode(dna)` gives
block or cell specs that the builder (`space.builder`) builds, `encode(specs)` the DNA,
`gin_bindings(path)` the bindings that train a point saved with
`space.spec_class.save(specs, path)`. DNAs travel as `dna.to_numbers()` and come back
with `pg.DNA.from_numbers(numbers, space.dna_spec)`.

Space sizes with the default options (`space.space_size`: DNAs; `space.num_numbers`:
decisions). Several DNAs decode to one scale-permuted point, as its base levels repeat
(for R0-SP53's allocation 1! 3! 5! 1! = 720 orders of equal levels):

  spinenet          1.6e37 (68)    r0_sp53   4.6e26 (43)    r23_sp30  8.5e18 (30)
  spinenet_mobile   4.4e35 (57)    r14_sp39  1.7e24 (39)    r35_sp18  7.1e12 (17)
  nasfpn            1.9e15 (28)

`PUBLISHED_POINTS` maps a published architecture to (space, specs); each encodes to a
DNA that decodes back to exactly those specs. The R-SP specs were published only as
drawings: their points are the scale-decreasing orders
(`ScalePermutedSpace.scale_decreasing_point`), the ablation's starting points.
"""

import functools
import inspect
from typing import Callable, Dict, Sequence, Tuple

from official_spinenet.modeling.backbones import spinenet_specs
from official_spinenet.modeling.decoders import nasfpn_specs
from official_spinenet.search import choice_space
from official_spinenet.search import nasfpn_space
from official_spinenet.search import scale_permuted_space

SearchSpace = choice_space.SearchSpace

_FACTORIES: Dict[str, Callable[..., SearchSpace]] = {
  'spinenet': scale_permuted_space.spinenet_space,
  'spinenet_mobile': scale_permuted_space.spinenet_mobile_space,
  'nasfpn': nasfpn_space.NASFPNSpace,
  **{
    name: functools.partial(scale_permuted_space.rsp_space, name)
    for name in scale_permuted_space.RSP_ALLOCATIONS
  },
}
SPACE_NAMES = (
  'spinenet',
  'spinenet_mobile',
  'nasfpn',
  'r0_sp53',
  'r14_sp39',
  'r23_sp30',
  'r35_sp18',
)


def space_options(name: str) -> Tuple[str, ...]:
  """The options `build_space(name, ...)` accepts."""
  _check_name(name)
  parameters = inspect.signature(_FACTORIES[name]).parameters
  return tuple(p for p in parameters if p != 'name')


def build_space(name: str, **options) -> SearchSpace:
  """The search space `name` (one of SPACE_NAMES) with `options` over its defaults.

  Raises:
    ValueError: an unknown name or option, or a bad option value (the message says
      which and what is allowed).
  """
  unknown = sorted(set(options) - set(space_options(name)))
  if unknown:
    raise ValueError(
      f'Unknown option(s) {unknown} for search space {name!r}; it takes '
      f'{list(space_options(name))}.'
    )
  return _FACTORIES[name](**options)


def _check_name(name: str) -> None:
  if name not in _FACTORIES:
    raise ValueError(f'Unknown search space {name!r}; choose one of {list(SPACE_NAMES)}.')


def _rsp_point(name: str) -> Sequence[spinenet_specs.BlockSpec]:
  return tuple(scale_permuted_space.rsp_space(name).scale_decreasing_point())


# name -> (space name, specs). SpineNet-49 without its last, level-2 output block,
# which a min_level=3 model never builds.
PUBLISHED_POINTS: Dict[str, Tuple[str, Sequence]] = {
  'spinenet49': (
    'spinenet',
    tuple(spinenet_specs.build_block_specs(spinenet_specs.SPINENET_BLOCK_SPECS[:-1])),
  ),
  'spinenet_mobile49': (
    'spinenet_mobile',
    tuple(spinenet_specs.build_block_specs(spinenet_specs.SPINENET_MOBILE_BLOCK_SPECS)),
  ),
  'nasfpn': ('nasfpn', tuple(nasfpn_specs.build_cell_specs())),
  **{name: (name, _rsp_point(name)) for name in scale_permuted_space.RSP_ALLOCATIONS},
}

"""Search spaces: published points round-trip, sampled points are valid, errors are clear.

The model-building tests (tiny SpineNet / SpineNet-Mobile / NAS-FPN from sampled
points, the R-SP stems) are marked slow; the rest runs in seconds.
"""

import pickle
import random

from absl.testing import parameterized
import pyglove as pg
import pytest

from official_spinenet.modeling.backbones import spinenet_specs
from official_spinenet.modeling.decoders import nasfpn_specs
from official_spinenet.search import scale_permuted_space
from official_spinenet.search import spaces

NUM_SAMPLES = 300
NUM_PYGLOVE_SAMPLES = 10
OUTPUT_LEVELS = [3, 4, 5, 6, 7]
SPINENET49 = spaces.PUBLISHED_POINTS['spinenet49'][1]


def _sample(space, seed):
  return space.decode(pg.random_dna(space.dna_spec, random.Random(seed)))


def _fast_sample(space, seed):
  return space.decode(_random_numbers(space, random.Random(seed)))


def _random_numbers(space, rng):
  """A uniform random DNA as numbers, like pg.random_dna's but ~1000x faster."""
  numbers = []
  for choice in space.choices:
    if choice.is_fixed:
      continue
    if choice.k is None:
      numbers.append(rng.randrange(len(choice.candidates)))
    else:
      picked = rng.sample(range(len(choice.candidates)), choice.k)
      numbers.extend(sorted(picked) if choice.ascending else picked)
  return numbers


def _validate(space, specs):
  """The builder's own validator, called here directly rather than through decode."""
  if space.spec_class is nasfpn_specs.CellSpec:
    nasfpn_specs.validate_cell_specs(specs, 3, 7)
  else:
    spinenet_specs.validate_block_specs(
      specs, len(space.stem_levels), 3, 7, allowed_block_fns=space.block_fns
    )


class PublishedPointsTest(parameterized.TestCase):
  @parameterized.parameters(*sorted(spaces.PUBLISHED_POINTS))
  def test_encode_decode_is_identity(self, point):
    space_name, specs = spaces.PUBLISHED_POINTS[point]
    space = spaces.build_space(space_name)
    dna = space.encode(specs)
    self.assertEqual(space.decode(dna), list(specs))
    # Deterministic, and the DNA survives the numbers form Ray and JSON carry.
    self.assertEqual(space.encode(specs), dna)
    numbers = dna.to_numbers()
    self.assertTrue(all(isinstance(n, int) for n in numbers))
    self.assertEqual(pg.DNA.from_numbers(numbers, space.dna_spec), dna)
    self.assertEqual(space.decode(numbers), list(specs))

  def test_points_are_the_published_tables(self):
    self.assertEqual(
      list(SPINENET49), spinenet_specs.build_block_specs(spinenet_specs.SPINENET_BLOCK_SPECS)[:-1]
    )
    mobile = spaces.PUBLISHED_POINTS['spinenet_mobile49'][1]
    self.assertEqual(
      list(mobile), spinenet_specs.build_block_specs(spinenet_specs.SPINENET_MOBILE_BLOCK_SPECS)
    )
    self.assertEqual(list(spaces.PUBLISHED_POINTS['nasfpn'][1]), nasfpn_specs.build_cell_specs())

  def test_rsp_points_are_scale_decreasing(self):
    """Sec. 3.3's allocations: stem + permuted blocks = ResNet-50's, 17 with L6, L7."""
    expected_intermediate = {
      'r35_sp18': [2],
      'r23_sp30': [2, 3, 4, 4, 4],
      'r14_sp39': [2, 2, 3, 3, 4, 4, 4, 4],
      'r0_sp53': [2, 3, 3, 3, 4, 4, 4, 4, 4, 5],
    }
    for name, intermediate in expected_intermediate.items():
      space = spaces.build_space(name)
      specs = spaces.PUBLISHED_POINTS[name][1]
      self.assertEqual([s.level for s in specs], intermediate + OUTPUT_LEVELS, name)
      self.assertEqual(len(space.stem_levels) + len(specs), 17, name)
      n = len(space.stem_levels)
      self.assertEqual(
        [s.input_offsets for s in specs][-1], (n + len(specs) - 3, n + len(specs) - 2)
      )
      self.assertEqual({s.block_fn for s in specs}, {'bottleneck'})
    self.assertEqual(spaces.build_space('r14_sp39').stem_levels, (2, 3, 4, 5))

  def test_nasfpn_paper_cell_obeys_the_stride8_rule(self):
    cells = spaces.PUBLISHED_POINTS['nasfpn'][1]
    self.assertEqual([c.level for c in cells if not c.is_output], [4, 4])


class SampledPointsTest(parameterized.TestCase):
  @parameterized.parameters(*spaces.SPACE_NAMES)
  def test_random_points_are_valid(self, name):
    space = spaces.build_space(name)
    rng = random.Random(0)
    for _ in range(NUM_SAMPLES):
      specs = space.decode(_random_numbers(space, rng))
      _validate(space, specs)
      self.assertEqual(sorted(s.level for s in specs if s.is_output), OUTPUT_LEVELS)
      self.assertEqual(space.decode(space.encode_numbers(specs)), specs)

  @parameterized.parameters(*spaces.SPACE_NAMES)
  def test_pyglove_dnas_decode_as_materialize_does(self, name):
    """PyGlove's own sampler and decoder agree with the space's numbers decoding."""
    space = spaces.build_space(name)
    for seed in range(NUM_PYGLOVE_SAMPLES):
      dna = pg.random_dna(space.dna_spec, random.Random(seed))
      specs = space.decode(dna)
      _validate(space, specs)
      self.assertEqual(space.decode(dna.to_numbers()), specs)
      if seed < 2:
        values = pg.materialize(space.hyper_value, dna)
        self.assertEqual(space._specs(values), specs)  # pylint: disable=protected-access
        self.assertEqual(space.encode(specs).to_numbers(), space.encode_numbers(specs))

  def test_bad_numbers(self):
    space = spaces.build_space('nasfpn')
    numbers = space.encode_numbers(spaces.PUBLISHED_POINTS['nasfpn'][1])
    with self.assertRaisesRegex(ValueError, 'which takes 28'):
      space.decode(numbers[:-1])
    numbers[2], numbers[3] = numbers[3], numbers[2]
    with self.assertRaisesRegex(ValueError, 'cell0_inputs repeat or are out of order'):
      space.decode(numbers)

  @parameterized.parameters('spinenet', 'spinenet_mobile', 'r23_sp30')
  def test_parents_and_adjustments(self, name):
    space = spaces.build_space(name)
    n, num_inputs = space.num_intermediate, len(space.stem_levels)
    levels = set()
    for seed in range(50):
      specs = _fast_sample(space, seed)
      for i, spec in enumerate(specs):
        first, second = spec.input_offsets
        self.assertLess(first, second)
        if i < n:
          self.assertGreaterEqual(first, num_inputs + i - scale_permuted_space.WINDOW)
        self.assertIn(spec.block_fn, space.block_fns)
      levels.update(s.level for s in specs[:n])
    if name.startswith('r'):
      self.assertEqual(levels, set(space.intermediate_levels))
    else:
      self.assertTrue(levels >= {1, 6, 7}, levels)  # offsets -1 and +2 are reached.

  def test_window_none_allows_all_parents(self):
    space = spaces.build_space('spinenet', window=None)
    parents = {_fast_sample(space, seed)[9].input_offsets[0] for seed in range(200)}
    self.assertIn(0, parents)
    self.assertEqual(space.decode(space.encode(SPINENET49)), list(SPINENET49))

  def test_levels_outside_the_range_are_clamped(self):
    space = spaces.build_space('spinenet', level_offsets=(-3, 3))
    for seed in range(50):
      specs = _fast_sample(space, seed)
      self.assertTrue(all(1 <= s.level <= 7 for s in specs))
      _validate(space, specs)

  def test_nasfpn_stride8_option(self):
    default = spaces.build_space('nasfpn')
    allowed = spaces.build_space('nasfpn', allow_stride8_intermediate=True)
    default_levels, allowed_levels = set(), set()
    for seed in range(100):
      default_levels.update(c.level for c in _fast_sample(default, seed) if not c.is_output)
      allowed_levels.update(c.level for c in _fast_sample(allowed, seed) if not c.is_output)
    self.assertEqual(default_levels, {4, 5, 6, 7})
    self.assertIn(3, allowed_levels)

  def test_nasfpn_options(self):
    space = spaces.build_space('nasfpn', num_intermediate_cells=4, min_level=3, max_level=6)
    specs = _fast_sample(space, 0)
    self.assertLen(specs, 8)
    nasfpn_specs.validate_cell_specs(specs, 3, 6)


class InterfaceTest(parameterized.TestCase):
  def test_attributes_and_bindings(self):
    space = spaces.build_space('spinenet')
    self.assertEqual(space.name, 'spinenet')
    self.assertIs(space.spec_class, spinenet_specs.BlockSpec)
    self.assertEqual(space.builder_overrides(), {})
    self.assertEqual(
      space.gin_bindings('/x/found.json'), ["spinenet.block_specs = '/x/found.json'"]
    )
    rsp = spaces.build_space('r23_sp30')
    self.assertEqual(rsp.builder_overrides(), {'stem_block_levels': (2, 2, 3, 3, 4, 4, 5)})
    self.assertEqual(
      rsp.gin_bindings('f.json'),
      ["spinenet.block_specs = 'f.json'", 'spinenet.stem_block_levels = (2, 2, 3, 3, 4, 4, 5)'],
    )
    mobile = spaces.build_space('spinenet_mobile')
    self.assertEqual(mobile.gin_bindings('m.json'), ["spinenet_mobile.block_specs = 'm.json'"])
    nas = spaces.build_space('nasfpn')
    self.assertIs(nas.spec_class, nasfpn_specs.CellSpec)
    self.assertEqual(nas.gin_bindings('c.json'), ["nasfpn.cell_specs = 'c.json'"])
    self.assertEqual(
      set(spaces.SPACE_NAMES), {spaces.build_space(n).name for n in spaces.SPACE_NAMES}
    )

  @parameterized.parameters('spinenet', 'nasfpn', 'r35_sp18')
  def test_picklable(self, name):
    space = spaces.build_space(name)
    clone = pickle.loads(pickle.dumps(space))
    dna = pg.random_dna(space.dna_spec, random.Random(3))
    self.assertEqual(clone.decode(dna.to_numbers()), space.decode(dna))

  def test_bad_name_and_options(self):
    with self.assertRaisesRegex(ValueError, "Unknown search space 'spine'.*'spinenet'"):
      spaces.build_space('spine')
    with self.assertRaisesRegex(ValueError, r"Unknown option\(s\) \['windows'\].*'window'"):
      spaces.build_space('spinenet', windows=3)
    with self.assertRaisesRegex(ValueError, 'stem_block_levels'):
      spaces.build_space('spinenet_mobile', stem_block_levels=(2, 2))
    with self.assertRaisesRegex(ValueError, 'window 1 must be None or an int >= 2'):
      spaces.build_space('spinenet', window=1)
    with self.assertRaisesRegex(ValueError, "block_fns \\('mbconv',\\)"):
      spaces.build_space('spinenet', block_fns=('mbconv',))
    with self.assertRaisesRegex(ValueError, 'is not a stem'):
      spaces.build_space('spinenet', stem_block_levels=(2, 4))
    with self.assertRaisesRegex(ValueError, 'num_intermediate_cells'):
      spaces.build_space('nasfpn', num_intermediate_cells=-1)

  def test_encode_outside_the_space_names_the_spec(self):
    space = spaces.build_space('spinenet')
    specs = list(SPINENET49)
    specs[7] = spinenet_specs.BlockSpec(7, 'residual', (0, 8), False)  # outside the window
    with self.assertRaisesRegex(ValueError, r"Block spec 7 \{.*\} is outside the 'spinenet'"):
      space.encode(specs)
    specs = list(SPINENET49)
    specs[12] = spinenet_specs.BlockSpec(5, 'mbconv', (7, 12), True)
    with self.assertRaisesRegex(ValueError, r"Block spec 12 .*block_fn.*'mbconv'"):
      space.encode(specs)
    with self.assertRaisesRegex(ValueError, r"Block spec 4 .*'r0_sp53'.*gives level 6"):
      spaces.build_space('r0_sp53').encode(SPINENET49)  # residual blocks
    with self.assertRaisesRegex(ValueError, '16 block specs are outside'):
      space.encode(spinenet_specs.SPINENET_BLOCK_SPECS)
    cells = list(spaces.PUBLISHED_POINTS['nasfpn'][1])
    cells[1] = nasfpn_specs.CellSpec(3, 'sum', (1, 5), False)
    with self.assertRaisesRegex(ValueError, r"Cell spec 1 .*cell1_level 3 is not one of"):
      spaces.build_space('nasfpn').encode(cells)
    self.assertEqual(
      spaces.build_space('nasfpn', allow_stride8_intermediate=True).decode(
        spaces.build_space('nasfpn', allow_stride8_intermediate=True).encode(cells)
      ),
      cells,
    )

  def test_unreachable_level_names_the_spec(self):
    specs = list(SPINENET49)
    specs[4] = spinenet_specs.BlockSpec(7, 'residual', (3, 5), False)  # a second level 7
    with self.assertRaisesRegex(ValueError, 'not a permutation of the base levels'):
      spaces.build_space('spinenet').encode(specs)
    with self.assertRaisesRegex(ValueError, r"Block spec 4 .*gives level 7"):
      spaces.build_space('spinenet', level_offsets=(0,)).encode(specs)


def _tiny_spinenet(specs, **kwargs):
  from official_spinenet.modeling.backbones import spinenet  # pylint: disable=g-import-not-at-top

  return spinenet.SpineNet(
    input_specs=[1, 128, 128, 3],
    filter_size_scale=0.25,
    endpoints_num_filters=8,
    block_specs=specs,
    **kwargs,
  )


def _assert_pyramid(test, output_specs, channels=8):
  test.assertEqual(
    {k: list(v) for k, v in output_specs.items()},
    {str(l): [1, 128 // 2**l, 128 // 2**l, channels] for l in OUTPUT_LEVELS},
  )


@pytest.mark.slow
class BuildTest(parameterized.TestCase):
  """Sampled points build real (tiny) models with P3..P7."""

  @parameterized.parameters(0, 1, 2)
  def test_spinenet_points_build(self, seed):
    space = spaces.build_space('spinenet')
    _assert_pyramid(self, _tiny_spinenet(_sample(space, seed)).output_specs)

  @parameterized.parameters(0, 1, 2)
  def test_spinenet_mobile_points_build(self, seed):
    from official_spinenet.modeling.backbones import spinenet_mobile  # pylint: disable=g-import-not-at-top

    space = spaces.build_space('spinenet_mobile')
    model = spinenet_mobile.SpineNetMobile(
      input_specs=[1, 128, 128, 3],
      filter_size_scale=0.25,
      endpoints_num_filters=8,
      block_specs=_sample(space, seed),
    )
    _assert_pyramid(self, model.output_specs)

  @parameterized.parameters(0, 1, 2)
  def test_nasfpn_points_build(self, seed):
    from official_spinenet.modeling.decoders import nasfpn  # pylint: disable=g-import-not-at-top

    pyramid = {str(l): [1, 128 // 2**l, 128 // 2**l, 8] for l in OUTPUT_LEVELS}
    model = nasfpn.NASFPN(
      input_specs=pyramid,
      cell_specs=_sample(spaces.build_space('nasfpn'), seed),
      num_filters=8,
      num_repeats=1,
      merge_filters=None,
    )
    _assert_pyramid(self, model.output_specs)

  @parameterized.parameters('r35_sp18', 'r14_sp39', 'r0_sp53')
  def test_rsp_points_build(self, name):
    space = spaces.build_space(name)
    specs = _sample(space, 0) if name == 'r0_sp53' else spaces.PUBLISHED_POINTS[name][1]
    model = _tiny_spinenet(specs, **space.builder_overrides())
    _assert_pyramid(self, model.output_specs)
    self.assertEqual([level for level, _ in model.STEM_BLOCKS], list(space.stem_levels))
    # SpineNet's own stem (R0-SP53's) stays out of the config.
    self.assertEqual(model.get_config().get('stem_block_levels', [2, 2]), list(space.stem_levels))

  def test_default_stem_is_unchanged(self):
    default = _tiny_spinenet(None)
    explicit = _tiny_spinenet(None, stem_block_levels=(2, 2))
    self.assertEqual(default.get_config(), explicit.get_config())
    self.assertNotIn('stem_block_levels', default.get_config())
    self.assertEqual([w.shape for w in default.weights], [w.shape for w in explicit.weights])
    self.assertEqual(
      [type(l).__name__ for l in default.layers], [type(l).__name__ for l in explicit.layers]
    )

"""The search algorithms: random search, regularized evolution and our PPO controller.

All three are PyGlove `DNAGenerator`s (`setup(dna_spec)`, `propose()`, `feedback(dna,
reward)`), so the Ray searcher drives them alike. Rewards are maximised.

- 'random': `pg.geno.Random(seed)`, uniform over the space (the baseline of NAS-FPN Fig. 4).
- 'evolution': regularized evolution (Real et al., 2019) from `pg.evolution`: a population of
  the last `population_size` evaluated architectures; each child mutates one decision of the
  best of `tournament_size` random members (`CategoricalMutator`, which keeps permutations
  and sorted sub-lists valid). The defaults suit budgets of tens to hundreds of trials.
- 'ppo': `ppo_controller.PPOController`, the NAS-FPN / SpineNet controller.

Resuming (`save_state` / `restore_state`), what is reproduced exactly:
- random: the next proposals equal the uninterrupted run's whenever a seed is set (the saved
  RNG state, or PyGlove's `recover` replaying one random draw per history entry);
- evolution: exactly, when the state was saved at the same number of proposals as the
  history (RNG states of the initializer, tournament and mutator; population in feedback
  order). If the history runs past the saved state (proposals made after the last save), the
  population is rebuilt from the history but the RNGs move to fresh streams derived from
  (seed, number of proposals): a deterministic continuation, not the lost process's one, and
  it does not re-draw what was already proposed;
- ppo: the same rule (see `PPOController.save` and `_restore_ppo`).
"""

import os
import random
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pyglove as pg
import tensorflow as tf

from official_spinenet.search import decisions
from official_spinenet.search import ppo_controller
from official_spinenet.utils import files

ALGORITHMS = ('random', 'evolution', 'ppo')
STATE_FILE = 'algorithm_state.json'
_EVOLUTION_DEFAULTS = {'population_size': 20, 'tournament_size': 5}
_PPO_OPTIONS = tuple(str(k) for k in ppo_controller.PPOController.__schema__.fields if k != 'seed')
OPTIONS = {'random': (), 'evolution': tuple(_EVOLUTION_DEFAULTS), 'ppo': _PPO_OPTIONS}

# Keys of the DNA metadata PyGlove's evolution reads (pyglove/ext/evolution/base.py).
_PROPOSAL_ID = 'proposal_id'
_INITIAL = 'initial_population'
_GENERATION = 'generation_id'

History = Sequence[Tuple[pg.DNA, Optional[float]]]


@pg.members([('seed', pg.typing.Int().noneable(), 'Seed of the mutation RNG.')])
class CategoricalMutator(pg.evolution.Mutator):
  """Changes one decision point of a flat categorical DNA, keeping the DNA valid.

  The point is uniform among those that can change. A one_of takes another candidate; in an
  unsorted distinct group (a permutation, an ordered sub-list) the new candidate swaps places
  with the sub-choice holding it, if any; a sorted group takes a candidate it lacks and is
  re-sorted. PyGlove's `mutators.Uniform` instead re-draws whole sub-trees (the root too)
  and cannot change a full permutation one position at a time.
  """

  def _on_bound(self):
    super()._on_bound()
    self._random = random.Random(self.seed)
    self._layouts: Dict[int, decisions.DecisionLayout] = {}

  def mutate(self, dna: pg.DNA, step: int = 0) -> pg.DNA:
    del step
    spec = dna.spec
    layout = self._layouts.get(id(spec))
    if layout is None:
      layout = self._layouts[id(spec)] = decisions.decision_layout(spec)
    numbers = [int(v) for v in dna.to_numbers()]
    mutable = [t for t in range(layout.num_decisions) if _can_change(layout, t)]
    if not mutable:
      return dna.clone(deep=True)
    t = self._random.choice(mutable)
    start, size = int(layout.group_start[t]), int(layout.group_size[t])
    group = numbers[start : start + size]
    if layout.sorted[t] and layout.distinct[t]:
      others = [v for v in range(layout.num_candidates[t]) if v not in group]
    else:
      others = [v for v in range(layout.num_candidates[t]) if v != numbers[t]]
    new = self._random.choice(others)
    if layout.distinct[t] and new in group:  # unsorted distinct: swap the two positions
      numbers[start + group.index(new)] = numbers[t]
    numbers[t] = new
    if layout.sorted[t]:
      numbers[start : start + size] = sorted(numbers[start : start + size])
    return decisions.dna_from_numbers(numbers, spec)


def _can_change(layout: decisions.DecisionLayout, t: int) -> bool:
  if layout.sorted[t] and layout.distinct[t]:  # a sorted group of all candidates is fixed
    return layout.num_candidates[t] > layout.group_size[t]
  return layout.num_candidates[t] > 1


class RegularizedEvolution(pg.evolution.Evolution):
  """`pg.evolution.Evolution` that accepts feedback of DNAs rebuilt from numbers.

  PyGlove's evolution keeps its bookkeeping (initial population or not, generation) in the
  proposed DNA's metadata, which a DNA that travelled as numbers (Ray configs, JSON state)
  no longer carries. Here the metadata of each proposal is also kept by number, restored
  onto such a DNA at feedback, and logged (with the feedback order) for `save_state`.
  """

  def _setup(self) -> None:
    super()._setup()
    self._proposal_log: List[List[Any]] = []  # [initial_population, generation_id] per proposal
    self._feedback_log: List[int] = []  # 0-based proposal index of each feedback, in order
    self._waiting: Dict[Tuple[int, ...], List[int]] = {}  # numbers -> proposal indices

  def _propose(self) -> pg.DNA:
    dna = super()._propose()
    self._log_proposal(dna)
    return dna

  def _log_proposal(self, dna: pg.DNA) -> None:
    index = len(self._proposal_log)
    self._proposal_log.append([bool(dna.metadata[_INITIAL]), int(dna.metadata[_GENERATION])])
    self._waiting.setdefault(tuple(dna.to_numbers()), []).append(index)

  def _feedback(self, dna: pg.DNA, reward: float) -> None:
    if dna.spec is None:
      dna.use_spec(self.dna_spec)
    waiting = self._waiting.get(tuple(dna.to_numbers()))
    if waiting:
      index = waiting.pop(0)
      entry = self._proposal_log[index]
    else:  # not proposed by this run (a user's prior): joins the population as a child
      index, entry = -1, [False, self.num_generations]
    if _INITIAL not in dna.metadata:
      _tag(dna, index, entry)
    self._feedback_log.append(index)
    super()._feedback(dna, reward)


def _tag(dna: pg.DNA, index: int, entry: Sequence[Any]) -> pg.DNA:
  """Writes PyGlove evolution's metadata: 0-based proposal `index`, [initial, generation]."""
  dna.set_metadata(_PROPOSAL_ID, index + 1)
  dna.set_metadata(_INITIAL, bool(entry[0]))
  return dna.set_metadata(_GENERATION, int(entry[1]))


def build_algorithm(name: str, seed: Optional[int] = None, **options) -> pg.DNAGenerator:
  """Returns a fresh search algorithm; call `setup(dna_spec)` on it next.

  Args:
    name: one of ALGORITHMS.
    seed: makes proposals reproducible (None: nondeterministic).
    **options: 'evolution': population_size (default 20), tournament_size (default 5);
      'ppo': any PPOController field but seed (batch_size, learning_rate, ...).

  Raises:
    ValueError: an unknown name or option, or an invalid option value.
  """
  if name not in ALGORITHMS:
    raise ValueError(f'Unknown search algorithm {name!r}; choose one of {ALGORITHMS}.')
  unknown = sorted(set(options) - set(OPTIONS[name]))
  if unknown:
    raise ValueError(
      f'Unknown option(s) {unknown} for algorithm {name!r}; its options are {OPTIONS[name]}.'
    )
  try:
    if name == 'random':
      return pg.geno.Random(seed=seed)
    if name == 'ppo':
      return ppo_controller.PPOController(seed=seed, **options)
    return _build_evolution(seed, **{**_EVOLUTION_DEFAULTS, **options})
  except (TypeError, ValueError) as e:
    raise ValueError(f'Bad option for algorithm {name!r}: {e}') from e


def _build_evolution(seed: Optional[int], population_size: int, tournament_size: int):
  # The same checks (and error messages) as pg.evolution.regularized_evolution.
  pg.evolution.regularized_evolution(
    population_size=population_size, tournament_size=tournament_size, seed=seed
  )
  seeds = [None] * 3 if seed is None else [seed, seed + 1, seed + 2]
  selectors = pg.evolution.selectors
  return RegularizedEvolution(
    selectors.Random(tournament_size, seed=seeds[0])
    >> selectors.Top(1)
    >> CategoricalMutator(seed=seeds[1]),
    population_init=(pg.geno.Random(seed=seeds[2]), population_size),
    population_update=selectors.Last(population_size),
  )


def _random_generators(algorithm: pg.DNAGenerator) -> List[random.Random]:
  """The seeded Python RNGs a PyGlove algorithm draws from, in a fixed order."""
  owners = [algorithm]
  if isinstance(algorithm, pg.evolution.Evolution):
    owners = [algorithm._init_population_generator]  # pylint: disable=protected-access
    owners += pg.query(algorithm.reproduction, where=lambda v: hasattr(v, '_random')).values()
  generators = [getattr(owner, '_random', None) for owner in owners]
  return [g for g in generators if isinstance(g, random.Random)]


def save_state(algorithm: pg.DNAGenerator, directory: str) -> None:
  """Writes what `restore_state` needs beyond the history into `directory` (atomically).

  PPO: weights, Adam slots, baseline, RNG, in-flight samples, pending batch, its history
  (`ppo_controller.STATE_FILE`). Random / evolution: their RNG states and, for evolution, each
  proposal's bookkeeping and the feedback order (`STATE_FILE`, plain JSON). Other generators:
  nothing (they are restored by `recover` alone).
  """
  if isinstance(algorithm, ppo_controller.PPOController):
    algorithm.save(directory)
    return
  if not isinstance(algorithm, (pg.geno.Random, RegularizedEvolution)):
    return
  state = {
    'algorithm': type(algorithm).__name__,
    'num_proposals': algorithm.num_proposals,
    'random_states': [list(g.getstate()) for g in _random_generators(algorithm)],
  }
  if isinstance(algorithm, RegularizedEvolution):
    state['proposals'] = algorithm._proposal_log  # pylint: disable=protected-access
    state['feedback_order'] = algorithm._feedback_log  # pylint: disable=protected-access
  files.write_json_atomically(state, os.path.join(directory, STATE_FILE))


def restore_state(algorithm: pg.DNAGenerator, directory: str, history: History) -> None:
  """Brings a fresh, set-up `algorithm` to where the interrupted run was (see module doc).

  Args:
    algorithm: from `build_algorithm` with the run's name, seed and options, `setup` done.
    directory: where `save_state` wrote (it may hold nothing yet).
    history: every DNA proposed so far, in proposal order, with its reward (None: in flight).

  Raises:
    ValueError: the saved state belongs to another space or disagrees with the history.
  """
  history = [(dna, None if r is None else float(r)) for dna, r in history]
  if isinstance(algorithm, ppo_controller.PPOController):
    _restore_ppo(algorithm, directory, history)
    return
  path = os.path.join(directory, STATE_FILE)
  state = files.read_json(path, 'Search state') if tf.io.gfile.exists(path) else None
  if state is not None and state.get('algorithm') != type(algorithm).__name__:
    raise ValueError(f'{path!r} holds the state of {state.get("algorithm")!r}, not of this run.')
  exact = state is not None and state['num_proposals'] == len(history)
  if isinstance(algorithm, RegularizedEvolution):
    _restore_evolution(algorithm, state or {}, history)
  elif exact and isinstance(algorithm, pg.geno.Random):
    algorithm._num_proposals = len(history)  # the saved RNG state replaces replaying the draws
    algorithm._num_feedbacks = sum(r is not None for _, r in history)
  else:
    algorithm.recover(history)  # pg.geno.Random(seed) re-draws one DNA per history entry
  generators = _random_generators(algorithm)
  if exact:
    for generator, saved in zip(generators, state['random_states']):
      generator.setstate((saved[0], tuple(saved[1]), saved[2]))
  elif history and isinstance(algorithm, RegularizedEvolution):
    for generator in generators:  # fresh streams, so the lost proposals are not re-drawn
      generator.seed(f'{generator.getrandbits(64)}-{len(history)}')


def _restore_evolution(algorithm: RegularizedEvolution, state: Dict[str, Any], history) -> None:
  """Rebuilds the population with PyGlove's `recover`, feedbacks in their original order."""
  spec, layout = algorithm.dna_spec, decisions.decision_layout(algorithm.dna_spec)
  logged = state.get('proposals', [])
  population = algorithm._init_population_size  # pylint: disable=protected-access
  dnas = []
  for i, (dna, _) in enumerate(history):
    numbers = decisions.check_numbers(layout, dna.to_numbers())
    # Without a log entry: the first `population` proposals were the random initial ones.
    entry = logged[i] if i < len(logged) else [i < population, max(1, i - population + 2)]
    algorithm._proposal_log.append(list(entry))  # pylint: disable=protected-access
    algorithm._waiting.setdefault(tuple(numbers), []).append(i)  # pylint: disable=protected-access
    dnas.append(_tag(decisions.dna_from_numbers(numbers, spec), i, entry))
  rewarded = {i for i, (_, reward) in enumerate(history) if reward is not None}
  order = [i for i in state.get('feedback_order', []) if i in rewarded]
  order += sorted(rewarded - set(order))
  in_flight = [i for i, (_, reward) in enumerate(history) if reward is None]
  algorithm.recover([(dnas[i], history[i][1]) for i in order + in_flight])


def _restore_ppo(controller: ppo_controller.PPOController, directory: str, history) -> None:
  """Loads the saved controller, then catches up with the history written after the save."""
  saved = []
  if tf.io.gfile.exists(os.path.join(directory, ppo_controller.STATE_FILE)):
    controller.load(directory)
    saved = controller.history
  for i, (dna, reward) in enumerate(history[: len(saved)]):
    numbers = [int(v) for v in dna.to_numbers()]
    if numbers != saved[i][0]:
      raise ValueError(
        f'The controller state in {directory!r} disagrees with the history at trial {i}: '
        f'{saved[i][0]} != {numbers}.'
      )
    if reward is not None and saved[i][1] is None:  # its feedback came after the save
      controller.feedback_numbers(numbers, reward)
  if len(history) > len(saved):
    controller.recover(history[len(saved) :])
    controller.reseed(len(history))

"""Any PyGlove algorithm as a Ray Tune `Searcher` (issue 11, part 4).

  searcher = tune_searcher.PyGloveSearcher(space, 'ppo', num_trials=16, seed=0)
  tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=searcher, ...))

Tune asks `suggest(trial_id)` for a trial's config: the adapter has the algorithm
(a `pg.DNAGenerator`: random search, regularized evolution, our PPO controller)
propose a DNA and returns its numbers and the architecture it decodes to,
`{'dna': [ints], 'specs': [spec dicts]}`. When the trial ends, `on_trial_complete`
feeds its 'reward' back; a trial that crashed, reported NaN or no reward gets
`failed_reward`, is logged, and the search goes on.

Resume: Tune saves the searcher together with its own experiment state
(`save(path)` into the run's folder, `restore(path)` in `Tuner.restore`). The state
is one JSON file: every proposed DNA with its reward (None while in flight), the
trial ids in flight, and the files `algorithms.save_state` writes (embedded, since
Tune copies only .json / .pkl files of the run's folder back on restore). Trials
in flight when the run died are re-run by Tune under the same trial id and config;
their DNA comes back by trial id and is fed back exactly once. JSON is read with
`json`, never with PyGlove's loader, which can unpickle objects; the algorithm
state it holds is only what this searcher wrote into the run's own folder.
"""

import base64
import json
import math
import os
import tempfile
from typing import Any, Dict, List, Mapping, Optional, Tuple

from absl import logging
import pyglove as pg

try:
  from ray.tune.search import Searcher  # pylint: disable=g-import-not-at-top
except ImportError as e:  # Ray is an optional extra.
  raise ImportError(
    'The architecture search runs its trials on Ray Tune: pip install official_spinenet[search]'
  ) from e

from official_spinenet.search import algorithms
from official_spinenet.utils import files

STATE_VERSION = 1


def reward_of(
  result: Optional[Mapping[str, Any]], error: bool, failed_reward: float
) -> Tuple[float, Optional[str]]:
  """A trial's reward and, if it failed, why.

  Args:
    result: the trial's last reported result (None if it crashed before reporting).
    error: whether Tune saw the trial raise.
    failed_reward: the reward of a failed trial.

  Returns:
    (reward, None) for a finite reward; (failed_reward, reason) otherwise.
  """
  if error:
    return failed_reward, 'the trial raised (see its error file)'
  value = (result or {}).get('reward')
  if value is None:
    return failed_reward, 'the trial reported no reward'
  try:
    value = float(value)
  except (TypeError, ValueError):
    return failed_reward, f'the trial reported a non-numeric reward {value!r}'
  if not math.isfinite(value):
    return failed_reward, f'the trial reported reward {value}'
  if (result or {}).get('status') == 'failed':
    return failed_reward, str(result.get('error', 'the trial failed'))
  return value, None


def _read_tree(directory: str) -> Dict[str, str]:
  """{relative path: base64 content} of every file under `directory`."""
  tree = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        tree[os.path.relpath(path, directory)] = base64.b64encode(f.read()).decode('ascii')
  return tree


def _write_tree(tree: Mapping[str, str], directory: str) -> None:
  """Writes `_read_tree` output back below `directory` (paths may not leave it)."""
  root = os.path.realpath(directory)
  for relpath, content in tree.items():
    path = os.path.realpath(os.path.join(root, relpath))
    if os.path.commonpath([root, path]) != root:
      raise ValueError(f'Searcher state names a file outside its folder: {relpath!r}.')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
      f.write(base64.b64decode(content))


class PyGloveSearcher(Searcher):
  """A PyGlove `DNAGenerator` proposing the trials of a Ray Tune run.

  Attributes:
    history: (DNA numbers, reward) of every proposed trial in proposal order;
      reward None while the trial is in flight.
  """

  def __init__(
    self,
    space,
    algorithm: str = 'ppo',
    algorithm_options: Optional[Mapping[str, Any]] = None,
    seed: Optional[int] = 0,
    num_trials: int = 16,
    failed_reward: float = 0.0,
    metric: str = 'reward',
    mode: str = 'max',
  ):
    """Builds the algorithm (`algorithms.build_algorithm`) and sets it up on the space.

    Args:
      space: a `spaces.SearchSpace`.
      algorithm: a name of `algorithms.ALGORITHMS`.
      algorithm_options: its keyword options.
      seed: its seed.
      num_trials: trials to propose; `suggest` returns FINISHED afterwards.
      failed_reward: the reward of a failed trial.
      metric: the result key Tune reads (the adapter always feeds 'reward').
      mode: 'max' (rewards are maximised).
    """
    super().__init__(metric=metric, mode=mode)
    self._args = dict(
      space=space,
      algorithm=algorithm,
      algorithm_options=dict(algorithm_options or {}),
      seed=seed,
      num_trials=num_trials,
      failed_reward=failed_reward,
      metric=metric,
      mode=mode,
    )
    self._space = space
    self._algorithm_name = algorithm
    self._algorithm_options = dict(algorithm_options or {})
    self._seed = seed
    self._num_trials = num_trials
    self._failed_reward = float(failed_reward)
    self._algorithm = self._new_algorithm()
    # One entry per proposed trial: {'trial_id', 'dna', 'reward', 'error'}.
    self._trials: List[Dict[str, Any]] = []
    self._in_flight: Dict[str, int] = {}  # trial id -> index into self._trials
    self._dnas: Dict[str, pg.DNA] = {}  # the DNA objects in flight, for feedback
    self._saved_tree: Optional[Dict[str, str]] = None  # algorithm state, unless changed since

  def _new_algorithm(self) -> pg.DNAGenerator:
    algorithm = algorithms.build_algorithm(
      self._algorithm_name, seed=self._seed, **self._algorithm_options
    )
    algorithm.setup(self._space.dna_spec)
    return algorithm

  def __getstate__(self) -> Dict[str, Any]:
    # Tune pickles the searcher with the Tuner; an algorithm need not be picklable
    # (the PPO controller holds a Keras model): its saved state travels instead.
    return {'args': self._args, 'state': self.get_state()}

  def __setstate__(self, pickled: Mapping[str, Any]) -> None:
    self.__init__(**pickled['args'])
    self.set_state(pickled['state'])

  @property
  def records(self) -> List[Dict[str, Any]]:
    """One dict per proposed trial: trial_id, dna (numbers), reward (None in flight), error."""
    return [dict(t) for t in self._trials]

  @property
  def history(self) -> List[Tuple[List[int], Optional[float]]]:
    return [(list(t['dna']), t['reward']) for t in self._trials]

  @property
  def in_flight(self) -> List[str]:
    """Trial ids proposed and not yet fed back."""
    return sorted(self._in_flight)

  def set_search_properties(self, metric: Optional[str], mode: Optional[str], config, **spec):
    """Takes Tune's metric and mode; the config is ours, there is nothing to resolve."""
    del config, spec
    if mode not in (None, 'max'):
      raise ValueError(f'PyGloveSearcher maximises the reward; got mode={mode!r}.')
    self._metric = metric or self._metric
    return True

  def suggest(self, trial_id: str) -> Optional[Dict[str, Any]]:
    """{'dna': [ints], 'specs': [spec dicts]} of a new point, or FINISHED."""
    if trial_id in self._in_flight:  # asked again for a trial it proposed: the same point
      return self._config(self._dnas[trial_id])
    if len(self._trials) >= self._num_trials:
      return Searcher.FINISHED
    try:
      dna = self._algorithm.propose()
    except StopIteration:  # the algorithm has exhausted the space
      return Searcher.FINISHED
    self._saved_tree = None
    self._in_flight[trial_id] = len(self._trials)
    self._dnas[trial_id] = dna
    self._trials.append(
      {'trial_id': trial_id, 'dna': dna.to_numbers(), 'reward': None, 'error': None}
    )
    return self._config(dna)

  def _config(self, dna: pg.DNA) -> Dict[str, Any]:
    specs = self._space.decode(dna)
    return {'dna': list(dna.to_numbers()), 'specs': [s.to_dict() for s in specs]}

  def on_trial_complete(
    self, trial_id: str, result: Optional[Dict] = None, error: bool = False
  ) -> None:
    """Feeds the trial's reward (or failed_reward) back to the algorithm, once."""
    index = self._in_flight.pop(trial_id, None)
    if index is None:
      logging.warning('Trial %s completed again or was never proposed here; ignored.', trial_id)
      return
    reward, failure = reward_of(result, error, self._failed_reward)
    if failure:
      logging.warning('Trial %s failed (%s); scored %g.', trial_id, failure, reward)
    self._algorithm.feedback(self._dnas.pop(trial_id), reward)
    self._saved_tree = None
    self._trials[index].update(reward=reward, error=failure)

  def get_state(self) -> Dict[str, Any]:
    """The JSON-safe state `set_state` takes (see the module docstring)."""
    if self._saved_tree is None:
      with tempfile.TemporaryDirectory() as tmp:
        algorithms.save_state(self._algorithm, tmp)
        self._saved_tree = _read_tree(tmp)
    return {
      'version': STATE_VERSION,
      'space': self._space.name,
      'algorithm': self._algorithm_name,
      'seed': self._seed,
      'num_trials': self._num_trials,
      'trials': self._trials,
      'in_flight': {trial_id: i for trial_id, i in self._in_flight.items()},
      'algorithm_state': self._saved_tree,
    }

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Restores `get_state` output into this (fresh) searcher.

    Raises:
      ValueError: a state of another space, algorithm or format.
    """
    expected = {'version': STATE_VERSION, 'space': self._space.name}
    expected['algorithm'] = self._algorithm_name
    for key, value in expected.items():
      if state.get(key) != value:
        raise ValueError(
          f'The saved search state has {key}={state.get(key)!r}, this search {value!r}: '
          'resume a run with the configuration it started with.'
        )
    self._algorithm = self._new_algorithm()
    self._trials = [dict(t) for t in state['trials']]
    self._in_flight = {str(k): int(v) for k, v in state['in_flight'].items()}
    dna_spec = self._space.dna_spec
    history = [(pg.DNA.from_numbers(t['dna'], dna_spec), t['reward']) for t in self._trials]
    with tempfile.TemporaryDirectory() as tmp:
      _write_tree(state['algorithm_state'], tmp)
      algorithms.restore_state(self._algorithm, tmp, history)
    self._dnas = {trial_id: history[i][0] for trial_id, i in self._in_flight.items()}
    self._saved_tree = dict(state['algorithm_state'])

  def save(self, checkpoint_path: str) -> None:
    """Writes the state as JSON (Tune calls this with a file in the run's folder)."""
    files.write_json_atomically(self.get_state(), checkpoint_path)

  def restore(self, checkpoint_path: str) -> None:
    """Reads a file `save` wrote (with `json`: nothing is unpickled)."""
    with open(checkpoint_path, encoding='utf-8') as f:
      self.set_state(json.load(f))
    logging.info(
      'Restored the searcher: %d trials proposed, %d in flight.',
      len(self._trials),
      len(self._in_flight),
    )

"""An RNN controller trained with PPO, as a PyGlove `DNAGenerator` (NAS-FPN Sec. 3 and 4.1).

NAS-FPN (Ghiasi et al., 2019) searches with Zoph & Le's controller (Zoph & Le, 2017; Zoph et
al., 2018): an LSTM emits the architecture one decision at a time, each decision a softmax over
its candidates whose chosen candidate's embedding is the next step's input; the controller is
trained with Proximal Policy Optimization (Schulman et al., 2017) on the proxy's reward (the
paper: validation AP; SpineNet Sec. 3.2 reuses the recipe). Here:

- the LSTM walks `dna_spec.decision_points` in order: a one_of is one step, a multi-choice
  (`pg.sublist_of`, `pg.permutate`) one step per sub-choice;
- each step's softmax is masked (`decisions.valid_candidates`) so every proposal is valid:
  a permutation stays a permutation, sorted picks stay sorted and leave room for the rest;
- after every `batch_size` feedbacks one PPO update: `update_epochs` full-batch Adam steps on
  the clipped surrogate  -mean(min(r A, clip(r, 1 - eps, 1 + eps) A)) - c * mean(entropy),
  r = pi(a) / pi_old(a) with pi_old the policy that sampled a (its log-prob is stored at
  sampling time), A = reward - b and b an exponential moving average of the rewards.

Sampling is plain numpy (a Generator seeded by `seed`; weights mirrored after each update):
about 50 us per decision point and no TensorFlow call. The update is one `tf.function` (a
tf_keras LSTM cell run over the batch with teacher forcing, the epochs a graph loop), traced
once per controller (~2 s) and then ~50 ms per update. The initial weights come from the same
seeded Generator, so a seed gives the same proposals in any process. Building the PyGlove
`pg.DNA` of a proposal costs more than sampling it (~0.5-1 ms per decision point);
`propose_numbers` / `feedback_numbers` skip it for callers that carry numbers.

State: `save(directory)` / `load(directory)` write one compressed `.npz` atomically (weights,
Adam slots and, as UTF-8 bytes, a JSON document of the rest: baseline, RNG state, in-flight
samples with their log-probs, the pending batch, the proposal history); it is loaded with
`allow_pickle=False` and `json`, so loading never runs code.
"""

import io
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyglove as pg
import tensorflow as tf
import tf_keras

from official_spinenet.search import decisions
from official_spinenet.utils import files

STATE_FILE = 'ppo_controller.npz'
_FORMAT_VERSION = 1


class _PolicyNetwork(tf.Module):
  """The controller's weights: an LSTM over T steps with a softmax head and embedding per step.

  Step t reads the embedding of step t-1's choice (a learned start vector at t = 0) and
  produces logits [K] for decision point t (K = the space's largest candidate count; the
  masks cut each step to its own candidates).
  """

  def __init__(self, layout: decisions.DecisionLayout, hidden_size: int, embedding_size: int):
    super().__init__(name='ppo_controller')
    steps, width = layout.num_decisions, layout.max_candidates
    # RNN(LSTMCell) rather than LSTM: same cell, but LSTM's implementation selector takes
    # seconds longer to trace and the controller's batches are too small to gain from it.
    self.lstm = tf_keras.layers.RNN(tf_keras.layers.LSTMCell(hidden_size), return_sequences=True)
    self.lstm.build((None, steps, embedding_size))
    self.start = tf.Variable(tf.zeros([embedding_size]), name='start')
    self.embedding = tf.Variable(tf.zeros([steps, width, embedding_size]), name='embedding')
    self.out_kernel = tf.Variable(tf.zeros([steps, hidden_size, width]), name='out_kernel')
    self.out_bias = tf.Variable(tf.zeros([steps, width]), name='out_bias')

  @property
  def weights(self) -> List[tf.Variable]:
    """Fixed order: start, embedding, LSTM kernel, recurrent kernel, bias, head kernel, bias."""
    cell = self.lstm.cell
    return [
      self.start,
      self.embedding,
      cell.kernel,
      cell.recurrent_kernel,
      cell.bias,
      self.out_kernel,
      self.out_bias,
    ]

  def logits(self, actions: tf.Tensor, tanh_constant: Optional[float]) -> tf.Tensor:
    """Teacher-forced logits [B, T, K] of the choices `actions` [B, T] (int32)."""
    batch = tf.shape(actions)[0]
    steps = self.embedding.shape[0]
    step_index = tf.broadcast_to(tf.range(steps - 1)[tf.newaxis], [batch, steps - 1])
    previous = tf.gather_nd(self.embedding, tf.stack([step_index, actions[:, :-1]], axis=-1))
    start = tf.broadcast_to(self.start, [batch, 1, self.start.shape[0]])
    hidden = self.lstm(tf.concat([start, previous], axis=1))
    logits = tf.einsum('bth,thk->btk', hidden, self.out_kernel) + self.out_bias
    return tanh_constant * tf.tanh(logits) if tanh_constant else logits


def _masked_log_softmax(logits, mask):
  """log_softmax over the valid candidates; invalid ones get a large negative log-prob."""
  return tf.nn.log_softmax(tf.where(mask, logits, tf.fill(tf.shape(logits), -1e9)))


@pg.members(
  [
    ('seed', pg.typing.Int().noneable(), 'Seed of the sampling Generator and the initial weights.'),
    ('batch_size', pg.typing.Int(min_value=1, default=8), 'Feedbacks per PPO update.'),
    ('hidden_size', pg.typing.Int(min_value=1, default=64), 'LSTM units.'),
    ('embedding_size', pg.typing.Int(min_value=1, default=32), 'Choice embedding width.'),
    ('learning_rate', pg.typing.Float(min_value=0.0, default=0.01), 'Adam learning rate.'),
    ('update_epochs', pg.typing.Int(min_value=1, default=4), 'Adam steps per PPO update.'),
    ('clip_ratio', pg.typing.Float(min_value=0.0, default=0.2), 'PPO clip epsilon.'),
    ('baseline_decay', pg.typing.Float(min_value=0.0, max_value=1.0, default=0.95), 'EMA decay.'),
    ('entropy_coefficient', pg.typing.Float(min_value=0.0, default=1e-3), 'Entropy bonus.'),
    ('tanh_constant', pg.typing.Float(min_value=0.0).noneable(), 'Logits c*tanh(l) if set.'),
    ('init_scale', pg.typing.Float(min_value=0.0, default=0.1), 'Weights ~ U(-s, s) at start.'),
  ]
)
class PPOController(pg.DNAGenerator):
  """LSTM controller trained with PPO; proposals are always valid points of a flat space.

  Call `setup(dna_spec)` first. `feedback` accepts any valid DNA of the space, also one it
  did not propose (a replayed or user-given architecture): its old log-prob is computed then.
  """

  def _setup(self) -> None:
    self._layout = decisions.decision_layout(self.dna_spec)
    self._rng = np.random.default_rng(self.seed)
    self._network = _PolicyNetwork(self._layout, self.hidden_size, self.embedding_size)
    for variable in self._network.weights:
      shape = variable.shape.as_list()
      variable.assign(self._rng.uniform(-self.init_scale, self.init_scale, shape))
    self._optimizer = tf_keras.optimizers.Adam(self.learning_rate)
    self._optimizer.build(self._network.weights)
    self._update_fn = tf.function(self._update_step, reduce_retracing=True)
    self._baseline: Optional[float] = None
    self._num_updates = 0
    self._inflight: List[Tuple[List[int], float]] = []  # proposed, awaiting feedback
    self._batch: List[Tuple[List[int], float, float]] = []  # (numbers, old log-prob, reward)
    self._history: List[List[Any]] = []  # [numbers, reward or None] per proposal, in order
    self._unrewarded: Dict[Tuple[int, ...], List[int]] = {}  # numbers -> history indices
    self._mirror_weights()

  @property
  def baseline(self) -> Optional[float]:
    return self._baseline

  @property
  def num_updates(self) -> int:
    return self._num_updates

  @property
  def history(self) -> List[List[Any]]:
    """[numbers, reward or None] of every proposal (and recovered trial), in order; a copy."""
    return [[list(n), r] for n, r in self._history]

  # --- sampling (numpy) ---

  def _mirror_weights(self) -> None:
    """Copies the weights to numpy, with each step's input projection precomputed.

    LSTM step t's input is the embedding of choice a at step t-1, so its contribution to the
    gates, embedding[t-1, a] @ kernel + bias, is a table [T, K, 4H] (row 0: the start vector).
    """
    start, embedding, kernel, recurrent, bias, out_kernel, out_bias = (
      v.numpy().astype(np.float64) for v in self._network.weights
    )
    inputs = np.empty(embedding.shape[:2] + bias.shape)
    inputs[0] = start @ kernel + bias  # the same for every "previous choice" at t = 0
    inputs[1:] = embedding[:-1] @ kernel + bias
    self._np = (inputs, recurrent, out_kernel, out_bias)

  def _walk(self, forced: Optional[Sequence[int]] = None, probabilities: bool = False):
    """Samples (or scores `forced`) one DNA; returns (numbers, log-prob[, probs [T, K]])."""
    inputs, recurrent, out_kernel, out_bias = self._np
    units = recurrent.shape[0]
    tanh_constant = self.tanh_constant  # symbolic attributes are slow to read in a loop
    hidden = np.zeros(units)
    cell = np.zeros(units)
    choice = 0
    numbers, log_prob, all_probs = [], 0.0, []
    for t in range(self._layout.num_decisions):
      z = inputs[t, choice] + hidden @ recurrent  # gates i, f, c, o as in Keras' LSTMCell
      gates = 0.5 + 0.5 * np.tanh(0.5 * z)  # sigmoid
      cell = gates[units : 2 * units] * cell + gates[:units] * np.tanh(z[2 * units : 3 * units])
      hidden = gates[3 * units :] * np.tanh(cell)
      logits = hidden @ out_kernel[t] + out_bias[t]
      if tanh_constant:
        logits = tanh_constant * np.tanh(logits)
      mask = decisions.valid_candidates(self._layout, numbers, t)
      probs = np.where(mask, np.exp(logits - logits[mask].max()), 0.0)
      probs /= probs.sum()
      if forced is None:
        choice = self._sample(probs, mask)
      else:
        choice = int(forced[t])
        if not mask[choice]:
          raise ValueError(f'Choice {choice} at decision point {t} is not valid: {forced}.')
      log_prob += math.log(max(probs[choice], 1e-300))
      numbers.append(choice)
      all_probs.append(probs)
    if probabilities:
      return numbers, log_prob, np.stack(all_probs)
    return numbers, log_prob

  def _sample(self, probs: np.ndarray, mask: np.ndarray) -> int:
    """Inverse-CDF draw from `probs`, never a masked candidate (zero-width bins skipped)."""
    cumulative = np.cumsum(probs)
    choice = int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1], 'right'))
    choice = min(choice, int(np.flatnonzero(mask)[-1]))
    while not mask[choice]:
      choice -= 1
    return choice

  def log_prob(self, dna: pg.DNA) -> float:
    """log pi(dna) under the current policy (sum over decision points)."""
    return self._walk(self._numbers(dna))[1]

  def probabilities(self, dna: pg.DNA) -> np.ndarray:
    """[T, K] softmax of every decision point along `dna` (0 where masked out)."""
    return self._walk(self._numbers(dna), probabilities=True)[2]

  def _append_history(self, numbers: List[int], reward: Optional[float] = None) -> None:
    if reward is None:
      self._unrewarded.setdefault(tuple(numbers), []).append(len(self._history))
    self._history.append([numbers, reward])

  def _numbers(self, dna: pg.DNA) -> List[int]:
    """The DNA's numbers, checked against the space (ValueError if it is not a point of it)."""
    return decisions.check_numbers(self._layout, dna.to_numbers())

  def propose_numbers(self) -> List[int]:
    """`propose()` without building the PyGlove DNA: the sampled `dna.to_numbers()`.

    PyGlove needs ~1 ms per decision point to build a DNA object; callers that carry numbers
    anyway (the Ray searcher's configs, long benchmark loops) can skip it.
    """
    numbers, log_prob = self._walk()
    self._inflight.append((numbers, log_prob))
    self._append_history(numbers)
    self._num_proposals += 1
    return numbers

  def _propose(self) -> pg.DNA:
    numbers = self.propose_numbers()
    self._num_proposals -= 1  # `propose` counts it
    return decisions.dna_from_numbers(numbers, self.dna_spec)

  # --- feedback and the PPO update (TensorFlow) ---

  def feedback_numbers(self, numbers: Sequence[int], reward: float) -> None:
    """`feedback(pg.DNA.from_numbers(numbers, spec), reward)` without building the DNA."""
    self._feedback_checked(decisions.check_numbers(self._layout, numbers), reward)
    self._num_feedbacks += 1

  def _feedback(self, dna: pg.DNA, reward: float) -> None:
    self._feedback_checked(self._numbers(dna), reward)

  def _feedback_checked(self, numbers: List[int], reward: float) -> None:
    reward = float(reward)
    if not math.isfinite(reward):
      raise ValueError(f'Reward must be finite, got {reward} (feed failures as a number).')
    log_prob = None
    for i, (proposed, old) in enumerate(self._inflight):
      if proposed == numbers:
        log_prob = old
        del self._inflight[i]
        break
    if log_prob is None:  # not proposed by us (or proposed before a restore): score it now
      log_prob = self._walk(numbers)[1]
    waiting = self._unrewarded.get(tuple(numbers))
    if waiting:
      self._history[waiting.pop(0)][1] = reward
    self._batch.append((numbers, log_prob, reward))
    if len(self._batch) >= self.batch_size:
      self._update()

  def _update(self) -> None:
    """One PPO update on the pending batch; then the EMA baseline takes the batch's rewards."""
    numbers = np.array([b[0] for b in self._batch], np.int32)
    old_log_probs = np.array([b[1] for b in self._batch], np.float32)
    rewards = np.array([b[2] for b in self._batch], np.float64)
    if self._baseline is None:
      self._baseline = float(rewards.mean())
    advantages = (rewards - self._baseline).astype(np.float32)
    for reward in rewards:
      self._baseline = self.baseline_decay * self._baseline + (1 - self.baseline_decay) * reward
    masks = np.stack([decisions.valid_masks(self._layout, n) for n in numbers])
    self._update_fn(
      tf.constant(numbers), tf.constant(masks), tf.constant(old_log_probs), tf.constant(advantages)
    )
    self._mirror_weights()
    self._batch = []
    self._num_updates += 1

  def _update_step(self, actions, masks, old_log_probs, advantages):
    """`update_epochs` Adam steps on the clipped surrogate; returns the last loss."""
    weights = self._network.weights
    loss = tf.constant(0.0)
    for _ in tf.range(self.update_epochs):  # a graph loop: traces once, not per epoch
      with tf.GradientTape() as tape:
        log_softmax = _masked_log_softmax(self._network.logits(actions, self.tanh_constant), masks)
        chosen = tf.gather(log_softmax, actions, batch_dims=2)  # [B, T]
        log_probs = tf.reduce_sum(chosen, axis=1)
        probs = tf.exp(log_softmax) * tf.cast(masks, tf.float32)
        entropy = -tf.reduce_sum(probs * log_softmax, axis=[1, 2])
        ratio = tf.exp(log_probs - old_log_probs)
        clipped = tf.clip_by_value(ratio, 1 - self.clip_ratio, 1 + self.clip_ratio)
        surrogate = tf.minimum(ratio * advantages, clipped * advantages)
        loss = -tf.reduce_mean(surrogate) - self.entropy_coefficient * tf.reduce_mean(entropy)
      self._optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))
    return loss

  # --- recovery and state ---

  def _replay(self, trial_id: int, dna: pg.DNA, reward: Optional[float]) -> None:
    """`recover` without a saved state: in-flight DNAs are scored now, rewarded ones fed back."""
    del trial_id
    numbers = self._numbers(dna)
    self._inflight.append((numbers, self._walk(numbers)[1]))
    self._append_history(numbers)
    if reward is not None:
      self._feedback_checked(numbers, reward)

  def reseed(self, salt: int) -> None:
    """Moves the sampling Generator to a fresh stream derived from (seed, salt).

    Used after a restore whose history runs past the saved state: the saved RNG state would
    otherwise re-draw the samples the lost process already proposed.
    """
    self._rng = np.random.default_rng(None if self.seed is None else [self.seed, salt])

  def _state_json(self) -> Dict[str, Any]:
    return {
      'format': _FORMAT_VERSION,
      'space': self._layout.fingerprint(),
      'options': {k: v for k, v in self.sym_init_args.items()},
      'baseline': self._baseline,
      'rng': self._rng.bit_generator.state,
      'num_proposals': self.num_proposals,
      'num_feedbacks': self.num_feedbacks,
      'num_updates': self._num_updates,
      'inflight': [[n, lp] for n, lp in self._inflight],
      'batch': [list(b) for b in self._batch],
      'history': self._history,
    }

  def save(self, directory: str) -> str:
    """Writes `directory`/ppo_controller.npz atomically; returns its path."""
    arrays = {f'weight_{i}': v.numpy() for i, v in enumerate(self._network.weights)}
    arrays.update({f'adam_{i}': v.numpy() for i, v in enumerate(self._optimizer.variables)})
    state = json.dumps(files.json_safe(self._state_json())).encode('utf-8')
    arrays['state'] = np.frombuffer(state, np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    path = os.path.join(directory, STATE_FILE)
    files.atomic_write(path, buffer.getvalue())
    return path

  def load(self, directory: str) -> None:
    """Restores what `save` wrote (after `setup` on the same space); ValueError if it differs."""
    path = os.path.join(directory, STATE_FILE)
    if not tf.io.gfile.exists(path):
      raise ValueError(f'No controller state {path!r}.')
    with tf.io.gfile.GFile(path, 'rb') as f:
      data = np.load(io.BytesIO(f.read()), allow_pickle=False)
      arrays = {k: data[k] for k in data.files}
    state = json.loads(arrays['state'].tobytes().decode('utf-8'))
    if state.get('format') != _FORMAT_VERSION or state['space'] != self._layout.fingerprint():
      raise ValueError(f'Controller state {path!r} was written for another search space.')
    for i, variable in enumerate(self._network.weights):
      variable.assign(arrays[f'weight_{i}'])
    for i, variable in enumerate(self._optimizer.variables):
      variable.assign(arrays[f'adam_{i}'])
    self._mirror_weights()
    self._rng.bit_generator.state = state['rng']
    self._baseline = state['baseline']
    self._num_proposals = state['num_proposals']
    self._num_feedbacks = state['num_feedbacks']
    self._num_updates = state['num_updates']
    self._inflight = [(list(n), float(lp)) for n, lp in state['inflight']]
    self._batch = [(list(n), float(lp), float(r)) for n, lp, r in state['batch']]
    self._history, self._unrewarded = [], {}
    for numbers, reward in state['history']:
      self._append_history(list(numbers), reward)

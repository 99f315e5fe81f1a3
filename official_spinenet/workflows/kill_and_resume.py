"""SIGKILL a training run at random moments, resume it each time, and check what survived.

What `tools/kill_and_resume.py` runs (issue 14, item 3): `spinenet-train` on a
tiny RetinaNet and shapes data, killed N times with SIGKILL at a random moment
after it started training (during steps, saves, summary writes), then run again
in the same model dir. After every kill it checks that

  * each checkpoint on disk is complete and restorable (every tensor reads),
  * the next run resumes from the newest checkpoint the state file names,
  * no more progress was lost than the checkpoint interval,

and after a last run that is not killed, that the run reached its final step
and that no temporary file of a save is left in the model dir.
"""

import os
import random
import re
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import tensorflow as tf

from official_spinenet.data import shapes
from official_spinenet.training import train_state
from official_spinenet.workflows import demo

TINY = 'testing/retinanet_tiny.gin'
_STEP = re.compile(r'step (\d+)/\d+ \|')
_RESUMED = re.compile(r'Resumed from (\S+) at step (\d+)\.')


def _command(model_dir: str, data: Dict[str, Any], train_steps: int, interval: int) -> List[str]:
  params = demo.shapes_data_params({'train': data['train']}) + [
    f'TRAIN_STEPS = {train_steps}',
    'TrainerConfig.steps_per_loop = 1',
    f'TrainerConfig.checkpoint_interval = {interval}',
    'TrainerConfig.max_checkpoints = 3',
  ]
  flags = [f'--gin_file={TINY}', f'--model_dir={model_dir}', '--mode=train']
  return [sys.executable, '-m', 'official_spinenet.binaries.train', *flags] + [
    f'--gin_param={p}' for p in params
  ]


def _read_log(path: str) -> str:
  with open(path, errors='replace') as f:
    return f.read()


def _run(command: Sequence[str], log_path: str, kill_after: Optional[float]) -> Dict[str, Any]:
  """Runs one training process; SIGKILLs it kill_after seconds after its first step."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  with open(log_path, 'w') as log:
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
  killed_at = None
  while process.poll() is None:
    if kill_after is not None and killed_at is None and _STEP.search(_read_log(log_path)):
      time.sleep(kill_after)
      process.send_signal(signal.SIGKILL)
      killed_at = kill_after
    time.sleep(0.1)
  text = _read_log(log_path)
  steps = [int(s) for s in _STEP.findall(text)]
  resumed = _RESUMED.search(text)
  return {
    'returncode': process.returncode,
    'killed': killed_at is not None,
    'last_logged_step': steps[-1] if steps else None,
    'resumed_at': int(resumed.group(2)) if resumed else 0,
    'log': text,
  }


def _checkpoint_state(model_dir: str) -> Dict[str, Any]:
  """The state file's newest step, the complete checkpoints, unreadable ones, temp files."""
  latest = tf.train.latest_checkpoint(model_dir)
  unreadable = []
  indexes = tf.io.gfile.glob(os.path.join(model_dir, 'ckpt-*.index'))
  for index in indexes:
    prefix = index[: -len('.index')]
    try:
      reader = tf.train.load_checkpoint(prefix)
      for name in reader.get_variable_to_shape_map():
        reader.get_tensor(name)
    except (tf.errors.OpError, ValueError) as e:
      unreadable.append(f'{os.path.basename(prefix)}: {str(e).splitlines()[0]}')
  names = os.listdir(model_dir) if os.path.isdir(model_dir) else []
  return {
    'newest': int(latest.rsplit('-', 1)[1]) if latest else 0,
    'newest_on_disk': max((int(p.rsplit('-', 1)[1].split('.')[0]) for p in indexes), default=0),
    'unreadable': unreadable,
    'temp_files': sorted(n for n in names if train_state.is_temp_file(n) or '.tmp' in n),
  }


def kill_and_resume(
  output_dir: str, num_kills: int, max_delay: float, interval: int, seed: int = 0
) -> Dict[str, Any]:
  """Kills and resumes a tiny training run num_kills times, then lets it finish.

  Args:
    output_dir: fresh folder for the data, the model dir and the logs.
    num_kills: SIGKILLs.
    max_delay: each kill comes uniformly 0..max_delay seconds after the run's
      first progress line (the run logs every step).
    interval: TrainerConfig.checkpoint_interval (steps).
    seed: of the kill moments.

  Returns:
    {'rows': one dict per run, 'final': the last run, 'final_step', 'interval'}.
  """
  rng = random.Random(seed)
  data = shapes.make_shapes_dataset(
    os.path.join(output_dir, 'data'), num_train=8, num_val=1, image_size=128, show_progress=False
  )
  model_dir = os.path.join(output_dir, 'model')
  rows, before = [], _checkpoint_state(model_dir)
  for i in range(num_kills):
    delay = rng.uniform(0, max_delay)
    command = _command(model_dir, data, 10**6, interval)
    run = _run(command, os.path.join(output_dir, f'run_{i:02d}.log'), delay)
    after = _checkpoint_state(model_dir)
    rows.append({'run': i, 'delay': delay, 'expected_resume': before['newest'], **run, **after})
    before = after
  final_step = before['newest'] + 2 * interval
  command = _command(model_dir, data, final_step, interval)
  final = _run(command, os.path.join(output_dir, 'final.log'), None)
  final.update(_checkpoint_state(model_dir), expected_resume=before['newest'])
  return {'rows': rows, 'final': final, 'final_step': final_step, 'interval': interval}


def summary_rows(result: Dict[str, Any]) -> List[List[Any]]:
  """Table rows: run, kill delay, step logged at the kill, resumed at, newest after, lost."""
  rows = []
  for row in result['rows'] + [dict(result['final'], run='final', delay=float('nan'))]:
    logged = row['last_logged_step'] or row['resumed_at']
    rows.append(
      [
        row['run'],
        row['delay'],
        row['resumed_at'],
        'yes' if row['resumed_at'] == row['expected_resume'] else 'NO',
        logged,
        row['newest'],
        logged - row['newest'] if row['killed'] else 0,
        len(row['unreadable']),
        len(row['temp_files']),
      ]
    )
  return rows


def verdict(result: Dict[str, Any]) -> List[str]:
  """The failed checks (empty: everything held)."""
  failures, interval = [], result['interval']
  runs = result['rows'] + [result['final']]
  for i, row in enumerate(runs):
    if row['resumed_at'] != row['expected_resume']:
      failures.append(
        f'run {i} resumed at {row["resumed_at"]}, newest was {row["expected_resume"]}'
      )
    if row['unreadable']:
      failures.append(f'run {i}: unreadable checkpoints {row["unreadable"]}')
    logged = row['last_logged_step'] or 0
    if row['killed'] and logged - row['newest'] > interval:
      failures.append(f'run {i} lost {logged - row["newest"]} steps (interval {interval})')
  final = result['final']
  if final['returncode'] != 0 or final['newest'] != result['final_step']:
    failures.append(f'the last run ended {final["returncode"]} at step {final["newest"]}')
  if final['temp_files']:
    failures.append(f'temp files left: {final["temp_files"]}')
  return failures

"""Many hosts compute what one does; killed and preempted runs resume exactly; bad input fails clearly.

Hosts are real JAX processes on this machine (gloo collectives), launched through the real CLI under
`JAX_TRANSFER_GUARD=disallow`, so initialisation, batch placement, training, saving, restoring and
evaluation make no implicit host<->device transfer.
Every run uses a constant learning rate, so a run extended by more steps continues the same
trajectory, and a small one (0.005), so last-bit differences between topologies do not blow up over
the steps; and 4 devices in all. The global batches are identical however many processes read them
(tests/test_properties.py).
"""
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from conftest import PATIENT_COLLECTIVES, config_path, digits_config, launch_processes
from zfnet_jax import parallel
from zfnet_jax.data import augment, pipeline
from zfnet_jax.training import checkpointing, evaluation, loop, steps

K = 6  # steps per leg; runs go to K and 2K


def launch(workdir, tfds_dir, num_steps, processes=1, devices=4, wait=True):
  """Starts `python -m zfnet_jax.train` as `processes` processes with `devices / processes` CPU devices each.

  The launches share the session's persistent XLA cache (conftest): each program compiles once, not once per launch.
  """
  env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices // processes} '
                                    + PATIENT_COLLECTIVES,
         'TF_CPP_MIN_LOG_LEVEL': '2',
         'JAX_TRANSFER_GUARD': 'disallow',  # as big_vision trains: any implicit host<->device copy is an error
         'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}
  args = [sys.executable, '-m', 'zfnet_jax.train', '--config', config_path('digits'), '--workdir', str(workdir),
          f'--config.dataset.data_dir={tfds_dir}', f'--config.num_train_steps={num_steps}',
          '--config.batch_size=16', '--config.optim.schedule=constant',
          '--config.optim.learning_rate=0.005',
          '--config.optim.warmup_epochs=0', '--config.checkpoint_every_steps=2', '--config.keep_checkpoints=20',
          '--config.log_every_steps=1', '--config.eval_every_epochs=100']
  procs = launch_processes(args, processes, env)
  if not wait:
    return procs
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return outs[0]


def params_at(tfds_dir, workdir, step):
  config = digits_config(tfds_dir, batch_size=16)
  return jax.tree_util.tree_map(np.asarray, checkpointing.load_params(config, str(workdir), step)[1])


def assert_trees(a, b):
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def assert_same_training(a, b, update):
  """`a` and `b` differ by float noise only: under 5% of what K training steps move each parameter.

  Different hosts sum gradients in a different order, and XLA's multi-threaded CPU convolutions split
  their work by the threads each process has; those last-bit differences grow over the steps, so a
  fixed small tolerance would be arbitrary. A wrong batch or step moves parameters by a whole update.
  """
  def check(x, y, u):
    assert np.max(np.abs(x - y)) <= 0.05 * np.max(np.abs(u)), (np.max(np.abs(x - y)), np.max(np.abs(u)))
  jax.tree_util.tree_map(check, a, b, update)


@pytest.fixture(scope='module')
def reference(tfds_dir, tmp_path_factory):
  """One process, 4 devices, 2K steps uninterrupted, a checkpoint every 2 steps."""
  workdir = tmp_path_factory.mktemp('reference')
  launch(workdir, tfds_dir, 2 * K)
  return workdir


def wait_for_checkpoint(procs, workdir, step):
  """Waits until `workdir` holds a checkpoint at `step` or later (the run is then in its training loop)."""
  ckpts = workdir / 'checkpoints'
  deadline = time.time() + 240
  while not (ckpts.exists() and any(d.isdigit() and int(d) >= step for d in os.listdir(ckpts))):
    assert all(p.poll() is None for p in procs) and time.time() < deadline, procs[0].stdout.read()[-3000:]
    time.sleep(0.05)


def test_killed_run_resumes_to_the_uninterrupted_result(tfds_dir, reference, tmp_path):
  """SIGKILL at any moment. (SIGTERM: one process in test_sigterm_at_the_last_step..., in-process, bit-exact after
  its resume; the CLI's exit status and many processes in test_two_hosts_equal_one_through_a_preemption....)"""
  [proc] = launch(tmp_path, tfds_dir, 2 * K, wait=False)
  wait_for_checkpoint([proc], tmp_path, 2)
  proc.send_signal(signal.SIGKILL)
  out = proc.communicate(timeout=120)[0]
  stopped_at = checkpointing.manager(str(tmp_path)).latest_step()
  assert stopped_at is not None and stopped_at < 2 * K, out[-2000:]
  out = launch(tmp_path, tfds_dir, 2 * K)
  assert f'Resuming from the checkpoint at step {stopped_at}' in out
  # same data, same random numbers, same program: bit-exact
  assert_trees(params_at(tfds_dir, tmp_path, 2 * K), params_at(tfds_dir, reference, 2 * K))


def test_two_hosts_equal_one_through_a_preemption_and_checkpoints_move_between_them(tfds_dir, reference, tmp_path):
  ref_k, ref_2k = params_at(tfds_dir, reference, K), params_at(tfds_dir, reference, 2 * K)
  update = jax.tree_util.tree_map(lambda a, b: a - b, ref_2k, ref_k)  # what K steps move each parameter
  # 2 processes x 2 devices, uninterrupted, == 1 process x 4 devices up to the topology's float noise (which
  # compounds over steps, so it is compared at K)
  plain = tmp_path / 'plain'
  launch(plain, tfds_dir, 2 * K, processes=2)
  assert_same_training(params_at(tfds_dir, plain, K), ref_k, update)
  # SIGTERM to process 1 only: both save the same step and exit "unfinished" ...
  multi = tmp_path / 'multi'
  procs = launch(multi, tfds_dir, 2 * K, processes=2, wait=False)
  wait_for_checkpoint(procs, multi, 2)
  procs[1].send_signal(signal.SIGTERM)  # process 0 gets no signal: JAX's preemption sync point tells it
  outs = [p.communicate(timeout=120)[0] for p in procs]
  assert [p.returncode for p in procs] == [loop.PREEMPTED_EXIT_STATUS] * 2, outs[1][-3000:]
  stopped = [int(re.search(r'preempted: saved a checkpoint at step (\d+)/', out).group(1)) for out in outs]
  assert stopped[0] == stopped[1] == checkpointing.manager(str(multi)).latest_step() < 2 * K, outs[0][-2000:]
  # ... and the same command again ends bit-exact with the uninterrupted two-process run (same topology)
  out = launch(multi, tfds_dir, 2 * K, processes=2)
  assert f'Resuming from the checkpoint at step {stopped[0]}' in out
  assert_trees(params_at(tfds_dir, multi, 2 * K), params_at(tfds_dir, plain, 2 * K))
  # checkpoints move between topologies: a two-process checkpoint resumes in one process, and a one-process
  # checkpoint in two, each two steps on, where the reference run went (up to the topology's float noise)
  from_multi = tmp_path / 'from_multi'
  shutil.copytree(multi / 'checkpoints' / str(K), from_multi / 'checkpoints' / str(K))
  out = launch(from_multi, tfds_dir, K + 2)
  assert f'Resuming from the checkpoint at step {K}' in out
  ref_next = params_at(tfds_dir, reference, K + 2)
  assert_same_training(params_at(tfds_dir, from_multi, K + 2), ref_next, update)
  single = tmp_path / 'single'
  shutil.copytree(reference / 'checkpoints' / str(K), single / 'checkpoints' / str(K))
  launch(single, tfds_dir, K + 2, processes=2)
  assert_same_training(params_at(tfds_dir, single, K + 2), ref_next, update)


def test_nonfinite_gradients_with_a_finite_loss_are_caught_at_their_step_and_never_saved(tfds_dir, tmp_path,
                                                                                        monkeypatch):
  config = digits_config(tfds_dir, batch_size=16, num_train_steps=4, checkpoint_every_steps=2,
                         log_every_steps=100, eval_every_epochs=100)
  batches, _ = pipeline.train_batches(config)
  labels = [next(batches)['label'] for _ in range(4)]
  bad = 4  # a save step, read at no log step before it: a check of the mean loss would save NaN parameters
  assert not any(np.array_equal(labels[bad - 1], other) for other in labels[:bad - 1])

  @jax.custom_vjp
  def nan_gradient(logits, poison):  # the identity, whose gradient is NaN where `poison` is 1 (a bf16 overflow)
    return logits
  nan_gradient.defvjp(lambda x, p: (x, p), lambda p, g: (jnp.where(p > 0, jnp.nan, g), jnp.zeros_like(p)))
  cross_entropy = steps.cross_entropy
  monkeypatch.setattr(steps, 'cross_entropy', lambda logits, y: cross_entropy(
      nan_gradient(logits, jnp.all(y == labels[bad - 1]).astype(jnp.float32)), y))
  with pytest.raises(FloatingPointError, match=rf'non-finite loss, gradients or parameters at step {bad} ') as e:
    loop.train_and_evaluate(config, str(tmp_path))
  assert 'last good checkpoint (step 2)' in str(e.value)
  assert checkpointing.manager(str(tmp_path)).all_steps() == [2]
  assert all(np.all(np.isfinite(p)) for p in jax.tree_util.tree_leaves(params_at(tfds_dir, tmp_path, 2)))


def test_sigterm_at_the_last_step_never_returns_a_stale_eval_and_resume_draws_one_curve(tfds_dir, tmp_path,
                                                                                        monkeypatch):
  config = digits_config(tfds_dir, batch_size=16, num_train_steps=6, checkpoint_every_steps=4, log_every_steps=1,
                         eval_every_epochs=3 / 89, profile_steps=(5, 6))  # 89 steps per epoch: evals at 3 and 6
  # One seam, `loop.set_up`: the run it returns gets a real SIGTERM to this process with the last batch, and
  # counts when steps are dispatched and when each step's train metrics are written.
  set_up, dispatched, written_at = loop.set_up, [], {}

  def instrumented(config, workdir):
    run = set_up(config, workdir)
    batches, train_fn, write = run.batches, run.train_fn, run.writer.write

    def sigterm_with_the_last_batch():
      for step, batch in enumerate(batches, run.step + 1):
        if step == run.num_steps:
          os.kill(os.getpid(), signal.SIGTERM)
        yield batch
    run.batches = sigterm_with_the_last_batch()
    run.train_fn = lambda *a: dispatched.append(1) or train_fn(*a)
    run.writer.write = lambda step, split, m: (split == 'train' and written_at.setdefault(step, len(dispatched)),
                                               write(step, split, m))
    return run
  monkeypatch.setattr(loop, 'set_up', instrumented)
  with pytest.raises(loop.Preempted, match='step 6/6'):  # not the eval of step 3 as the final result
    loop.train_and_evaluate(config, str(tmp_path))
  monkeypatch.undo()
  # each step's metrics are read after the next step is dispatched, except at save and eval steps
  assert written_at == {1: 2, 2: 3, 3: 3, 4: 4, 5: 6, 6: 6}  # 3: eval, 4: save, 6: save (preempted)
  preempted_at_6 = params_at(tfds_dir, tmp_path, 6)
  # a crash before the save at step 6 committed: steps 5 and 6 are redone from step 4
  shutil.rmtree(tmp_path / 'checkpoints' / '6')
  results = loop.train_and_evaluate(config, str(tmp_path))
  assert_trees(params_at(tfds_dir, tmp_path, 6), preempted_at_6)  # bit-exact with the uninterrupted steps 1-6
  final = evaluation.evaluate_checkpoint(config, str(tmp_path))
  assert final['checkpoint_step'] == 6 and results['loss'] == pytest.approx(final['loss'], rel=1e-6)
  # TensorBoard: one point per step, the redone ones replacing the orphans
  for split, expected in (('train', [1, 2, 3, 4, 5, 6]), ('eval', [3, 6])):
    events = [tf.compat.v1.Event.FromString(r) for f in sorted(glob.glob(str(tmp_path / 'tensorboard' / split / '*')))
              for r in tf.data.TFRecordDataset(f).as_numpy_iterator()]
    assert [e.step for e in events if any(v.tag == 'loss' for v in e.summary.value)] == expected
  # each run traced steps 5..6: the traces hold the train step's events
  traces = glob.glob(str(tmp_path / 'profile' / 'plugins' / 'profile' / '*' / '*.xplane.pb'))
  assert len(traces) == 2
  for trace in traces:
    space = xplane_pb2.XSpace.FromString(open(trace, 'rb').read())
    names = {m.name for plane in space.planes for m in plane.event_metadata.values()}
    n_events = sum(len(line.events) for plane in space.planes for line in plane.lines)
    assert n_events > 0 and any('train_step' in n for n in names), sorted(names)[:50]


def test_skip_nonfinite_leaves_the_state_unchanged(tfds_dir):
  from test_train import make_steps
  config = digits_config(tfds_dir, batch_size=16, skip_nonfinite_steps=True)
  crops = augment.train_inputs_fn(config, None)
  with_nan = lambda images, step: crops(images, step).at[0, 0, 0, 0].set(np.nan)  # noqa: E731
  _, mesh, (init, skip_step, _) = make_steps(config, inputs=with_nan)
  batch = next(pipeline.train_batches(config)[0])
  state = init(jax.random.key(0))
  before = jax.tree_util.tree_map(np.asarray, state.params)
  state, metrics = skip_step(state, parallel.global_batch(mesh, batch))
  assert float(metrics['skipped']) == 1.0 and float(metrics['loss']) == 0.0 and int(state.step) == 1
  assert_trees(jax.tree_util.tree_map(np.asarray, state.params), before)


def test_bad_inputs_fail_clearly(tfds_dir, tmp_path):
  with pytest.raises(ValueError, match='batch_size=12 must be a positive multiple of the 8 devices'):
    loop.train_and_evaluate(digits_config(tfds_dir, batch_size=12), str(tmp_path / 'a'))
  with pytest.raises(ValueError, match='crops are larger than the 72px squares'):
    loop.train_and_evaluate(digits_config(tfds_dir, model__image_size=80), str(tmp_path / 'b'))
  locked = tmp_path / 'locked'
  locked.mkdir()
  locked.chmod(0o500)
  if os.access(locked, os.W_OK):  # root ignores permissions: use a path under a file instead
    locked = tmp_path / 'a_file'
    locked.write_text('')
    locked = locked / 'workdir'
  with pytest.raises(PermissionError, match='cannot write to --workdir'):
    loop.train_and_evaluate(digits_config(tfds_dir), str(locked))


def test_disk_filling_up_during_a_save_keeps_the_previous_checkpoint(tfds_dir, tmp_path):
  disk = tmp_path / 'small_disk'
  disk.mkdir()
  # one digits checkpoint (parameters + momentum) is ~2.7 MB: the second does not fit in 4 MB
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', str(disk)], capture_output=True).returncode:
    pytest.skip('mounting a small tmpfs needs root')
  try:
    config = digits_config(tfds_dir, num_train_steps=6, checkpoint_every_steps=2, keep_checkpoints=5,
                           log_every_steps=2, eval_every_epochs=100)
    with pytest.raises(OSError, match=r'filled up while saving a checkpoint; the last complete one \(step 2\)'):
      loop.train_and_evaluate(config, str(disk / 'run'))
    _, params, step = checkpointing.load_params(config, str(disk / 'run'))
    assert step == 2 and all(np.all(np.isfinite(p)) for p in jax.tree_util.tree_leaves(params))
  finally:  # lazily: TensorStore may still hold files there open; the mount goes when they close
    subprocess.run(['umount', '--lazy', str(disk)])

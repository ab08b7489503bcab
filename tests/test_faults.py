"""Fault injection: each fault a hostile tester found (issue 16), injected, and what must hold after it: the
exit status or exception, the message, and that nothing already written was lost (checkpoints, metrics and
prepared data byte-identical where they should be, a resumed run bit-exact). Real processes where the
fault needs one (locks, kills, the command lines' output); in-process runs elsewhere, sharing one tiny run.
"""
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import jax
import matplotlib
import numpy as np
import PIL.Image
import pytest
from safetensors.numpy import save_file

from conftest import REPO, config_path, digits_config, free_port
from zfnet_jax import cli, config_lib, paths
from zfnet_jax.data import inputs, pipeline, squares
from zfnet_jax.interpret import figures
from zfnet_jax.training import checkpointing, loop, metric_writer, weights

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

RUN = dict(batch_size=16, num_train_steps=4, checkpoint_every_steps=1, keep_checkpoints=-1, log_every_steps=1,
           eval_every_epochs=100.0)  # 4 steps, a checkpoint after each, every one kept; one evaluation at the end
ONE_DEVICE = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=1', 'TF_CPP_MIN_LOG_LEVEL': '2'}


def tree(path) -> dict[str, str]:
  """Every file under `path` (relative path -> sha256 of its bytes): 'byte-identical' is equality of these."""
  out = {}
  for folder, _, files in os.walk(path):
    for name in files:
      full = os.path.join(folder, name)
      out[os.path.relpath(full, path)] = hashlib.sha256(open(full, 'rb').read()).hexdigest()
  return out


def subtree(files: dict[str, str], prefix: str) -> dict[str, str]:
  return {k[len(prefix):]: v for k, v in files.items() if k.startswith(prefix)}


@pytest.fixture(scope='module')
def run(tfds_dir, tmp_path_factory):
  """`(config, workdir)`: 4 digits steps with a checkpoint after each (`keep_checkpoints=-1` keeps them all)."""
  config, workdir = digits_config(tfds_dir, **RUN), str(tmp_path_factory.mktemp('faults_run'))
  loop.train_and_evaluate(config, workdir)
  return config, workdir


def copy_of(run, tmp_path) -> str:
  workdir = str(tmp_path / 'run')
  shutil.copytree(run[1], workdir)
  return workdir


def damage(workdir: str, step: int, how: str) -> None:
  """The damage a checkpoint step meets: its data files truncated, `_METADATA` deleted, or an empty folder (an
  interrupted copy)."""
  folder = os.path.join(workdir, 'checkpoints', str(step))
  if how == 'truncated':  # every data file: which arrays a file holds varies from save to save
    for data in glob.glob(os.path.join(folder, 'state', 'ocdbt.process_0', 'd', '*')):
      os.truncate(data, os.path.getsize(data) // 2)
  elif how == 'no_metadata':
    os.remove(os.path.join(folder, 'state', '_METADATA'))
  else:
    shutil.rmtree(folder)
    os.mkdir(folder)


def params_at(config, workdir, step):
  return jax.tree_util.tree_map(np.asarray, checkpointing.load_params(config, workdir, step)[1])


# ---------------------------------------------------------------------------------------- config values

@pytest.mark.parametrize('overrides, message', [
    ({'log_every_steps': 0}, r'config.log_every_steps=0 is out of range: must be in \[1, inf\), '
                             r'e.g. --config.log_every_steps=50'),
    ({'checkpoint_every_steps': 0}, r'config.checkpoint_every_steps=0 is out of range: must be in \[1, inf\)'),
    ({'model.dropout_rate': 1.5}, r'config.model.dropout_rate=1.5 is out of range: must be in \[0, 1\), '
                                  r'e.g. --config.model.dropout_rate=0.5'),
    ({'keep_checkpoints': 0}, r'config.keep_checkpoints=0 is out of range: must be in \[1, inf\) \(or -1: keep '
                              r'every checkpoint\), e.g. --config.keep_checkpoints=3'),
    ({'optim.learning_rate': float('nan')}, r'config.optim.learning_rate=nan is out of range'),
    ({'model.conv_features': (32, 0, 96, 96, 64)}, r'config.model.conv_features=32,0,96,96,64 is out of range: '
                                                   r'each value must be in \[1, inf\)'),
    ({'profile_steps': (0, 3)}, r'config.profile_steps=\(0, 3\) must be \(0, 0\) \(off\) or \(first, last\)'),
])
def test_a_value_out_of_range_fails_when_the_config_is_loaded(overrides, message):
  with pytest.raises(config_lib.ConfigValueError, match=message):
    config_lib.load(config_path('digits'), overrides)


def test_every_numeric_field_has_a_range_and_every_config_file_is_in_range():
  def numeric(node, prefix=''):
    for k, v in node.items():
      if isinstance(v, type(node)):
        yield from numeric(v, f'{prefix}{k}.')
      elif not isinstance(v, bool) and (isinstance(v, (int, float)) or isinstance(v, tuple) and v
                                        and all(isinstance(x, (int, float)) for x in v)):
        yield prefix + k
  layers_and_labels = {'model.pool_layers', 'model.lrn_layers'}  # checked with the architecture they name
  assert set(numeric(config_lib.base())) - layers_and_labels <= set(config_lib.RANGES)
  for path in glob.glob(os.path.join(REPO, 'configs', '*.py')):
    config_lib.check(config_lib.load(path))
  # a config changed after loading is checked again when a run starts, before any work
  config = config_lib.load(config_path('digits'))
  config.log_every_steps = 0
  with pytest.raises(config_lib.ConfigValueError, match='log_every_steps=0'):
    loop.check_config(config)


def test_keep_checkpoints_minus_one_keeps_every_checkpoint(run):
  config, workdir = run
  assert checkpointing.manager(workdir, config.keep_checkpoints).all_steps() == [1, 2, 3, 4]


# ------------------------------------------------------------------------------------------ checkpoints

@pytest.mark.parametrize('how', ['truncated', 'no_metadata', 'empty'])
def test_analysis_tools_fall_back_past_a_damaged_newest_step_and_change_nothing(run, tmp_path, capsys, how):
  config, workdir = run[0], copy_of(run, tmp_path)
  damage(workdir, 4, how)
  before = tree(workdir)
  _, params, step = checkpointing.load_params(config, workdir)  # what evaluate, predict, visualize, export call
  assert step == 3
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, params_at(*run, 3))
  [warning] = [line for line in capsys.readouterr().err.splitlines() if line.startswith('warning:')]
  assert warning.startswith(f'warning: checkpoint step 4 in {workdir}/checkpoints does not restore (')
  assert warning.endswith('skipped, using step 3; the next train on this workdir moves it to '
                          'unrestorable_checkpoints/ (or delete it)')
  assert tree(workdir) == before  # nothing deleted, moved or written
  with pytest.raises(checkpointing.UnrestorableCheckpointError, match=r'checkpoint step 4 in .* does not restore '
                     r'\(.*\): choose another step of \[1, 2, 3, 4\]'):
    checkpointing.load_params(config, workdir, 4)


def test_training_resumes_past_damaged_steps_and_a_torn_log_and_ends_bit_exact(run, tmp_path, capsys):
  config, workdir = run[0], copy_of(run, tmp_path)
  original = tree(run[1])
  damage(workdir, 4, 'truncated')
  damage(workdir, 3, 'no_metadata')
  os.mkdir(os.path.join(workdir, 'checkpoints', '5'))  # an interrupted copy of a later step
  metrics = os.path.join(workdir, 'metrics.jsonl')
  lines = open(metrics).readlines()
  kept_lines = [line for line in lines if json.loads(line)['step'] <= 2]
  with open(metrics, 'a') as f:
    f.write('{"step": 5, "split": "tra')  # killed while appending
  [events] = glob.glob(os.path.join(workdir, 'tensorboard', 'train', '*'))
  os.truncate(events, os.path.getsize(events) - 7)  # killed while appending there too
  damaged = tree(workdir)

  loop.train_and_evaluate(config, workdir)
  err = capsys.readouterr()
  assert 'Resuming from the checkpoint at step 2/4' in err.out
  for step, why in ((5, 'FileNotFoundError: its folder lacks architecture and state/_METADATA'),
                    (4, 'ValueError: OUT_OF_RANGE: Error reading'), (3, 'FileNotFoundError: its folder lacks '
                                                                       'state/_METADATA')):
    assert (f'warning: checkpoint step {step} in {workdir}/checkpoints does not restore ({why}' in err.err), err.err
    assert (f'skipped, resuming from step 2; moved to {workdir}/unrestorable_checkpoints/{step} (look inside, then '
            f'delete it)') in err.err
  assert f'{metrics}: its last line (line {len(lines) + 1}) is cut off (a run killed while writing it); left out' \
      in err.err
  assert 'its last record is cut off' in err.err
  after = tree(workdir)
  for step in (5, 4, 3):  # set aside as they were, nothing deleted
    assert subtree(after, f'unrestorable_checkpoints/{step}/') == subtree(damaged, f'checkpoints/{step}/')
  for step in (1, 2):
    assert subtree(after, f'checkpoints/{step}/') == subtree(original, f'checkpoints/{step}/')
  lines = open(metrics).readlines()
  assert lines[:len(kept_lines)] == kept_lines and [json.loads(line)['step'] for line in lines] == [1, 2, 3, 4, 4]
  jax.tree_util.tree_map(np.testing.assert_array_equal, params_at(config, workdir, 4), params_at(*run, 4))


def test_when_no_step_restores_training_and_analysis_stop_and_change_nothing(run, tmp_path):
  config, workdir = run[0], copy_of(run, tmp_path)
  for step, how in zip((1, 2, 3, 4), ('empty', 'no_metadata', 'truncated', 'empty')):
    damage(workdir, step, how)
  before = tree(workdir)
  message = (r'no checkpoint in .*/checkpoints restores: step 4: .*; step 3: .*; step 2: .*; step 1: .*\. Nothing was '
             r'changed\. To start over, move that folder aside')
  with pytest.raises(checkpointing.UnrestorableCheckpointError, match=message):
    checkpointing.load_params(config, workdir)
  with pytest.raises(checkpointing.UnrestorableCheckpointError, match=message):
    loop.train_and_evaluate(config, workdir)
  assert tree(workdir) == before


# ------------------------------------------------------------------------------------------------ logs

def test_metrics_reader_leaves_out_a_torn_last_line_with_a_warning(tmp_path, capsys):
  path = str(tmp_path / 'metrics.jsonl')
  records = [{'step': 1, 'split': 'train', 'loss': 2.0}, {'step': 1, 'split': 'eval', 'loss': 1.5}]
  open(path, 'w').write(''.join(json.dumps(r) + '\n' for r in records) + '{"step": 2, "spl')
  assert metric_writer.read_records(path) == records
  assert metric_writer.read_curves(str(tmp_path)) == {'train': records[:1], 'eval': records[1:]}  # the report's
  assert f'warning: {path}: its last line (line 3) is cut off' in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- one writer

def train_command(workdir, tfds_dir, **overrides):
  fields = {**RUN, **overrides}
  return [sys.executable, '-m', 'zfnet_jax.train', '--config', config_path('digits'), '--workdir', str(workdir),
          f'--config.dataset.data_dir={tfds_dir}', *[f'--config.{k}={v}' for k, v in fields.items()]]


def test_a_second_writer_meets_the_lock_at_once_and_a_killed_writers_lock_is_taken_over(tfds_dir, tmp_path,
                                                                                         capsys):
  workdir = tmp_path / 'run'
  command = train_command(workdir, tfds_dir, num_train_steps=100000, checkpoint_every_steps=2, keep_checkpoints=3)
  log = tmp_path / 'first.log'
  first = subprocess.Popen(command, cwd=REPO, env=ONE_DEVICE, stdout=log.open('w'), stderr=subprocess.STDOUT)
  deadline = time.time() + 240
  while not os.path.exists(workdir / 'checkpoints' / '2'):  # in its training loop
    assert first.poll() is None and time.time() < deadline, log.read_text()[-3000:]
    time.sleep(0.1)
  second = subprocess.run(command, cwd=REPO, env=ONE_DEVICE, capture_output=True, text=True, timeout=240)
  assert second.returncode == cli.ERROR_EXIT_STATUS and 'Traceback' not in second.stderr
  assert second.stderr.splitlines()[-1].startswith(
      f'error: --workdir {workdir} is in use by another run: python {REPO}/zfnet_jax/train.py --config ')
  assert f'(host {os.uname().nodename}, pid {first.pid}, since ' in second.stderr
  assert first.poll() is None  # the first run goes on, unharmed
  first.kill()
  first.wait()
  assert len(glob.glob(str(workdir / 'tensorboard' / 'train' / '*'))) == 1  # the second wrote nothing
  # the lock a killed run left is taken over at once, by what train runs in
  with loop.one_writer(str(workdir)):
    pass
  err = capsys.readouterr().err
  assert f'warning: took over the lock of {workdir} from python {REPO}/zfnet_jax/train.py' in err
  assert f'pid {first.pid}' in err


ONE_WRITER_ON_TWO_HOSTS = """
import sys
import jax
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from zfnet_jax.training import loop
try:
  with loop.one_writer(sys.argv[3]):
    print('wrote', flush=True)
except loop.WorkdirInUseError as e:
  print(e, flush=True)
"""


def test_on_two_hosts_the_lock_is_process_0s_and_both_processes_stop(tmp_path):
  workdir = str(tmp_path / 'run')
  paths.makedirs(workdir)
  port = free_port()
  with paths.Lock(paths.join(workdir, loop.LOCK_FILE)).acquire():  # held by this process
    procs = [subprocess.Popen([sys.executable, '-c', ONE_WRITER_ON_TWO_HOSTS, f'localhost:{port}', str(i), workdir],
                              cwd=REPO, env={**ONE_DEVICE, 'JAX_TRANSFER_GUARD': 'disallow'}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=240)[0].strip().splitlines()[-1] for p in procs]
  assert outs[0].startswith(f'--workdir {workdir} is in use by another run: python ')
  assert f'pid {os.getpid()}' in outs[0]  # process 0 names the holder
  assert outs[1].startswith(f'--workdir {workdir} is in use by another run: see process 0.')


def test_a_gs_style_lock_names_its_holder_and_a_stale_one_is_taken_over(capsys, monkeypatch):
  monkeypatch.setattr(paths, 'LOCK_SETTLE_S', 0.05)
  workdir = 'ram://faults_lock'
  paths.makedirs(workdir)
  with paths.Lock(paths.join(workdir, loop.LOCK_FILE)).acquire():
    with pytest.raises(loop.WorkdirInUseError, match=rf'--workdir {workdir} is in use by another run: python .* '
                       rf'\(host {os.uname().nodename}, pid {os.getpid()}, since '):
      with loop.one_writer(workdir):
        pass
  stale = {'host': 'preempted-vm', 'pid': 7, 'since': '2025-01-01 00:00:00', 'command': 'python train.py',
           'token': 'x', 'heartbeat': time.time() - paths.LOCK_STALE_S - 1}
  paths.write_text(paths.join(workdir, loop.LOCK_FILE), json.dumps(stale))
  with loop.one_writer(workdir):
    assert json.loads(paths.read_text(paths.join(workdir, loop.LOCK_FILE)))['pid'] == os.getpid()
  assert (f'warning: took over the lock of {workdir} from python train.py (host preempted-vm, pid 7, since '
          f'2025-01-01 00:00:00), which no longer runs') in capsys.readouterr().err
  assert not paths.exists(paths.join(workdir, loop.LOCK_FILE))  # released


# ---------------------------------------------------------------------------------------- prepared data

def image_folder(root, splits=('train', 'test'), per_class=3, seed=0) -> str:
  rng = np.random.default_rng(seed)
  for split in splits:
    for label in ('a', 'b'):
      os.makedirs(os.path.join(root, split, label), exist_ok=True)
      for i in range(per_class):
        PIL.Image.fromarray(rng.integers(0, 255, (8, 8), np.uint8)).save(os.path.join(root, split, label, f'{i}.png'))
  return str(root)


def folder_config(tfds_dir, root, data_dir):
  return digits_config(tfds_dir, dataset__name=f'folder:{root}', dataset__data_dir=str(data_dir), model__num_classes=2)


def test_a_changed_folder_source_is_noticed_and_its_squares_kept(tfds_dir, tmp_path, monkeypatch):
  root = image_folder(tmp_path / 'images')
  config = folder_config(tfds_dir, root, tmp_path / 'data')
  config.batch_size = 2
  b = squares.prepare(config)
  assert len(pipeline.open_split(config, 'train')) == 6
  real, checks = squares.check_source, []
  monkeypatch.setattr(squares, 'check_source', lambda *a: checks.append(real(*a)))
  steps = pipeline.train_steps_per_epoch(config)  # a training run's start (loop.set_up): checked once
  pipeline.train_batches(config)
  assert (steps, len(checks)) == (3, 1)
  prepared = tree(b.data_dir)
  PIL.Image.new('L', (8, 8), 3).save(os.path.join(root, 'train', 'a', 'new.png'))
  message = (r"the source 'folder:.*images' changed since its squares were prepared in .* \(then: 12 files, .* bytes; "
             r"now: 13 files, .* bytes\), so the squares leave the change out. To prepare them again from the source "
             r"as it is, move that folder aside \(or delete it\) and run the same command again")
  with pytest.raises(squares.SourceChangedError, match=message):  # a run in the same process: checked again
    pipeline.train_steps_per_epoch(config)
  monkeypatch.setattr(squares, '_PREPARED', {})  # a new process
  with pytest.raises(squares.SourceChangedError, match=message):
    pipeline.open_split(config, 'train')
  assert tree(b.data_dir) == prepared
  shutil.move(b.data_dir, str(tmp_path / 'old_squares'))  # what the message says to do
  assert len(pipeline.open_split(config, 'train')) == 7


PREPARE = """
import json, sys
from zfnet_jax import config_lib
from zfnet_jax.data import pipeline
config = config_lib.load(sys.argv[1], json.loads(sys.argv[2]))
print('records', len(pipeline.open_split(config, 'train')), flush=True)
"""


def test_two_first_preparations_at_once_wait_for_one_preparer(tfds_dir, tmp_path):
  root = image_folder(tmp_path / 'images', per_class=40)
  overrides = {'dataset.name': f'folder:{root}', 'dataset.data_dir': str(tmp_path / 'data'), 'model.num_classes': 2}
  config = folder_config(tfds_dir, root, tmp_path / 'data')
  lock_path = str(tmp_path / 'data' / 'zfnet_squares' / f'{squares.builder(config).builder_config.name}.lock')
  os.makedirs(os.path.dirname(lock_path))
  logs = [tmp_path / f'{i}.log' for i in range(2)]
  with paths.Lock(lock_path).acquire():  # a first preparation under way here: both must wait for it
    procs = [subprocess.Popen([sys.executable, '-c', PREPARE, config_path('digits'), json.dumps(overrides)], cwd=REPO,
                              env=ONE_DEVICE, stdout=subprocess.PIPE, stderr=log.open('w'), text=True) for log in logs]
    deadline = time.time() + 240
    while not all('Waiting for ' in log.read_text() for log in logs):
      assert all(p.poll() is None for p in procs) and time.time() < deadline, [log.read_text() for log in logs]
      time.sleep(0.05)
  outs = [p.communicate(timeout=240)[0] for p in procs]  # released: they race for it
  errs = [log.read_text() for log in logs]
  assert [p.returncode for p in procs] == [0, 0], errs
  assert [out.strip().splitlines()[-1] for out in outs] == ['records 80', 'records 80']
  for err in errs:
    assert 'Waiting for python ' in err and f'(host {os.uname().nodename}, pid {os.getpid()}, since ' in err
  assert sum('Preparing the 72px squares' in err for err in errs) == 1, errs  # the other read its squares
  folders = [f for f in os.listdir(tmp_path / 'data' / 'zfnet_squares') if not f.endswith('.lock')]
  assert len(folders) == 1 and os.listdir(tmp_path / 'data' / 'zfnet_squares' / folders[0]) == ['1.0.0']


def test_split_names_tfds_rejects_are_refused_before_any_work(tfds_dir, tmp_path):
  root = image_folder(tmp_path / 'images', splits=('train', 'my test'))
  config = folder_config(tfds_dir, root, tmp_path / 'data')
  with pytest.raises(ValueError, match=r"has split folder\(s\) \['my test'\] whose names tfds cannot read back: a "
                     r"split name is letters, digits, _ and - only. Rename the folder \(e.g. to 'my_test'\)"):
    squares.prepare(config)
  assert not os.path.exists(tmp_path / 'data')


# ----------------------------------------------------------------------------- runs stopped before a save

def test_a_nan_before_the_first_checkpoint_says_none_was_saved(tfds_dir, tmp_path):
  config = digits_config(tfds_dir, **{**RUN, 'checkpoint_every_steps': 100, 'optim__learning_rate': 1e30,
                                      'optim__warmup_epochs': 0.0, 'optim__schedule': 'constant',
                                      'optim__filter_rms_radius': 0.0})
  with pytest.raises(FloatingPointError, match=r'non-finite loss, gradients or parameters at step \d .*no checkpoint '
                     r'was saved before it\. Lower config.optim.learning_rate'):
    loop.train_and_evaluate(config, str(tmp_path))
  assert checkpointing.manager(str(tmp_path)).all_steps() == []


def test_a_disk_that_fills_before_the_first_checkpoint_says_none_was_complete(tfds_dir, tmp_path):
  disk = tmp_path / 'small_disk'
  disk.mkdir()
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', str(disk)], capture_output=True).returncode:
    pytest.skip('mounting a small tmpfs needs root')
  try:  # one digits checkpoint is ~2.7 MB
    with pytest.raises(OSError, match=r'filled up while saving a checkpoint; no checkpoint was complete yet\. Free '
                       r'space and run the same command again'):
      loop.train_and_evaluate(digits_config(tfds_dir, **RUN), str(disk / 'run'))
  finally:
    subprocess.run(['umount', '--lazy', str(disk)])  # TensorStore may still hold files there open


# ------------------------------------------------------------------------------------ bad files as input

def test_bad_input_files_fail_with_one_clear_line(run, tmp_path):
  config, workdir = run
  empty = tmp_path / 'empty.npy'
  empty.write_bytes(b'')
  with pytest.raises(ValueError, match=rf'{empty} is not a readable .npy array \(EOFError: .*\); save the '
                     r'preprocessed input with np.save'):
    inputs.load_input(str(empty), config)
  exported = str(tmp_path / 'run.safetensors')
  weights.export_weights(config, workdir, exported)
  from safetensors import safe_open
  with safe_open(exported, framework='np') as f:
    tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
  broken = str(tmp_path / 'broken.safetensors')
  save_file(tensors, broken, metadata={**metadata, 'architecture': '{"convs": [{"layer": 1, '})
  with pytest.raises(ValueError, match=r'broken.safetensors: its metadata field "architecture" is not an '
                     r'architecture this codebase exports \(JSONDecodeError: .*\); nothing was imported'):
    weights.import_weights(broken, config, str(tmp_path / 'imported'))
  assert not os.path.exists(tmp_path / 'imported' / 'checkpoints')


def test_class_names_with_dollars_draw_literally_in_figure_titles(tmp_path):
  name = r'$\foo$'
  with matplotlib.rc_context({'text.parse_math': True}):  # matplotlib's default: what a raw name meets
    fig = plt.figure()
    fig.suptitle(f'true class {name}')
    with pytest.raises(Exception, match=r'Unknown symbol: \\foo'):
      fig.savefig(tmp_path / 'raw.png')
    plt.close(fig)
  image = np.zeros((8, 8, 3), np.float32)
  fig, _ = figures.image_figure(image, f'true class {name}')  # every figure of the package
  figures.Writer(str(tmp_path)).figure('escaped.png', fig)
  assert PIL.Image.open(tmp_path / 'escaped.png').size[0] > 0


# ------------------------------------------------------------------------------------- errors for people

def test_errors_for_people_keep_the_traceback_of_unknown_errors(capsys):
  with pytest.raises(SystemExit) as e, cli.errors_for_people():
    loop.check_config(config_lib.load(config_path('digits'), {'batch_size': 12}))
  assert e.value.code == cli.ERROR_EXIT_STATUS
  assert capsys.readouterr().err == ('error: config.batch_size=12 must be a positive multiple of the 8 devices '
                                     '(1 process(es)): e.g. --config.batch_size=8\n')
  with pytest.raises(ZeroDivisionError), cli.errors_for_people():  # a bug: its traceback stays
    1 / 0
  with pytest.raises(ValueError), cli.errors_for_people():  # raised inside a library: unforeseen, traceback stays
    np.zeros(3).reshape(2)
  with pytest.raises(ValueError), cli.errors_for_people():  # an operation in the package, not a `raise` for people
    int('x')


def test_command_lines_print_a_known_error_as_one_line_and_the_traceback_only_when_asked(run, tmp_path):
  config, workdir = run
  disk = tmp_path / 'read_only'
  disk.mkdir()
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', str(disk)], capture_output=True).returncode:
    pytest.skip('mounting a tmpfs needs root')
  try:
    shutil.copytree(workdir, disk / 'run')
    subprocess.run(['mount', '-o', 'remount,ro', str(disk)], check=True)
    before = tree(disk / 'run')
    common = ['--config', config_path('digits'), f'--config.dataset.data_dir={config.dataset.data_dir}']
    exported = str(tmp_path / 'run.safetensors')
    weights.export_weights(config, workdir, exported)
    commands = {
        'read_only': ([sys.executable, '-m', 'zfnet_jax.evaluate', *common, '--workdir', str(disk / 'run')], {}),
        'verbose': ([sys.executable, '-m', 'zfnet_jax.evaluate', *common, '--workdir', str(tmp_path / 'none')],
                    {cli.VERBOSE_ENV: '1'}),
        'keep_0': ([sys.executable, '-m', 'zfnet_jax.convert', 'import', '--from', exported, *common, '--workdir',
                    str(tmp_path / 'imported'), '--config.keep_checkpoints=0'], {}),
    }
    procs = {k: subprocess.Popen(c, cwd=REPO, env={**ONE_DEVICE, **env}, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for k, (c, env) in commands.items()}
    out = {k: p.communicate(timeout=300) for k, p in procs.items()}
    assert {k: p.returncode for k, p in procs.items()} == {k: 1 for k in commands}, out
    # a read-only workdir: the whole evaluation, its result printed, then one line on what was not saved
    stdout, stderr = out['read_only']
    assert 'sklearn_digits test, 360 examples, 1 crop(s), checkpoint step 4: top-1 ' in stdout
    assert stderr.strip().splitlines()[-1] == (f'error: could not write {disk}/run/eval.json (Read-only file system),'
                                               f' so the result is not saved: copy it from above, or evaluate again '
                                               f'where the workdir is writable')
    assert 'Traceback' not in stderr and tree(disk / 'run') == before
    _, stderr = out['verbose']  # the traceback on request, the message last
    message = f'error: no checkpoint in {tmp_path}/none/checkpoints: train first with\n  python -m zfnet_jax.train '
    assert 'Traceback (most recent call last)' in stderr and stderr.index('Traceback') < stderr.index(message)
    _, stderr = out['keep_0']  # 0 read as "keep all" kept nothing before; now refused before any work
    assert stderr.strip().splitlines()[-1] == ('error: config.keep_checkpoints=0 is out of range: must be in [1, inf) '
                                               '(or -1: keep every checkpoint), e.g. --config.keep_checkpoints=3')
    assert 'Traceback' not in stderr
    assert not os.path.exists(tmp_path / 'imported')
  finally:
    subprocess.run(['umount', '--lazy', str(disk)])  # TensorStore may still hold files there open

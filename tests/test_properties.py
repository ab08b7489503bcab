"""Properties over many drawn cases (hypothesis): top-k merging, training batches, exactly-once evaluation.

Each case is cheap: shapes are fixed where JAX runs (one compile per `k` for the session), and the data
properties read the session's prepared digits (1,437 train / 360 test squares) with no JAX at all.
"""
import functools

import jax
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from conftest import digits_config
from zfnet_jax.data import pipeline
from zfnet_jax.interpret import topk

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)

# Top-k: a stream of activations `[H, W, C]` per image, fed in batches of at most `B` images padded with
# `mask == 0` rows, as `pipeline.eval_batches` pads; fixed shapes, so `update` and `merge` compile once per k.
B, H, W, C = 4, 3, 3, 3
update, merge = jax.jit(topk.topk_update), jax.jit(topk.topk_merge)


@st.composite
def topk_streams(draw):
  """`(k, activations [N, H, W, C], mask [N], batch sizes, cuts, merges)`: few distinct values, so ties are
  common between images and between positions of one image."""
  k = draw(st.sampled_from((1, 4)))
  n = draw(st.integers(0, 13))
  rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
  activations = rng.integers(-2, 3, (n, H, W, C)).astype(np.float32)
  mask = np.asarray(draw(st.lists(st.booleans(), min_size=n, max_size=n)), bool)
  sizes = []
  while sum(sizes) < n:
    sizes.append(draw(st.integers(1, min(B, n - sum(sizes)))))
  # consecutive batches grouped into parts, a part ending after batch i where `cuts[i]`; each part's top-k is
  # computed on its own, then neighbours are merged pairwise, `merges[j]` (mod the parts left) choosing which
  cuts = draw(st.lists(st.booleans(), min_size=len(sizes), max_size=len(sizes)))
  merges = draw(st.lists(st.integers(0, 15), max_size=len(sizes) + 1))
  return k, activations, mask, sizes, cuts, merges


def reference_topk(activations: np.ndarray, mask: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
  """The top-k of the whole stream in NumPy, the tie order spelled out.

  Per image and map: its maximum, at the first position holding it in row-major order. Per map: images with
  mask 1, stronger first; on equal values the earlier image in the stream first. Slots no image fills:
  value -inf, image -1, position (0, 0).
  """
  flat = activations.reshape(len(activations), H * W, C)
  value, where = flat.max(axis=1, initial=-np.inf), flat.argmax(axis=1)
  out = (np.full((C, k), -np.inf, np.float32), np.full((C, k), -1), np.zeros((C, k), int), np.zeros((C, k), int))
  for c in range(C):
    ranked = sorted(np.flatnonzero(mask), key=lambda i: (-value[i, c], i))[:k]
    for slot, i in enumerate(ranked):
      out[0][c, slot], out[1][c, slot] = value[i, c], i
      out[2][c, slot], out[3][c, slot] = divmod(where[i, c], W)
  return out


def assert_topk(got: topk.TopK, expected: tuple[np.ndarray, ...]) -> None:
  for name, g, e in zip(topk.TopK._fields, got, expected):
    np.testing.assert_array_equal(np.asarray(g), e, err_msg=name)


@SETTINGS
@given(topk_streams())
@example((4, np.full((6, H, W, C), 1.0, np.float32), np.ones(6, bool), [2, 4], [True, False], [0]))  # all tied
def test_topk_of_any_partition_merged_in_any_order_is_the_topk_of_the_stream(case):
  k, activations, mask, sizes, cuts, merges = case
  expected = reference_topk(activations, mask, k)
  states, state, start = [], topk.topk_empty(C, k), 0
  for size, cut in zip(sizes, cuts):
    # the batch padded to B rows whose activations would win, and whose image ids are garbage
    batch = np.concatenate([activations[start:start + size], np.full((B - size, H, W, C), 9.0, np.float32)])
    ids = np.r_[np.arange(start, start + size), np.full(B - size, -7)].astype(np.int32)
    state = update(state, batch, ids, np.r_[mask[start:start + size], np.zeros(B - size, bool)].astype(np.int32))
    start += size
    if cut:
      states.append(state)
      state = topk.topk_empty(C, k)
  states.append(state)  # the last part (empty if the last batch closed one)
  whole = states[0]  # batch by batch into one state, as `topk.stream_topk` does: the parts chained
  for part in states[1:]:
    whole = merge(whole, part)
  assert_topk(whole, expected)
  while len(states) > 1:  # the parts merged pairwise in the drawn order: any binary tree over them
    i = (merges.pop(0) if merges else 0) % (len(states) - 1)
    states[i:i + 2] = [merge(states[i], states[i + 1])]
  assert_topk(states[0], expected)


# Training batches: a pure function of (seed, step, global batch); hosts read disjoint rows of it.
_FROM_ZERO: dict[int, tuple] = {}  # global batch -> (one host's stream from step 0, its batches read so far)


@pytest.fixture(scope='module', autouse=True)
def close_streams():
  yield
  _FROM_ZERO.clear()  # the streams' Grain threads and the batches they read go with the module


def from_zero(config, step: int) -> dict[str, np.ndarray]:
  """Global batch `step` of one host's run from step 0 (one stream per batch size, read on demand)."""
  stream, seen = _FROM_ZERO.setdefault(config.batch_size, (pipeline.train_batches(config)[0], []))
  while len(seen) <= step:
    seen.append(next(stream))
  return seen[step]


@st.composite
def train_cases(draw):
  """`(global batch, hosts, start step)`; starts near 0, near the end of epoch 0, or anywhere in two epochs."""
  batch = draw(st.sampled_from((8, 24, 48, 96)))
  hosts = draw(st.sampled_from([h for h in (1, 2, 3, 4) if batch % h == 0]))
  per_epoch = 1437 // batch
  start = draw(st.one_of(st.integers(0, 2), st.integers(per_epoch - 2, per_epoch), st.integers(0, 2 * per_epoch)))
  return batch, hosts, start


@SETTINGS
@given(train_cases())
@example((24, 3, 58))  # 59 steps of 24 per epoch: steps 58, 59 straddle the end of epoch 0
def test_hosts_batches_from_any_step_are_the_one_host_run_from_step_0(tfds_dir, case):
  batch, hosts, start = case
  config = digits_config(tfds_dir, batch_size=batch)
  records = pipeline.open_split(config, 'train')
  streams = [pipeline.train_batches(config, start, h, hosts) for h in range(hosts)]
  assert {per_epoch for _, per_epoch in streams} == {len(records) // batch}
  per_epoch = len(records) // batch
  for step in (start, start + 1):
    parts = [next(stream) for stream, _ in streams]
    for part in parts:
      assert part['image'].dtype == np.uint8 and part['image'].shape == (batch // hosts, 72, 72, 1)
      assert part['label'].dtype == np.int32
    whole = from_zero(config, step)
    for key in ('image', 'label'):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key], err_msg=f'{key} {step}')
    # the documented order: epoch e is default_rng([seed, e]).permutation(n), read B at a time
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([config.seed, epoch]).permutation(len(records))
    np.testing.assert_array_equal(whole['label'], records.labels[order[position * batch:(position + 1) * batch]])


# Evaluation: over all hosts and steps, the `mask == 1` examples are the split (or its class subset), once each.
@st.composite
def eval_cases(draw):
  """`(classes, hosts, per-host batch)`; `classes` () is the whole split, else a subset in a drawn order."""
  classes = draw(st.one_of(st.just(()), st.lists(st.integers(0, 9), min_size=1, max_size=10, unique=True)))
  return tuple(classes), draw(st.integers(1, 4)), draw(st.integers(1, 64))


def example_key(image: np.ndarray, label) -> bytes:
  return image.tobytes() + bytes([int(label)])


@functools.lru_cache(maxsize=1)
def whole_test_split(tfds_dir: str) -> tuple[list[np.ndarray], np.ndarray]:
  records = pipeline.open_split(digits_config(tfds_dir), 'test')
  return [records.example(k)['image'] for k in range(len(records))], records.labels


@SETTINGS
@given(eval_cases())
@example(((), 3, 16))  # 360 = 7 steps x 48 + 24: the last step partly padding on every host
@example(((7, 2), 2, 5))  # a subset, relabelled in the given order: 7 -> 0, 2 -> 1
def test_eval_batches_hold_every_example_of_the_split_or_subset_once(tfds_dir, case):
  classes, hosts, per_host = case
  config = digits_config(tfds_dir, eval_batch_size=hosts * per_host, dataset__classes=classes,
                         model__num_classes=len(classes) or 10)
  images, labels = whole_test_split(tfds_dir)
  relabel = {c: i for i, c in enumerate(classes or range(10))}
  expected = sorted(example_key(image, relabel[label]) for image, label in zip(images, labels) if label in relabel)
  got = []
  for h in range(hosts):
    batches, num_steps, n = pipeline.eval_batches(config, None, h, hosts, squares_only=True)
    batches = list(batches)
    assert n == len(expected) and num_steps == len(batches) == -(-n // (hosts * per_host))
    assert all(len(b['mask']) == per_host for b in batches)
    got += [example_key(i, lab) for b in batches for i, lab, m in zip(b['image'], b['label'], b['mask']) if m]
  assert sorted(got) == expected


def test_a_class_subset_needs_its_number_of_classes(tfds_dir):
  with pytest.raises(ValueError, match='selects 2 classes but config.model.num_classes is 10: '
                                       'set --config.model.num_classes=2'):
    pipeline.open_split(digits_config(tfds_dir, dataset__classes=(7, 2)), 'test')

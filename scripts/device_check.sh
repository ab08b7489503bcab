#!/usr/bin/env bash
# One command for a fresh GPU or TPU host: installs what is missing from the package registry (the stack and
# jax[cuda13] or jax[tpu] at requirements.txt's jax version), prints the devices, then measures everything
# docs/PERFORMANCE.md asks of such a host, each part in its own process under its own time budget
# (`python -m zfnet_jax.benchmark device --parts PART`, zfnet_jax/benchmarks/device.py):
#   devices, train (train and eval steps, bfloat16 and float32, batch doubled from 256 while images/s grows,
#   model-FLOP utilisation), profile (where a bfloat16 train step's time goes), maxpool (the switches' gradient
#   against lax.reduce_window's), interpret (deconvnet, occlusion, report top-9), input_data (ImageNet-format
#   archives written by scripts/make_imagenet_archives.py and prepared), input (Grain and tf.data on this host's
#   cores).
# Writes OUT/results.jsonl (one JSON object per measurement, one per part with its status and seconds),
# OUT/table.md (the Markdown table for docs/PERFORMANCE.md), OUT/PART.log (each part's stderr), OUT/profile/.
# The budgets add up to 9.5 minutes (about 6 expected on an H100-class host), plus the install when one is needed.
#
#   scripts/device_check.sh [--out DIR] [--smoke] [--config.FIELD=VALUE ...]
#
# --smoke: every part on CPU at tiny sizes, no install (tests/test_device_check.py runs it in the test suite).
# Other arguments go to every part (e.g. --config.batch_size=512 to start the ladder there).
# PYTHON: the interpreter (default .venv/bin/python; a fresh host gets `python3 -m venv .venv` and the install).
# Exit status 1 when a part failed or ran out of its budget (its line in results.jsonl says which); the table is
# written either way.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

SMOKE=0
OUT=""
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --out) OUT="$2"; shift ;;
    --out=*) OUT="${1#--out=}" ;;
    *) EXTRA+=("$1") ;;
  esac
  shift
done
OUT="${OUT:-runs/device_check/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
JAX_VERSION="$(sed -n 's/^jax==\([^ ]*\).*/\1/p' requirements.txt)"

if [ "$SMOKE" = 1 ]; then
  PY="${PYTHON:-python3}"
  export JAX_PLATFORMS=cpu
  export JAX_COMPILATION_CACHE_DIR="$OUT/jax_cache" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0  # profile reuses train's
  # A tiny network on 64 px crops of 72 px squares, batch 8; a nominal 1 TFLOP/s peak so the MFU column is computed.
  CONFIG=(--config configs/default.py '--config.model.conv_features=8,8,8,8,8' '--config.model.fc_features=16,16'
          --config.model.image_size=64 --config.input.resize_size=72 --config.batch_size=8 --config.eval_batch_size=8)
  COMMON=(--warmup 0 --batches 8 --peak_tflops 1 --images 16)
  STEPS=(devices=1 train=1 profile=1 maxpool=1 interpret=1 input=2)
  BUDGET=(devices=120 train=180 profile=120 maxpool=120 interpret=180 input_data=180 input=180)
  ARCHIVES=(--classes 4 --per_class 6 --val 8 --max_side 160)
else
  PY="${PYTHON:-.venv/bin/python}"
  case "$( (command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && echo gpu) ||
           (ls /dev/accel* /dev/vfio/[0-9]* >/dev/null 2>&1 && echo tpu) || echo none)" in
    gpu) EXTRA_NAME=cuda13; BACKEND=gpu ;;
    tpu) EXTRA_NAME=tpu; BACKEND=tpu ;;
    *) echo "error: no NVIDIA GPU (nvidia-smi -L) or TPU (/dev/accel*, /dev/vfio) on this host;" \
            "scripts/device_check.sh --smoke runs the parts on CPU" >&2; exit 2 ;;
  esac
  if [ ! -x "$PY" ] && [ -z "${PYTHON:-}" ]; then
    python3 -m venv .venv || exit 2
  fi
  if ! "$PY" -c 'import zfnet_jax, flax, tensorflow_datasets' >/dev/null 2>&1; then
    echo "== installing the package and jax[$EXTRA_NAME]==$JAX_VERSION" >&2
    "$PY" -m pip install -q -e . "jax[$EXTRA_NAME]==$JAX_VERSION" || exit 2
  elif [ "$("$PY" -c 'import jax; print(jax.default_backend())' 2>/dev/null)" != "$BACKEND" ]; then
    echo "== installing jax[$EXTRA_NAME]==$JAX_VERSION" >&2
    "$PY" -m pip install -q "jax[$EXTRA_NAME]==$JAX_VERSION" || exit 2
  fi
  if [ "$("$PY" -c 'import jax; print(jax.default_backend())' 2>/dev/null)" != "$BACKEND" ]; then
    echo "error: jax does not see the $BACKEND after installing jax[$EXTRA_NAME]==$JAX_VERSION:" >&2
    "$PY" -c 'import jax; print(jax.devices())' >&2
    exit 2
  fi
  export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$OUT/jax_cache}"  # a rerun compiles nothing
  CONFIG=(--config configs/default.py --config.batch_size=256 --config.eval_batch_size=256)
  COMMON=(--warmup 2 --images 500)
  STEPS=(devices=1 train=10 profile=5 maxpool=10 interpret=3 input=20)
  BUDGET=(devices=45 train=200 profile=60 maxpool=30 interpret=100 input_data=75 input=60)
  ARCHIVES=(--classes 143 --per_class 14 --val 50 --max_side 500)
fi

lookup() {  # lookup KEY NAME=VALUE... -> VALUE
  local key=$1 pair; shift
  for pair in "$@"; do
    if [ "${pair%%=*}" = "$key" ]; then echo "${pair#*=}"; return; fi
  done
}

FAILED=0
part() {  # part NAME COMMAND...: COMMAND under NAME's budget, its stdout into results.jsonl, then a status line
  local name=$1 budget start rc status
  shift
  budget=$(lookup "$name" "${BUDGET[@]}")
  start=$SECONDS
  echo "== $name (budget ${budget}s)" >&2
  timeout --kill-after=10 "$budget" "$@" >> "$RESULTS" 2> "$OUT/$name.log"
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status=timeout ;;
    *) status=failed ;;
  esac
  [ "$status" = ok ] || { FAILED=1; tail -5 "$OUT/$name.log" >&2; }
  printf '{"what": "part", "part": "%s", "status": "%s", "exit_code": %d, "seconds": %d, "budget_s": %d}\n' \
    "$name" "$status" "$rc" $((SECONDS - start)) "$budget" >> "$RESULTS"
  echo "   $status in $((SECONDS - start))s" >&2
}

device() {  # device PART [FLAGS...]: one part of `python -m zfnet_jax.benchmark device`
  local name=$1
  shift
  part "$name" "$PY" -m zfnet_jax.benchmark device "${CONFIG[@]}" "${COMMON[@]}" --parts "$name" \
    --steps "$(lookup "$name" "${STEPS[@]}")" "$@" "${EXTRA[@]}"
}

command -v nvidia-smi >/dev/null && nvidia-smi -L >&2
device devices
tail -2 "$RESULTS" | head -1 >&2
device train
device profile --profile_dir "$OUT/profile"
device maxpool
device interpret
DATA="$OUT/imagenet"
SQUARES=("${CONFIG[@]}")  # the squares the parts' config trains on
for arg in "${EXTRA[@]}"; do
  case "$arg" in --config.*) SQUARES+=("$arg") ;; esac
done
# shellcheck disable=SC2016  # the inner script expands its own arguments
part input_data bash -c '"$1" scripts/make_imagenet_archives.py --out "$2/manual" $3 >&2 &&
  "$1" scripts/prepare_imagenet.py --manual_dir "$2/manual" --data_dir "$2/tfds" "${@:4}" >&2' _ \
  "$PY" "$DATA" "${ARCHIVES[*]}" "${SQUARES[@]}"
device input "--config.dataset.data_dir=$DATA/tfds"

"$PY" -c 'import sys; from zfnet_jax.benchmarks import device; print(device.markdown(device.read_jsonl(sys.argv[1])))' \
  "$RESULTS" > "$OUT/table.md"
cat "$OUT/table.md"
echo "results: $RESULTS, table: $OUT/table.md" >&2
exit $FAILED

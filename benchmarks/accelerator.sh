#!/usr/bin/env bash
# kzoo on an accelerator machine that has JAX and/or PyTorch, no TensorFlow and no network:
# installs kzoo, keras and keras-hub from the wheels carried in the work tree (dist/wheels/,
# made beforehand with `make wheels` where the registry is reachable), then prints training
# tokens/s, MFU and generation tokens/s for gpt2_124m in bfloat16 on each backend it finds.
# Everything it cannot do (no wheel, no backend, no accelerator, a failing run) is one line
# saying so; it never stops at the first problem. Results: benchmarks/results/accelerator.json.
# On JAX it then runs gpt2_124m training steps under fsdp over every visible device
# (benchmarks/fsdp_step.py, issue 24 item 7; one line and skipped with one device):
# benchmarks/results/accelerator_fsdp.json.
#
#   bash benchmarks/accelerator.sh            # on the device machine, from the repository root
#   ACCEL_STEPS=20 bash benchmarks/accelerator.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WHEELS="${WHEELS:-dist/wheels}"
ENV_DIR="${ACCEL_SITE:-/tmp/kzoo-accel}"   # where the wheels are unpacked
TIMEOUT="${ACCEL_TIMEOUT:-240}"   # seconds per backend

say() { printf 'accelerator: %s\n' "$*"; }

if ! ls "$WHEELS"/kzoo-*.whl >/dev/null 2>&1; then
    say "no kzoo wheel in $WHEELS: run 'make wheels' on a machine with the package registry"
    say "and carry $WHEELS; trying the checkout itself instead (PYTHONPATH=.)"
    RUN_PY="$PY"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    # The machine's own JAX / torch / numpy stay in use; only the three pure-Python wheels are
    # added, without dependencies (nothing can be downloaded here), on PYTHONPATH.
    RUN_PY="$PY"
    rm -rf "$ENV_DIR" && mkdir -p "$ENV_DIR"
    "$PY" -m pip install --quiet --no-index --no-deps --target "$ENV_DIR" "$WHEELS"/*.whl \
        || say "pip could not install every wheel from $WHEELS (continuing with what is there)"
    export PYTHONPATH="$ENV_DIR${PYTHONPATH:+:$PYTHONPATH}"
fi
for module in keras keras_hub kzoo numpy; do
    "$RUN_PY" -c "import $module" 2>/dev/null || say "cannot import $module: runs needing it will fail"
done
"$RUN_PY" -c "import tensorflow" 2>/dev/null && say "TensorFlow is installed here (not needed)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader \
    | sed 's/^/accelerator: device /'

mkdir -p benchmarks/results
status=0
for backend in jax torch; do
    if ! "$RUN_PY" -c "import $backend" 2>/dev/null; then
        say "$backend is not installed: skipped"
        continue
    fi
    KERAS_BACKEND=$backend timeout "$TIMEOUT" "$RUN_PY" benchmarks/accelerator.py \
        --out "benchmarks/results/accelerator_$backend.json" "$@"
    rc=$?
    [ $rc -eq 124 ] && say "$backend: stopped after ${TIMEOUT}s (ACCEL_TIMEOUT)"
    [ $rc -ne 0 ] && { say "$backend: failed (exit $rc)"; status=1; }
done
# Sharded training over every device JAX sees (a {batch: 1, model: N} fsdp mesh).
if "$RUN_PY" -c "import jax" 2>/dev/null; then
    KERAS_BACKEND=jax timeout "$TIMEOUT" "$RUN_PY" benchmarks/fsdp_step.py \
        --out benchmarks/results/accelerator_fsdp.json
    rc=$?
    [ $rc -eq 124 ] && say "fsdp: stopped after ${TIMEOUT}s (ACCEL_TIMEOUT)"
    [ $rc -ne 0 ] && { say "fsdp: failed (exit $rc)"; status=1; }
else
    say "fsdp: jax is not installed: skipped"
fi
exit $status

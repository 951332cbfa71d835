#!/usr/bin/env bash
# `make test`'s three pytest passes (the Makefile sets PYTHON, XDIST, TORCH_TESTS, JAX_TESTS;
# the arguments go to the TensorFlow pass).
#
# The TensorFlow pass (the whole suite) runs in the foreground, its output live. The PyTorch
# and JAX passes (the backend-neutral unit tests again) run one after the other beside it, at
# the lowest CPU priority (nice 19): on 2 cores they take only the CPU the TensorFlow pass
# leaves idle (its workers waiting on child processes, servers and kill -9 points, its last
# files) and the whole machine once it ends. Their output is kept and printed after it. The same
# tests run as when the passes ran one after another; only the waiting goes.
# Exit status: 0 when all three passed, else the first failure's.
#
# Example: PYTHON=.venv/bin/python XDIST="-n 2 --dist loadfile" TORCH_TESTS=tests/layers \
#          JAX_TESTS=tests/layers scripts/test_passes.sh --durations=25
set -u
: "${PYTHON:?}" "${XDIST:?}" "${TORCH_TESTS:?}" "${JAX_TESTS:?}"
logs=$(mktemp -d "${TMPDIR:-/tmp}/kzoo-test-passes.XXXXXX")

# Job control (set -m) gives the background its own process group, so an interrupted
# `make test` stops it too, yet keeps it in this session: Linux' scheduler autogroups are per
# session, and `setsid` would give it a group of its own that shares the CPU 50/50 with the
# TensorFlow pass whatever its nice value (measured: the whole run 1.7 minutes slower).
set -m
# shellcheck disable=SC2086  # XDIST and the test lists are word lists
nice -n 19 bash -c '
    KERAS_BACKEND=torch "$PYTHON" -m pytest $XDIST -q -p no:cacheprovider $TORCH_TESTS \
        > "$0/torch.log" 2>&1
    echo $? > "$0/torch.rc"
    KERAS_BACKEND=jax "$PYTHON" -m pytest $XDIST -q -p no:cacheprovider $JAX_TESTS \
        > "$0/jax.log" 2>&1
    echo $? > "$0/jax.rc"' "$logs" &
others=$!
set +m
trap 'kill -- -$others 2>/dev/null; rm -rf "$logs"; exit 130' INT TERM

# shellcheck disable=SC2086
KERAS_BACKEND=tensorflow "$PYTHON" -m pytest $XDIST "$@"
status=$?
kill -0 "$others" 2>/dev/null && echo "==== waiting for the PyTorch and JAX passes to finish"
wait "$others"
for pass in torch jax; do
    echo "==== KERAS_BACKEND=$pass pass (ran beside the TensorFlow pass, at nice 19)"
    cat "$logs/$pass.log" 2>/dev/null
    rc=$(cat "$logs/$pass.rc" 2>/dev/null || echo 1)
    if [ "$status" -eq 0 ] && [ "$rc" -ne 0 ]; then status=$rc; fi
done
rm -rf "$logs"
exit "$status"

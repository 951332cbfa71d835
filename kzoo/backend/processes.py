"""Several processes, one program: JAX's distributed runtime behind the backend seam.

`connect(coordinator, count, index, timeout_s)` joins this process to the others
(`jax.distributed.initialize`, which `keras.distribution.initialize` also calls) with CPU
collectives over Gloo (jax 0.10's default `jax_cpu_collectives_implementation`), so a Keras
`DeviceMesh` over `jax.devices()` spans every process's devices. It must run before the first
JAX op, like `split_cpu`. Only the JAX backend has it: TensorFlow runs several workers through
`MultiWorkerMirroredStrategy` and TF_CONFIG instead, PyTorch not at all.

Waiting is bounded. A process other than 0 first dials the coordinator's port (plain TCP) until
`timeout_s` and raises a one-line ValueError naming the address if nothing answers. Every
process then registers with the coordinator; JAX ends a process whose peers never come with a
fatal error (SIGABRT and a stack trace, nothing Python can catch), so a watchdog ends it first,
at the same deadline, with one `error:` line and exit code 2.

`host_values(variables)` is what saving a sharded model needs across processes: each weight
spans devices of several processes, so no process can read it alone. Inside the block every
process holds the whole of each value in host memory (one all-gather program), and no Keras
distribution is in effect, so the chief can save, sample or evaluate on its own devices.

Example:
```python
from kzoo.backend import processes
processes.connect("10.0.0.1:1234", count=2, index=0, timeout_s=60)  # on host 0, then host 1
processes.count()   # 2
```
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time

from kzoo.backend import name

_connected = None  # (coordinator, count, index) once this process joined


def _jax():
    if name() != "jax":
        raise ValueError(f"several processes (KERAS_DISTRIBUTION_NUM_PROCESSES) need the jax "
                         f"backend, not {name()}; set KERAS_BACKEND=jax (on tensorflow use "
                         "train.distribution=multi_worker with TF_CONFIG)")
    import jax

    return jax


def connect(coordinator: str, count: int, index: int, timeout_s: float) -> None:
    """Join process `index` of `count` to the run whose process 0 listens on `coordinator`.

    Args:
        coordinator: str. `HOST:PORT` of process 0 (it binds the port itself).
        count: int. processes in the run.
        index: int. this process, 0 to count - 1; 0 is the coordinator (and the chief).
        timeout_s: float. seconds to wait for the coordinator and every peer.

    Raises:
        ValueError: one line: another backend than JAX, an address that is not HOST:PORT,
            a second call with other values, or (index > 0) no coordinator at the address
            within `timeout_s`. A peer missing at the deadline ends the process (exit code 2).
    """
    global _connected
    jax = _jax()
    wanted = (coordinator, count, index)
    if _connected is not None:
        if _connected != wanted:  # jax.distributed.initialize runs once per process
            raise ValueError(f"this process already joined {_connected[0]} as process "
                             f"{_connected[2]} of {_connected[1]}; start a new process")
        return
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"coordinator address {coordinator!r} is not HOST:PORT "
                         "(KERAS_DISTRIBUTION_JOB_ADDRESSES)")
    deadline = time.monotonic() + timeout_s
    if index > 0:
        _dial(host.strip("[]"), int(port), deadline, (
            f"cannot reach the coordinator {coordinator} within {timeout_s:g} s (process "
            f"{index} of {count}); start process 0 there first, check "
            "KERAS_DISTRIBUTION_JOB_ADDRESSES, or raise KZOO_COORDINATOR_TIMEOUT"))
    left = max(1.0, deadline - time.monotonic())
    watchdog = threading.Timer(left, _give_up, (
        f"not every process reached the coordinator {coordinator} within {timeout_s:g} s "
        f"(this is process {index} of {count}); start all {count}, or raise "
        "KZOO_COORDINATOR_TIMEOUT",))
    watchdog.daemon = True
    watchdog.start()
    try:
        # JAX's own timeout later than the watchdog's: its failure is the fatal one
        jax.distributed.initialize(coordinator, num_processes=count, process_id=index,
                                   initialization_timeout=int(left) + 30)
    finally:
        watchdog.cancel()
    _connected = wanted


def _dial(host: str, port: int, deadline: float, message: str) -> None:
    """Return once something accepts a TCP connection at host:port; ValueError at `deadline`."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ValueError(message)
        try:
            socket.create_connection((host, port), timeout=min(1.0, left)).close()
            return
        except OSError:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def _give_up(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    os._exit(2)  # before JAX's abort; nothing of the run was written yet


def connected() -> bool:
    """True once `connect` joined this process to others."""
    return _connected is not None


def count() -> int:
    """Processes in the run: 1 unless `connect` joined others."""
    return _connected[1] if _connected else 1


def index() -> int:
    """This process's index (0: the coordinator and chief); 0 on one process."""
    return _connected[2] if _connected else 0


def device_counts() -> tuple[int, int]:
    """(devices of all processes, devices of this one); call after `connect`."""
    if _connected is None:
        return 0, 0
    jax = _jax()
    return jax.device_count(), jax.local_device_count()


@contextlib.contextmanager
def host_values(variables):
    """Within the block each of `variables` holds its whole value as a host (numpy) array, on
    every process, and no Keras distribution is in effect; on exit both come back. Every
    process must enter it (the gather is one collective program). Nothing on one process.

    Args:
        variables: list[keras.Variable]. what the block reads (weights, optimizer slots).
    """
    if _connected is None:
        yield
        return
    import keras
    import numpy as np

    jax = _jax()
    unique = list({id(v): v for v in variables}.values())
    held = [v._value for v in unique]  # the sharded arrays, put back on exit
    spread = [i for i, a in enumerate(held)
              if isinstance(a, jax.Array) and not a.is_fully_addressable
              and not a.is_fully_replicated]  # Keras lays out with NamedSharding
    whole = list(held)
    if spread:
        replicated = tuple(jax.sharding.NamedSharding(held[i].sharding.mesh,
                                                      jax.sharding.PartitionSpec())
                           for i in spread)
        gathered = jax.jit(lambda *xs: xs, out_shardings=replicated)(*[held[i] for i in spread])
        for i, value in zip(spread, gathered):
            whole[i] = value
    # a replicated array reads from a local device
    whole = [a if a is None else np.asarray(a) for a in whole]
    before = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        for v, value in zip(unique, whole):
            v._value = value
        yield
    finally:
        for v, value in zip(unique, held):
            v._value = value
        keras.distribution.set_distribution(before)

"""The device mesh and the shardings of state and batches.

The mesh has axes `data` and `fsdp` (`config.mesh.data` x `config.mesh.fsdp` devices, -1 =
all remaining). Batches are global arrays whose rows are split over every device (both
axes); parameters and optimizer state are split over `fsdp` along their largest axis that
divides evenly (fully sharded data parallelism) and replicated over `data`. With fsdp 1
everything is replicated: plain data parallelism. One device, many devices and many hosts
run the same code.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
from collections.abc import Callable, Iterable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
    """A `data` x `fsdp` mesh over all (or the given) devices; -1 for one of the two sizes
    takes all remaining devices. ValueError naming `config.mesh` if they do not fit."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    count = devices.size
    if data == -1 and fsdp == -1 or data == 0 or fsdp == 0 or min(data, fsdp) < -1:
        raise ValueError(f"config.mesh: data={data}, fsdp={fsdp}; each must be positive, or -1 for one of them")
    data = count // fsdp if data == -1 else data
    fsdp = count // data if fsdp == -1 else fsdp
    if data * fsdp != count:
        raise ValueError(f"config.mesh: data={data} x fsdp={fsdp} does not match the {count} devices")
    return Mesh(devices.reshape(data, fsdp), AXES)


def mesh_from_config(config) -> Mesh:
    mesh = config.get("mesh") or {}
    return make_mesh(mesh.get("data", -1), mesh.get("fsdp", 1))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device."""
    return NamedSharding(mesh, P(AXES))


def param_sharding(mesh: Mesh, shape: tuple[int, ...]) -> NamedSharding:
    """Split over `fsdp` along the largest axis it divides (the first of equals); replicated
    if none or if fsdp is 1."""
    fsdp = mesh.shape["fsdp"]
    fits = [(size, -axis) for axis, size in enumerate(shape) if fsdp > 1 and size % fsdp == 0]
    if not fits:
        return replicated(mesh)
    axis = -max(fits)[1]
    return NamedSharding(mesh, P(*([None] * axis), "fsdp"))


def state_shardings(tree, mesh: Mesh):
    """The sharding of every leaf of a state pytree (arrays or ShapeDtypeStructs)."""
    return jax.tree.map(lambda x: param_sharding(mesh, tuple(x.shape)), tree)


def row_multiple(mesh: Mesh, micro_batches: int = 1) -> int:
    """What the number of rows of every batch must be a multiple of: rows are split over
    every device, each device's rows into `micro_batches` slices."""
    return mesh.devices.size * micro_batches


def padded_rows(rows: int, multiple: int) -> int:
    """`rows` rounded up to a multiple of `multiple` (the rows of a batch completed with
    padding rows)."""
    return -(-rows // multiple) * multiple


def process_rows(rows: np.ndarray) -> np.ndarray:
    """This process's share of the rows (leading axis) of a global batch: the rows that
    `to_global` places on its devices (the mesh lists devices process by process)."""
    return np.array_split(rows, jax.process_count())[jax.process_index()]


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of a batch → global arrays sharded over every device."""
    sharding = data_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def map_batches(fn: Callable, batches: Iterable, mesh: Mesh, compile: Callable | None = None) -> list:
    """`[fn(batch) for batch in batches]`, where `fn` runs a program and waits for its
    result. On a mesh of one CPU device, as many batches at a time as the process has cores,
    each in its own thread: XLA:CPU spreads one program's many small operations (a decoding
    step's) poorly over the cores, while programs called from several threads run side by
    side. Elsewhere one batch at a time: the programs of a mesh of several devices must run
    in the same order on every device and process.

    `compile(batch)`, if given, compiles the program `fn` runs on batches of that batch's
    shapes: a thread then compiles each shape once, ahead, in the order the batches first
    need it, while batches of shapes already compiled run, and a batch waits only for its
    own shape's program."""
    batches = list(batches)
    compiler = concurrent.futures.ThreadPoolExecutor(1)
    compiled = {}
    if compile is not None:
        for batch in batches:
            shapes = _shapes(batch)
            if shapes not in compiled:
                compiled[shapes] = compiler.submit(compile, batch)

    def run(batch):
        if compiled:
            compiled[_shapes(batch)].result()  # raises the compilation's error, if any
        return fn(batch)

    try:
        if mesh.devices.size > 1 or mesh.devices.flat[0].platform != "cpu":
            return [run(batch) for batch in batches]
        with concurrent.futures.ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
            return list(pool.map(run, batches))
    finally:
        compiler.shutdown(cancel_futures=True)


def _shapes(batch) -> tuple:
    return tuple(np.shape(x) for x in jax.tree.leaves(batch))


def all_rows(x) -> np.ndarray:
    """Every process's rows, in order, on every process: of a global array, or of the
    arrays (one per process) that `to_global` would assemble."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    return multihost_utils.process_allgather(x, tiled=True)


@contextlib.contextmanager
def process_0_first(name: str):
    """Runs the block on process 0 before the other processes (which wait): files it
    prepares on a shared disk are then read, not written again, by the others."""
    many = jax.process_count() > 1
    if many and jax.process_index() != 0:
        multihost_utils.sync_global_devices(name)
    yield
    if many and jax.process_index() == 0:
        multihost_utils.sync_global_devices(name)

"""Several processes, one run: the multi-process settings, start-up, and who writes what.

A run over several hosts (a Cloud TPU pod slice, a GPU cluster), or over several processes
on one host, is the same command started once per process, with the same code, config and
``--workdir`` (on storage every process reads and writes: a shared filesystem;
docs/scaling_out.md). Each process needs three settings, as flags of the launch scripts or as
environment variables (a flag and a variable that disagree are refused):

  ``--coordinator_address``  ``JAX_COORDINATOR_ADDRESS``  host:port of process 0, reachable
                                                          by every process
  ``--num_processes``        ``JAX_NUM_PROCESSES``        processes in the run
  ``--process_id``           ``JAX_PROCESS_ID``           this process: 0 .. num_processes-1

On a Cloud TPU pod slice, under SLURM (``srun``) or Open MPI (``mpirun``) none is needed:
``jax.distributed.initialize()`` reads them from the cluster, and any one given overrides
what it reads. Elsewhere all three are needed; none means one process.

Who does what:

* corpus (``zoo/make_corpus.py``): process 0 writes what every process needs (plan,
  embeddings, the generalist); the shards to do are dealt round-robin, each process trains
  its shards on its own devices and writes them; process 0 joins them into the corpus.
* training (``train/loop.py``): one mesh over every device; each process places its
  devices' rows of the global batch; orbax writes each process's shards of a checkpoint and
  process 0 its metadata; process 0 alone writes metrics and TensorBoard events.
* evaluation: every process runs the same evaluation on its own devices; process 0 writes
  the report.
"""
import contextlib
import dataclasses
import logging
import os
from typing import Mapping

import jax

from t2w_jax.errors import ConfigError
from t2w_jax.workdir_lock import LOCK_FILE

# Setting -> the environment variable that gives it (the flag has the setting's name).
ENV_VARS = {"coordinator_address": "JAX_COORDINATOR_ADDRESS",
            "num_processes": "JAX_NUM_PROCESSES",
            "process_id": "JAX_PROCESS_ID"}
_MEANING = {"num_processes": "number of processes", "process_id": "index of this process"}


@dataclasses.dataclass(frozen=True)
class Settings:
  """What ``jax.distributed.initialize`` is given; None fields are left to the cluster.

  Attributes:
    coordinator_address: host:port of process 0.
    num_processes: processes in the run.
    process_id: this process's index.
    cluster: the cluster JAX detects the missing settings from ("SLURM", ...), or None
      when all three are given.
  """
  coordinator_address: str | None
  num_processes: int | None
  process_id: int | None
  cluster: str | None = None


def detect_cluster(environ: Mapping[str, str] | None = None) -> str | None:
  """The multi-process launcher this process runs under, if any JAX can read settings from.

  Args:
    environ: the environment (default ``os.environ``).

  Returns:
    "Cloud TPU pod slice", "Cloud TPU multislice", "SLURM" or "Open MPI" when the
    environment shows a launch of more than one process by it; else None.
  """
  env = os.environ if environ is None else environ

  def count(name):
    try:
      return int(env.get(name, "1"))
    except ValueError:
      return 1

  if "MEGASCALE_COORDINATOR_ADDRESS" in env:
    return "Cloud TPU multislice"
  if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
    return "Cloud TPU pod slice"
  if count("SLURM_NTASKS") > 1:
    return "SLURM"
  if count("OMPI_COMM_WORLD_SIZE") > 1:
    return "Open MPI"
  return None


def _setting(key: str, flag_value, env: Mapping[str, str]):
  """One setting from its flag or its variable (parsed), refusing a disagreement."""
  var = ENV_VARS[key]
  raw = env.get(var, "").strip() or None
  env_value = raw
  if raw is not None and key != "coordinator_address":
    try:
      env_value = int(raw)
    except ValueError:
      raise ConfigError(f"{var}={raw!r} is not a whole number; set it to the "
                        f"{_MEANING[key]}, or unset it") from None
  if flag_value is not None and env_value is not None and flag_value != env_value:
    raise ConfigError(f"--{key}={flag_value} disagrees with {var}={raw}; give one of them, "
                      "or the same value in both")
  return flag_value if flag_value is not None else env_value


def resolve(coordinator_address: str | None = None, num_processes: int | None = None,
            process_id: int | None = None,
            environ: Mapping[str, str] | None = None) -> Settings | None:
  """The multi-process settings of this process from its flags and environment.

  Args:
    coordinator_address, num_processes, process_id: the flags (None: not given).
    environ: the environment (default ``os.environ``).

  Returns:
    None for a single process, else the Settings to initialise with.

  Raises:
    ConfigError: a malformed, out-of-range or incomplete setting, or a flag that disagrees
      with its variable; the message names it and the fix.
  """
  env = os.environ if environ is None else environ
  values = {k: _setting(k, v, env) for k, v in (("coordinator_address", coordinator_address),
                                                ("num_processes", num_processes),
                                                ("process_id", process_id))}
  address, n, i = (values[k] for k in ENV_VARS)
  if n is not None and n < 1:
    raise ConfigError(f"num_processes={n}: a run has at least one process; set "
                      f"--num_processes (or {ENV_VARS['num_processes']}) to the process count")
  if i is not None and (i < 0 or (n is not None and i >= n)):
    top = f"{n - 1}" if n is not None else "num_processes - 1"
    raise ConfigError(f"process_id={i} is out of range: process ids run from 0 to {top}; "
                      f"give each process its own --process_id (or "
                      f"{ENV_VARS['process_id']})")
  if address is not None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise ConfigError(f"coordinator_address={address!r} is not host:port; give process "
                        f"0's address and a free port, e.g. 10.0.0.1:12355")
  if n == 1:
    return None  # one process, whatever else is set: nothing to coordinate
  cluster = detect_cluster(env)
  given = [k for k, v in values.items() if v is not None]
  if not given:
    return Settings(None, None, None, cluster) if cluster else None
  if len(given) < 3 and cluster is None:
    missing = [k for k in ENV_VARS if k not in given]
    need = " and ".join(f"--{k} (or {ENV_VARS[k]})" for k in missing)
    raise ConfigError(
        f"multi-process settings are incomplete: {' and '.join(given)} given, without "
        f"{' and '.join(missing)}; set {need}, or none of the three for a single process")
  return Settings(address, n, i, None if len(given) == 3 else cluster)


def _use_gloo_on_cpu() -> None:
  # XLA:CPU runs cross-process collectives only through an implementation chosen before
  # the backend starts; older jax releases default to none. gloo ships with jaxlib.
  try:
    current = jax.config.jax_cpu_collectives_implementation
  except AttributeError:
    return
  if current in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def _leave_sigterm_to_preempt() -> None:
  # JAX's preemption service (on by default) takes SIGTERM from the moment a process joins
  # and only records it, for ``multihost_utils.reached_preemption_sync_point``: a SIGTERM
  # before the work begins would be lost and no second one could end the process, and
  # SIGINT is not covered. t2w_jax.preempt catches both during the work, and the train
  # step carries the processes' agreement on when to stop (``train.loop.compile_step``).
  try:
    jax.config.update("jax_enable_preemption_service", False)
  except AttributeError:  # a jax release without the service
    pass


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Joins this process to its multi-process run, if it is part of one (``resolve``).

  Idempotent: a no-op once initialised, and for a single process. Must run before JAX
  touches a device (the launch scripts call it first; ``make_corpus`` and ``train`` call
  it too, reading the environment, for callers that skip the launch scripts).

  Args:
    coordinator_address, num_processes, process_id: the flags (None: not given; the
      environment variables of ``ENV_VARS`` are read for those).

  Raises:
    ConfigError: settings that ``resolve`` refuses.
  """
  if _initialized():
    return
  settings = resolve(coordinator_address, num_processes, process_id)
  if settings is None:
    return
  _use_gloo_on_cpu()
  _leave_sigterm_to_preempt()
  jax.distributed.initialize(coordinator_address=settings.coordinator_address,
                             num_processes=settings.num_processes,
                             process_id=settings.process_id)
  logging.info("multi-process run: process %d of %d (%s), %d local of %d devices",
               jax.process_index(), jax.process_count(),
               settings.cluster or settings.coordinator_address,
               jax.local_device_count(), jax.device_count())


def _initialized() -> bool:
  check = getattr(jax.distributed, "is_initialized", None)
  if check is not None:
    return check()
  from jax._src import distributed  # older jax releases have no public check
  return distributed.global_state.client is not None


def _coordination_client():
  from jax._src import distributed  # no public handle to the coordination service's client
  return distributed.global_state.client


def joined() -> bool:
  """Whether this process is one of several in a run (``initialize`` joined it)."""
  return _initialized() and jax.process_count() > 1


def is_primary() -> bool:
  """Whether this process writes what the run writes once (process 0; any single process)."""
  return jax.process_index() == 0


# How long a process waits at a barrier for the others: long enough for process 0 to build
# what the others wait for (the corpus's data, its generalist) on a slow host.
BARRIER_TIMEOUT_S = 3600
_barriers_passed = [0]


def barrier(name: str) -> None:
  """Waits until every process of the run reaches the barrier called ``name``.

  A no-op for a single process. Every process must call the same barriers in the same
  order. The wait goes through JAX's coordination service, not through a collective: the
  CPU collectives (gloo) give up on a peer after a fixed 30 s, so a process that waits
  longer than that for process 0 must not wait in one (see ``before_first_collective``).

  Raises:
    TimeoutError: a process did not arrive within ``BARRIER_TIMEOUT_S`` (the processes
      called different barriers), or the coordination service saw one stop.
  """
  if jax.process_count() == 1:
    return
  client = _coordination_client()
  # Ids are unique per run (a count every process keeps in step), so one name may be used
  # again; the name makes a timeout's message say where it waited.
  _barriers_passed[0] += 1
  barrier_id = f"t2w:{_barriers_passed[0]}:{name}"
  try:
    client.wait_at_barrier(barrier_id, BARRIER_TIMEOUT_S * 1000)
  except Exception as e:  # the client raises a generic runtime error
    raise TimeoutError(f"process {jax.process_index()} stopped waiting at barrier "
                       f"{name!r} (number {_barriers_passed[0]}): not every process arrived "
                       f"within {BARRIER_TIMEOUT_S} s, or one stopped: {e}") from e


def before_first_collective(name: str) -> None:
  """Call just before the first program that communicates between processes is run.

  XLA's CPU collectives connect the processes on a program's first collective and give up
  if a peer is more than 30 s late; compiling or loading can put one process that far
  behind on a busy host. Compile first (``.lower(...).compile()``), then pass this
  barrier, so that every process dispatches the program at the same moment.
  """
  barrier(f"{name}: ready to run")


@contextlib.contextmanager
def primary_first(name: str):
  """A ``with`` block that process 0 runs first, then the other processes, then all go on.

  For work whose results land on disk: process 0 makes and writes them, the others then
  read them back instead of racing it (the block reads what exists, makes what does not).
  No process leaves the block before every process is through it, so what the others
  read there is not yet changed by process 0's next steps. The block must not itself
  wait for the other processes (no barrier, no collective).

  Args:
    name: names the block's barriers.

  Yields:
    None.
  """
  if not is_primary():
    barrier(f"{name}: process 0 done")
  yield
  if is_primary():
    barrier(f"{name}: process 0 done")
  barrier(f"{name}: all done")


def check_same(value: int, what: str, fix: str) -> None:
  """Refuses a run whose processes disagree on ``value`` (a no-op for one process).

  Every process gets the same gathered values, so all refuse together instead of some
  waiting at a later barrier for one that stopped.

  Args:
    value: this process's value.
    what: what it is, for the message.
    fix: how to make them agree, for the message.

  Raises:
    ConfigError: naming each process's value.
  """
  if jax.process_count() == 1:
    return
  # Exchanged through the coordination service's key-value store, not a collective (which
  # would give up on a process more than 30 s late; ``barrier``).
  client = _coordination_client()
  key = f"t2w:check_same:{_barriers_passed[0]}:{what}"
  client.key_value_set(f"{key}:{jax.process_index()}", str(int(value)))
  values = [int(client.blocking_key_value_get(f"{key}:{p}", BARRIER_TIMEOUT_S * 1000))
            for p in range(jax.process_count())]
  barrier(f"checked {what}")  # nobody goes on (or refuses) before every value is read
  if len(set(values)) > 1:
    each = ", ".join(f"process {p}: {v}" for p, v in enumerate(values))
    raise ConfigError(f"the processes disagree on {what} ({each}); {fix}")


def lock_name() -> str | None:
  """The writer-lock file of this process in a shared workdir (``workdir_lock``'s name).

  Process 0 (or a single process) holds the usual lock, so that a one-process run is
  refused while a multi-process run writes the workdir; process i > 0 holds its own, so
  that a second run is refused process by process.
  """
  return None if is_primary() else f"{LOCK_FILE}.{jax.process_index()}"

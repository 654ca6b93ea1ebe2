"""Choosing the torch device of a training or prediction job, and its thread and AMP settings.

On a workstation, ``snakemake --resources gpu=3`` only guarantees that at most three GPU jobs run;
it does not say which GPU each should use. Each job therefore claims a free GPU itself with a lock
file per GPU (``gpu{i}.lock`` in a shared directory) held with ``fcntl.flock`` for the job's
lifetime. The kernel releases a flock when the last descriptor of the holding process closes, so
a crashed or killed job (even ``kill -9``) never leaves a GPU claimed. Under a scheduler that gives
the job one GPU through ``CUDA_VISIBLE_DEVICES`` (SLURM), the job uses ``cuda:0`` and takes no lock;
a user's multi-GPU ``CUDA_VISIBLE_DEVICES`` restricts the claim to those GPUs.

A large GPU can run several small jobs at once: with ``jobs_per_gpu`` N (the config key of that
name, which the workflow hands to its jobs as ``$HPA_PIPELINE_JOBS_PER_GPU``) each GPU has N lock
files, ``gpu{i}.slot{k}.lock``, and a claim takes the first free slot, filling every GPU's first
slot before any second one. Snakemake's ``--resources gpu=...`` must then allow GPUs × N jobs.

torch is imported lazily so that a process that only claims (and the tests' helper processes)
start fast.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from hpa_pipeline.errors import ConfigError, PipelineError

if TYPE_CHECKING:
    import torch

LOCK_DIR_ENV = "HPA_PIPELINE_GPU_LOCK_DIR"
JOBS_PER_GPU_ENV = "HPA_PIPELINE_JOBS_PER_GPU"
DEFAULT_TIMEOUT_S = 600.0


def default_jobs_per_gpu() -> int:
    """``$HPA_PIPELINE_JOBS_PER_GPU`` (set by the workflow from its ``jobs_per_gpu`` key), else 1."""
    text = os.environ.get(JOBS_PER_GPU_ENV, "").strip() or "1"
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{JOBS_PER_GPU_ENV}={text!r}: expected a whole number of jobs per GPU, at least 1")
    return int(text)


def share_gpus(jobs_per_gpu: int) -> None:
    """Let every GPU job this process starts share a GPU with ``jobs_per_gpu - 1`` others (the
    workflow calls it with its config's ``jobs_per_gpu``; jobs inherit the environment)."""
    if jobs_per_gpu < 1:
        raise ConfigError(f"jobs_per_gpu = {jobs_per_gpu}: expected at least 1")
    os.environ[JOBS_PER_GPU_ENV] = str(jobs_per_gpu)


def default_lock_dir() -> Path:
    """``$HPA_PIPELINE_GPU_LOCK_DIR``, else ``<tmp>/hpa-pipeline-gpu-locks`` (one per machine)."""
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "hpa-pipeline-gpu-locks")


class DeviceClaim:
    """A device held for a job; a context manager that releases the GPU lock on exit.

    Dropping the object does not release the lock (the descriptor stays open): a claim ends with
    ``release()``, the end of the ``with`` block, or the end of the process. So a job that only
    keeps ``claim.device`` still holds its GPU until it exits.

    Attributes:
        device: ``"cpu"`` or ``"cuda:i"``.
        lock_path: the lock file held, or None (CPU, or GPUs restricted by the scheduler).
    """

    def __init__(self, device: str, lock_path: Path | None = None, fd: int | None = None) -> None:
        self.device = device
        self.lock_path = lock_path
        self._fd = fd

    @property
    def torch_device(self) -> torch.device:
        """The device as a ``torch.device`` (creating it does not initialise CUDA)."""
        import torch

        return torch.device(self.device)

    @property
    def held(self) -> bool:
        """True while a GPU lock is held."""
        return self._fd is not None

    def release(self) -> None:
        """Release the GPU lock (idempotent). Closing the descriptor drops the flock."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> DeviceClaim:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"DeviceClaim({self.device!r}, lock_path={self.lock_path!r}, held={self.held})"


def _open_lock(path: Path) -> int:
    # Read-write to record the holder's pid; read-only still allows flock when another user owns
    # the file. Either way the descriptor is close-on-exec (PEP 446), so child programs started
    # with exec do not inherit the claim (forked data-loader workers do, and die with the job).
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        return os.open(path, os.O_RDONLY)


def _try_lock(path: Path) -> int | None:
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    with contextlib.suppress(OSError):  # best effort: only for the message of a waiting job
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid else "unknown process"


def _safe_name(device_id: str) -> str:
    return "".join(character if character.isalnum() or character in "-_" else "_" for character in device_id)


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def claim_device(
    prefer: str = "auto",
    lock_dir: Path | None = None,
    n_cuda: int | None = None,
    *,
    jobs_per_gpu: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = 1.0,
) -> DeviceClaim:
    """Choose and claim the device of a job.

    Rules, in order: ``prefer="cpu"`` or no CUDA device -> CPU. ``CUDA_VISIBLE_DEVICES`` naming a
    single GPU (a scheduler gave this job its GPU) -> ``cuda:0``, no lock. Otherwise the first GPU
    whose lock ``lock_dir/gpu{id}.lock`` is free is claimed with a non-blocking ``flock`` (only GPU
    N for ``prefer="cuda:N"``), where id is the GPU's index, or its entry in a multi-GPU
    ``CUDA_VISIBLE_DEVICES``; if none is free the call polls every ``poll_s`` seconds up to
    ``timeout_s``.

    Args:
        prefer: ``"auto"`` (GPU if any, else CPU), ``"cuda"`` (GPU required), ``"cuda:N"`` (that
            GPU, still claimed through its lock) or ``"cpu"``.
        lock_dir: directory of the lock files, shared by all jobs of the machine
            (default ``default_lock_dir()``).
        n_cuda: pretend there are this many CUDA devices (tests on CPU: device strings are
            returned, CUDA is not touched).
        jobs_per_gpu: how many jobs may share one GPU (default ``default_jobs_per_gpu()``).
        timeout_s: how long to wait for a free GPU.
        poll_s: interval between attempts.

    Returns:
        A ``DeviceClaim``, held until ``release()``, the end of its ``with`` block or process exit.

    Raises:
        ConfigError: unknown ``prefer``, or a CUDA device asked for that does not exist.
        PipelineError: every GPU stayed claimed for ``timeout_s``.
    """
    slots = default_jobs_per_gpu() if jobs_per_gpu is None else jobs_per_gpu
    if slots < 1:
        raise ConfigError(f"jobs_per_gpu = {slots}: expected at least 1")
    wanted: int | None = None
    if prefer.startswith("cuda:") and prefer[5:].isdigit():
        wanted = int(prefer[5:])
    elif prefer not in ("auto", "cuda", "cpu"):
        raise ConfigError(f"device {prefer!r}: expected 'auto', 'cuda', 'cuda:N' or 'cpu'")
    if prefer == "cpu":
        return DeviceClaim("cpu")
    simulated = n_cuda is not None
    count = n_cuda if n_cuda is not None else _cuda_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() == "":
        count = 0  # an empty list hides every GPU, simulated or not
    if count == 0:
        if prefer != "auto":
            raise ConfigError(
                f"device {prefer!r} requested but no CUDA device is visible"
                + (" (CUDA_VISIBLE_DEVICES is empty)" if visible is not None else "")
            )
        return DeviceClaim("cpu")
    if wanted is not None and wanted >= count:
        raise ConfigError(f"device {prefer!r} requested but only {count} CUDA device(s) are visible")
    visible_ids = [entry.strip() for entry in visible.split(",") if entry.strip()] if visible is not None else []
    if len(visible_ids) == 1:
        # one GPU in the view: a scheduler (SLURM) gave it to this job alone
        return DeviceClaim(f"cuda:{wanted or 0}")
    directory = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # let other users' jobs create their lock files too
            if directory == default_lock_dir():
                directory.chmod(0o1777)
    except OSError as exc:
        raise PipelineError(f"cannot create the GPU lock directory {directory}: {exc}") from exc
    deadline = time.monotonic() + timeout_s
    candidates = list(range(count)) if wanted is None else [wanted]
    # several visible GPUs are shared with other jobs: lock them by their physical id so that jobs
    # with different views of the same machine still exclude each other
    lock_names = visible_ids[:count] if len(visible_ids) > 1 else [str(i) for i in range(count)]
    # slot by slot over the GPUs, so that every GPU gets a job before any GPU gets a second one
    locks = [
        (index, directory / (f"gpu{_safe_name(lock_names[index])}" + (f".slot{slot}" if slots > 1 else "") + ".lock"))
        for slot in range(slots)
        for index in candidates
    ]
    while True:
        for index, path in locks:
            fd = _try_lock(path)
            if fd is not None:
                if not simulated:
                    import torch

                    torch.cuda.set_device(index)  # so that bare "cuda" tensors land on it too
                return DeviceClaim(f"cuda:{index}", path, fd)
        if time.monotonic() >= deadline:
            holders = ", ".join(f"cuda:{i} by {_holder(p)}" for i, p in locks)
            raise PipelineError(
                f"no free GPU after waiting {timeout_s:g} s: all {len(locks)} slots are claimed ({holders}; lock "
                f"files in {directory}). Run at most GPUs x jobs_per_gpu ({slots}) GPU jobs at once "
                "(snakemake --resources gpu=N), or set CUDA_VISIBLE_DEVICES to choose one"
            )
        time.sleep(max(0.0, min(poll_s, deadline - time.monotonic())))


def configure_threads(threads: int) -> None:
    """Use ``threads`` CPU threads in torch (intra-op) and OpenCV, as the rule's ``threads:`` says.

    Args:
        threads: number of threads (>= 1).
    """
    if threads < 1:
        raise ConfigError(f"threads = {threads}: expected at least 1")
    import torch

    torch.set_num_threads(threads)
    try:
        import cv2
    except ImportError:  # OpenCV is only needed by preprocessing
        return
    cv2.setNumThreads(threads)


def amp_dtype(device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for a device: bf16 on CUDA where supported (no loss scaling needed,
    fp32 range), else fp16; None on the CPU (CPU autocast is slower than fp32 for these convs)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def autocast_context(device: torch.device | str, enabled: bool = True) -> Iterator[Any]:
    """``torch.autocast`` on CUDA with ``amp_dtype``; a no-op on the CPU or when disabled."""
    import torch

    dtype = amp_dtype(device) if enabled else None
    if dtype is None:
        yield None
        return
    with torch.autocast(device_type="cuda", dtype=dtype) as ctx:
        yield ctx

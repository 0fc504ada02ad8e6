"""Run a grid's cells as Ray tasks (``fer-bench run --executor ray``), for users who outgrow one machine.

The contract is the local executor's: CellSpecs in, CellResults out, in the order they finish. The driver
(the ``fer-bench run`` process) keeps the run's store; workers never touch it, so the store stays the
single source of truth and a driver killed mid-grid resumes like the local executor (finished cells are
skipped, ``running`` ones are resubmitted).

Where things live:

- Datasets: workers load them through the same adapters and decode cache, so ``--data-root`` (or
  ``$FER_BENCH_DATA``) must name a folder every node can see at the same path (a shared filesystem, or a
  copy at the same path on each node). A worker that cannot see it fails that cell at once with a message
  that says so. ``$FER_BENCH_DATA``, ``$FER_BENCH_CACHE`` and ``$FER_BENCH_WEIGHTS`` of the driver are passed
  to the workers.
- Artifacts: when a worker sees the run directory (a shared filesystem; the driver leaves a token file
  there and the worker checks it), it writes the cell folder in place, checkpoints included, so a retried
  cell resumes from its last epoch. When it does not (``--ray-address`` of a cluster with no shared
  filesystem), the cell runs in a scratch folder on the worker and the folder comes back to the driver as a
  zip with the result; the driver unpacks it into ``cells/<id>``. ``artifacts="return"`` forces that mode.
- Faults: a worker process or node that dies mid-cell makes Ray resubmit the task, at most ``retries``
  times; then the cell is recorded as failed with Ray's reason. A Python exception inside a cell is not
  retried (it would fail again): it is recorded as the local executor records it. Ctrl-C cancels the
  outstanding tasks. Every attempt is logged in ``cells/<id>/attempts.jsonl`` (shared mode) and the
  number of attempts is in the cell's info.
"""
from __future__ import annotations

import io
import json
import logging
import os
import secrets
import signal
import socket
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator

import fer_bench
from fer_bench.registry import load_plugin_sources, plugin_sources
from fer_bench.runner import CELLS_DIR, EXECUTORS, CellResult, CellSpec, execute

log = logging.getLogger(__name__)

TOKEN_FILE = ".fer_bench_ray_token"
ATTEMPTS_FILE = "attempts.jsonl"
FORWARDED_ENV = ("FER_BENCH_DATA", "FER_BENCH_CACHE", "FER_BENCH_WEIGHTS")


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError("--executor ray needs Ray, which is not installed; install it with "
                          "pip install 'fer-bench[ray]' (or use --executor local).") from None
    return ray


# --------------------------------------------------------------------------------------------------
# Worker side


def _failed(spec: CellSpec, error: str) -> CellResult:
    return CellResult(spec.cell_id, "failed", error=error, info={"host": socket.gethostname()})


def _precondition_error(spec: CellSpec) -> str:
    host = socket.gethostname()
    if spec.version != fer_bench.__version__:
        return (f"worker on {host} has fer-bench {fer_bench.__version__} but the driver {spec.version}; "
                f"install the same version on every node.")
    root = spec.data_root or os.environ.get("FER_BENCH_DATA")
    if root and not Path(root).is_dir():
        return (f"worker on {host} cannot see the data root {root}: the ray executor reads datasets from a "
                f"filesystem every node shares; mount it at the same path on each node or copy the data there.")
    return ""


def _log_attempt(cell_dir: Path) -> int:
    """Append this attempt to the cell's log; returns its number (1 for the first)."""
    cell_dir.mkdir(parents=True, exist_ok=True)
    with open(cell_dir / ATTEMPTS_FILE, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}) + "\n")
    return len((cell_dir / ATTEMPTS_FILE).read_text().splitlines())


def zip_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def unzip_into(data: bytes, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for name in zf.namelist():
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise ValueError(f"refusing to unpack {name!r} from a worker's artifact zip (path outside the cell)")
        zf.extractall(folder)


def run_cell_task(spec: CellSpec, run_dir: str, token: str, force_return: bool,
                  plugins: list[tuple[str, str]]) -> tuple[CellResult, bytes | None]:
    """One cell on a Ray worker: (result, zipped cell folder when the worker cannot see the run dir).
    The cell runs at its spec's torch threads (``execute`` sets them), as on the local executor."""
    error = _precondition_error(spec)
    if error:
        return _failed(spec, error), None
    try:
        load_plugin_sources(plugins)
    except Exception as exc:  # noqa: BLE001 (a broken plugin fails the cell, with the reason)
        return _failed(spec, f"loading --plugin files on {socket.gethostname()} failed: {type(exc).__name__}: {exc}"), None
    token_path = Path(run_dir) / TOKEN_FILE
    shared = not force_return and token_path.is_file() and token_path.read_text() == token
    if shared:
        attempt = _log_attempt(Path(run_dir) / CELLS_DIR / spec.cell_id)
        result = execute(spec, Path(run_dir))
        payload = None
    else:
        with tempfile.TemporaryDirectory(prefix="fer_bench_cell_") as scratch:
            attempt = _log_attempt(Path(scratch) / CELLS_DIR / spec.cell_id)  # lost with the worker: 1 here
            result = execute(spec, Path(scratch))
            payload = zip_folder(Path(scratch) / CELLS_DIR / spec.cell_id)
    result.info.update(executor="ray", host=socket.gethostname(), attempt=attempt,
                       artifacts_mode="shared" if shared else "returned")
    return result, payload


# --------------------------------------------------------------------------------------------------
# Driver side


class RayExecutor:
    """Submit each cell as a Ray task with the given resources; yield results as they finish.

    Args:
      address: ``None`` starts a private local Ray instance for this run (shut down at the end);
        ``"auto"`` or ``HOST:PORT`` joins a running cluster (``ray start --head`` ...).
      cpus_per_cell, gpus_per_cell: the task's resource request (``gpus_per_cell`` may be fractional);
        ``cpus_per_cell`` None: the cells' torch threads (``--threads-per-cell``), so Ray packs them as the
        local executor does.
      retries: how many times Ray resubmits a cell whose worker process or node died.
      artifacts: ``"auto"`` (in place when the worker sees the run directory, else returned) or ``"return"``.
      plugins: ``--plugin`` files to register on the workers.
      num_cpus: CPUs of a private local instance (default: all of this machine's).
    """

    def __init__(self, progress: bool | None = False, address: str | None = None, cpus_per_cell: float | None = None,
                 gpus_per_cell: float = 0, retries: int = 2, artifacts: str = "auto",
                 plugins: list[str] | tuple[str, ...] = (), num_cpus: int | None = None):
        if artifacts not in ("auto", "return"):
            raise ValueError(f"--ray-artifacts must be auto or return, not {artifacts!r}.")
        for name, value in (("--cpus-per-cell", cpus_per_cell or 0), ("--gpus-per-cell", gpus_per_cell),
                            ("--cell-retries", retries)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        self.ray = import_ray()
        self.address, self.num_cpus = address, num_cpus
        self.cpus_per_cell, self.gpus_per_cell, self.retries = cpus_per_cell, gpus_per_cell, retries
        self.force_return = artifacts == "return"
        self.plugins = plugin_sources(plugins)

    def _connect(self) -> bool:
        """Start or join Ray; True when this executor started it (and must shut it down)."""
        ray = self.ray
        if ray.is_initialized():
            return False
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        kwargs: dict[str, Any] = dict(runtime_env={"env_vars": env} if env else None, logging_level=logging.WARNING,
                                      log_to_driver=True, configure_logging=False)
        if self.address is None:
            kwargs.update(num_cpus=self.num_cpus, include_dashboard=False)
        previous = signal.getsignal(signal.SIGTERM)
        try:
            ray.init(address=self.address, **kwargs)
        except (ConnectionError, getattr(ray.exceptions, "AuthenticationError", ConnectionError)) as exc:
            raise ConnectionError(f"cannot join the Ray cluster at --ray-address {self.address} "
                                  f"({str(exc).splitlines()[0]}); start one with 'ray start --head', and if it uses "
                                  f"token authentication export RAY_AUTH_MODE=token with its token in "
                                  f"~/.ray/auth_token; or drop --ray-address for a local instance.") from None
        if callable(previous) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)  # ray.init installs its own (exit 1); keep the caller's
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus and not self.gpus_per_cell:
            log.warning("the cluster has %g GPU(s) but --gpus-per-cell is 0: cells will run on CPU", gpus)
        return True

    def _submit(self, specs: list[CellSpec], run_dir: Path) -> dict[Any, CellSpec]:
        ray = self.ray
        token = secrets.token_hex(8)
        (run_dir / TOKEN_FILE).write_text(token)
        cpus = self.cpus_per_cell if self.cpus_per_cell is not None else max(s.threads for s in specs)
        task = ray.remote(num_cpus=cpus, num_gpus=self.gpus_per_cell, max_retries=self.retries,
                          retry_exceptions=False)(run_cell_task)
        return {task.remote(spec, str(run_dir), token, self.force_return, self.plugins): spec
                for spec in specs}

    def _collect(self, ref: Any, spec: CellSpec, run_dir: Path) -> CellResult:
        ray = self.ray
        try:
            result, payload = ray.get(ref)
        except ray.exceptions.RayError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return CellResult(spec.cell_id, "failed", error=f"{type(exc).__name__} after {self.retries} Ray "
                              f"retries: {reason}", traceback=str(exc), info={"executor": "ray"})
        if payload is not None:  # artifact paths are relative to the run directory in both modes
            unzip_into(payload, run_dir / CELLS_DIR / spec.cell_id)
        return result

    def map(self, specs: list[CellSpec], run_dir: Path) -> Iterator[CellResult]:
        if not specs:
            return
        run_dir = Path(run_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        started_here = self._connect()
        outstanding: dict[Any, CellSpec] = {}
        try:
            outstanding = self._submit(specs, run_dir)
            while outstanding:
                # a bounded wait keeps the driver responsive to Ctrl-C
                ready, _ = self.ray.wait(list(outstanding), num_returns=1, timeout=0.5)
                for ref in ready:
                    yield self._collect(ref, outstanding.pop(ref), run_dir)
        finally:  # Ctrl-C, a closed generator or an error: nothing keeps running for a grid nobody reads
            for ref in outstanding:
                self.ray.cancel(ref, force=True)
            if started_here:
                self.ray.shutdown()


EXECUTORS["ray"] = RayExecutor

"""The Ray executor: same results as the local executor, worker deaths retried, driver kill resumed.

Real Ray, on this machine: a private local instance (``ray.init(num_cpus=2)``) and a real cluster on
loopback (``ray start --head --node-ip-address 127.0.0.1``), started and stopped here.
"""
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the ray executor's tests need Ray: pip install 'fer-bench[ray]'")

from fer_bench.ray_executor import ATTEMPTS_FILE, RayExecutor, run_cell_task, unzip_into, zip_folder  # noqa: E402
from fer_bench.runner import CELLS_DIR, LocalExecutor, expand_grid, run_grid  # noqa: E402
from fer_bench.store import Store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = "synthetic:size=32,n_train=240,n_val=60,n_test=90"
COST = ("seconds", "infer_ms", "memory", "images_per_s")

SLEEPY_PLUGIN = '''
import time
from fer_bench.registry import register_method
from fer_bench_methods.majority import Majority


@register_method("sleepy")
class Sleepy(Majority):
    """The majority rule after a pause: a cell long enough to kill its worker in."""

    def fit(self, train, val=None):
        time.sleep(6)
        return super().fit(train, val)
'''


def _comparable(store_path: Path) -> dict[tuple, dict[str, float]]:
    with Store(store_path) as store:
        out = {}
        for cell in store.cells():
            assert cell["status"] == "done", cell["error"]
            spec = cell["spec"]
            out[(spec["method"], spec["seed"])] = {k: v for k, v in store.metrics(cell["id"]).items()
                                                   if not any(c in k for c in COST)}
        return out


def test_local_ray_instance_gives_the_local_executors_metrics(tmp_path):
    # no thread pinning here: both executors run a cell at its spec's threads (the same default)
    specs = expand_grid(["majority", "baseline"], [TINY], [0, 1], [0.0], "test", {}, "cpu")
    run_grid(specs, tmp_path / "local", LocalExecutor())
    outcome = run_grid(specs, tmp_path / "ray", RayExecutor(num_cpus=2, artifacts="return"))
    assert sorted(outcome["done"]) == sorted(s.cell_id for s in specs)
    local, ray_ = _comparable(tmp_path / "local" / "results.sqlite"), _comparable(tmp_path / "ray" / "results.sqlite")
    assert local.keys() == ray_.keys()
    for key in local:
        assert local[key].keys() == ray_[key].keys()
        for name, value in local[key].items():
            if value is None:  # a NaN metric (e.g. majority's circumplex order) is stored as NULL on both sides
                assert ray_[key][name] is None, (key, name)
                continue
            assert ray_[key][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (key, name)
    with Store(tmp_path / "ray" / "results.sqlite") as store:  # returned artifacts were unpacked in the run dir
        for spec in specs:
            assert store.cell(spec.cell_id)["info"]["artifacts_mode"] == "returned"
            for path in store.artifacts(spec.cell_id).values():
                assert (tmp_path / "ray" / path).exists(), path


def test_worker_fails_a_cell_clearly_when_it_cannot_see_the_data_root(tmp_path):
    spec = expand_grid(["majority"], ["rafdb"], [0], [0.0], "test", {}, "cpu", data_root=str(tmp_path / "nowhere"))[0]
    result, payload = run_cell_task(spec, str(tmp_path), "token", False, [])
    assert result.status == "failed" and payload is None
    assert "cannot see the data root" in result.error and "shares" in result.error


def test_artifact_zip_round_trip_refuses_paths_outside_the_cell(tmp_path):
    (tmp_path / "a" / "sub").mkdir(parents=True)
    (tmp_path / "a" / "sub" / "x.npy").write_bytes(b"123")
    unzip_into(zip_folder(tmp_path / "a"), tmp_path / "b")
    assert (tmp_path / "b" / "sub" / "x.npy").read_bytes() == b"123"
    import io
    import zipfile
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.txt", "no")
    with pytest.raises(ValueError, match="outside the cell"):
        unzip_into(evil.getvalue(), tmp_path / "c")


# --------------------------------------------------------------------------------------------------
# A real cluster on loopback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_env(tmp_path_factory) -> dict[str, str]:
    # Token authentication, set the same on the head and every driver (Ray's docs: consistent on every node);
    # the token is generated into ~/.ray/auth_token if it is not there yet.
    return {**os.environ, "FER_BENCH_CACHE": str(tmp_path_factory.getbasetemp() / "fer_bench_cache"),
            "RAY_AUTH_MODE": "token"}


@pytest.fixture(scope="module")
def loopback_cluster(tmp_path_factory):
    port = _free_port()
    env = _cluster_env(tmp_path_factory)
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "get-auth-token", "--generate"], env=env,
                   capture_output=True, timeout=60)
    start = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--port", str(port),
             "--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false",
             "--disable-usage-stats"]
    subprocess.run(start, check=True, env=env, capture_output=True, timeout=180)
    try:
        yield f"127.0.0.1:{port}", env
    finally:
        subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], capture_output=True, timeout=120)


def _run_args(out: Path, plugin: Path, address: str, seeds: str = "0,1", methods: str = "majority,sleepy") -> list[str]:
    # majority cells are submitted first and take about a second; sleepy ones then sleep 6 s each
    return [sys.executable, "-m", "fer_bench.cli", "run", "--plugin", str(plugin), "--methods", methods,
            "--seeds", seeds, "--profile", "test", "--dataset", TINY, "--out", str(out), "--device", "cpu",
            "--executor", "ray", "--ray-address", address]


def _cells(out: Path) -> dict[str, tuple[str, str]]:
    """cell id -> (method, status) from the store, or {} before the driver created it.

    The driver creates the database file a moment before its tables, so "no such table" means "not yet" too."""
    if not (out / "results.sqlite").exists():
        return {}
    with sqlite3.connect(out / "results.sqlite", timeout=30) as db:
        try:
            rows = db.execute("SELECT id, spec, status FROM cells").fetchall()
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                return {}
            raise
    return {i: (json.loads(s)["method"], st) for i, s, st in rows}


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = predicate()
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"driver exited before {what}: {proc.communicate()}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_worker_is_retried_and_the_grid_completes(tmp_path, loopback_cluster):
    plugin = tmp_path / "sleepy.py"
    plugin.write_text(SLEEPY_PLUGIN)
    out = tmp_path / "run"
    address, env = loopback_cluster
    proc = subprocess.Popen(_run_args(out, plugin, address, seeds="0"), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        def sleepy_attempt():
            ids = [i for i, (m, _) in _cells(out).items() if m == "sleepy"]
            log = out / CELLS_DIR / ids[0] / ATTEMPTS_FILE if ids else None
            return (ids[0], log) if log is not None and log.exists() and log.read_text().strip() else None

        cell_id, log = _wait_for(sleepy_attempt, proc, "the sleepy cell to start")
        victim = json.loads(log.read_text().splitlines()[0])["pid"]
        os.kill(victim, signal.SIGKILL)  # the worker process dies mid-cell (the cell sleeps 6 s in fit)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (stdout, stderr)
    attempts = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(attempts) == 2 and attempts[1]["pid"] != victim
    with Store(out / "results.sqlite") as store:
        cells = list(store.cells())
        assert len(cells) == 2 and all(c["status"] == "done" for c in cells)
        assert store.cell(cell_id)["info"]["attempt"] == 2
        assert store.cell(cell_id)["info"]["artifacts_mode"] == "shared"
        assert store.integrity_ok()


def test_driver_killed_mid_grid_resumes_with_the_same_command(tmp_path, loopback_cluster):
    plugin = tmp_path / "sleepy.py"
    plugin.write_text(SLEEPY_PLUGIN)
    out = tmp_path / "run"
    address, env = loopback_cluster
    args = _run_args(out, plugin, address)
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:  # majority cells finish in seconds, sleepy ones take 6 s: kill the driver between the two
        _wait_for(lambda: [st for m, st in _cells(out).values() if m == "majority" and st == "done"], proc,
                  "a majority cell to finish")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = _cells(out)
    with Store(out / "results.sqlite") as store:
        finished = {c["id"]: c["finished"] for c in store.cells() if c["status"] == "done"}
    assert finished
    assert any(st == "running" for _, st in before.values())

    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, (again.stdout, again.stderr)
    assert "skip (done)" in again.stdout
    after = _cells(out)
    assert after.keys() == before.keys() and all(st == "done" for _, st in after.values())
    with Store(out / "results.sqlite") as store:
        assert store.integrity_ok()
        for cell_id, when in finished.items():  # cells finished before the kill were not run again
            assert store.cell(cell_id)["finished"] == when


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_cancels_the_outstanding_cells(tmp_path, loopback_cluster, signum):
    plugin = tmp_path / "sleepy.py"
    plugin.write_text(SLEEPY_PLUGIN.replace("time.sleep(6)", "time.sleep(60)"))
    out = tmp_path / "run"
    address, env = loopback_cluster
    # as a foreground process in a terminal: a test run started in the background (a non-interactive shell's
    # `cmd &`, some CI runners) has SIGINT ignored, which the child would inherit and Ctrl-C would not reach it
    proc = subprocess.Popen(_run_args(out, plugin, address, seeds="0", methods="sleepy"), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        logs = _wait_for(lambda: list(out.glob(f"{CELLS_DIR}/*/{ATTEMPTS_FILE}")), proc, "the cell to start")
        time.sleep(1)
        worker = json.loads(logs[0].read_text().splitlines()[0])["pid"]
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "rerun the same command to resume" in stderr
    deadline = time.time() + 30  # the cancelled task's worker process goes away; it does not sleep on
    while time.time() < deadline and Path(f"/proc/{worker}").exists():
        time.sleep(0.5)
    assert not Path(f"/proc/{worker}").exists()
    assert set(_cells(out).values()) == {("sleepy", "running")}  # left for the next run to resume

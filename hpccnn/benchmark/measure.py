"""One measurement of python -m hpccnn.bench in a process (or processes) of its own, from the side that
starts it: the worker's command (python -m hpccnn.benchmark.worker), its launch on ranks and the JSON line
it prints; and the matmul peak that utilisation is measured against."""

import json
import socket
import subprocess
import sys
import time

from hpccnn.benchmark.plans import Plan
from hpccnn.launching.launch import horovodrun_prefix, mpi_env


def matmul_peak(n=4096, repeats=5) -> float:
    """GFLOP/s of a float32 n x n matmul on all cores: the practical peak for utilisation."""
    code = (f"import time, tensorflow as tf\n"
            f"a = tf.random.normal(({n}, {n})); b = tf.random.normal(({n}, {n}))\n"
            f"(a @ b).numpy()\n"
            f"t = time.perf_counter()\n"
            f"for _ in range({repeats}): c = (a @ b)\n"
            f"c.numpy(); print('PEAK', 2 * {n}**3 * {repeats} / (time.perf_counter() - t) / 1e9)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=mpi_env(), timeout=600)
    for line in out.stdout.splitlines():
        if line.startswith("PEAK"):
            return float(line.split()[1])
    raise RuntimeError(f"matmul peak measurement failed: {out.stderr[-1000:]}")


def measure(kind, model, ranks, plan: Plan, env=None, extra=()) -> dict:
    """One measurement in its own process(es): runner kind (or interleaved) on ranks; env extra variables,
    extra more worker options (hpccnn.train settings among them: setting_args)."""
    cmd = [*worker_command(kind, model, plan), *extra]
    if ranks > 1:
        cmd = [*horovodrun_prefix(ranks), *cmd]
        cmd[cmd.index("--launched") + 1] = repr(time.time())
    if kind == "mwms" and ranks > 1:  # its workers' gRPC servers, on loopback
        env = {"HPCCNN_MWMS_PORTS": ",".join(map(str, free_ports(ranks))), **(env or {})}
    out = subprocess.run(cmd, capture_output=True, text=True, env={**mpi_env(), **(env or {})}, timeout=3600)
    try:
        return parse_result(out.stdout)
    except RuntimeError:
        raise RuntimeError(f"{kind} {model} on {ranks} rank(s) failed:\n{out.stdout[-1500:]}\n"
                           f"{out.stderr[-1500:]}") from None


def free_ports(n: int) -> list:
    """n TCP ports free on loopback now (held open together while chosen, so all differ)."""
    held = [socket.socket() for _ in range(n)]
    try:
        for s in held:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def worker_command(kind, model, plan: Plan, settings=None, allreduce=False) -> list:
    """The command of one measurement's process (each rank's, under a launcher)."""
    return [sys.executable, "-m", "hpccnn.benchmark.worker", kind, "--model", model, *plan.args(),
            "--launched", repr(time.time()), *(["--allreduce"] if allreduce else []),
            *setting_args(settings)]


def setting_args(settings=None) -> list:
    """hpccnn.train settings as a worker's options: --set=KEY=VALUE each."""
    return [f"--set={k}={v}" for k, v in (settings or {}).items()]


def parse_result(output: str) -> dict:
    """The JSON a worker printed after 'BENCH ' (rank 0's)."""
    for line in output.splitlines():
        if "BENCH " in line:
            # horovodrun interleaves the ranks' output: take the first JSON value on the line
            return json.JSONDecoder().raw_decode(line.split("BENCH ", 1)[1])[0]
    raise RuntimeError(f"no measurement in the output:\n{output[-1500:]}")

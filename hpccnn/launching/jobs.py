"""The points of a grid as submitit jobs: each point's job (TrainPoint), submitted as a SLURM job array
or run one after the other on this machine, the one-core jobs that follow an array (afterany), and
the wait for them; then grid.csv and its table."""

import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

from hpccnn.common import slurm
from hpccnn.common.files import write_json
from hpccnn.common.runs import COMPLETED
from hpccnn.launching.launch import horovodrun_command, mpi_env, train_command
from hpccnn.launching.record import read_record
from hpccnn.launching.resources import slurm_parameters
from hpccnn.launching.status import collect, driver, format_table, point_rows, progress, progress_cells
from hpccnn.training import train


class TrainPoint:
    """One grid point, pickled by submitit and called in every rank of its job.

    Under SLURM each rank is a task srun started, so the point trains in this process
    (hpccnn.train's code). Locally it runs ``horovodrun -np <ranks> python -m hpccnn.train``;
    under the debug executor it trains in the submitting process as one rank.
    """

    def __init__(self, train_args: list, launcher: str, ranks: int, workdir=None):
        self.train_args, self.launcher, self.ranks = list(train_args), launcher, ranks
        # the folder the grid was submitted from: a package.module:function model is imported from it
        self.workdir = workdir or os.getcwd()

    def command(self) -> list:
        if self.launcher == "horovodrun":
            return horovodrun_command(self.ranks, self.train_args)
        return train_command(self.train_args)

    def __call__(self):
        if self.launcher == "horovodrun":
            env = mpi_env()
            env["PYTHONPATH"] = os.pathsep.join(p for p in (self.workdir, env.get("PYTHONPATH")) if p)
            status = subprocess.run(self.command(), env=env, cwd=self.workdir).returncode
            if status != 0:
                raise RuntimeError(f"hpccnn.train under horovodrun exited with status {status}")
            return None
        if getattr(self, "workdir", None) and self.workdir not in sys.path:
            sys.path.insert(0, self.workdir)
        folder, _ = train.train(self.train_args)
        return str(folder) if folder else None


class Collect:
    """The collector job: writes grid.csv once the array has ended."""

    def __init__(self, folder):
        self.folder = str(folder)

    def __call__(self):
        collect(Path(self.folder))
        return str(Path(self.folder) / "grid.csv")


def run_points(args, record: dict, points: list, folder: Path, ranks: int, name: str):
    """Submits these points of record (each with its run_args, else train_args); grid.json kept current."""
    import submitit

    os.environ.update(mpi_env())  # sbatch exports this environment to the ranks (root may run Open MPI)
    if args.cluster == "slurm":
        executor = submitit.SlurmExecutor(folder=folder / "submitit")
        executor.update_parameters(**slurm_parameters(args, name))
        with executor.batch():
            jobs = [executor.submit(TrainPoint(p.get("run_args", p["train_args"]), "python", ranks, record.get("workdir")))
                    for p in points]
        for p, job in zip(points, jobs):
            p.update(job_id=job.job_id, log=str(job.paths.stdout).replace("%t", "0"))
        write_json(folder / "grid.json", record)
        return jobs
    # local and debug: one point at a time, each job awaited before the next starts
    executor = submitit.AutoExecutor(folder=folder / "submitit", cluster=args.cluster)
    executor.update_parameters(timeout_min=args.time_min, tasks_per_node=1, nodes=1)
    launcher = "horovodrun" if args.cluster == "local" else "python"
    record["driver"] = driver()  # --status: while this process lives, its points are pending or running
    for p in points:
        p["state"] = "PENDING"
    write_json(folder / "grid.json", record)
    jobs = []
    for p in points:
        job = executor.submit(TrainPoint(p.get("run_args", p["train_args"]), launcher, ranks, record.get("workdir")))
        print(f"hpccnn: point {p['label']}: job {job.job_id}", flush=True)
        p.update(state="RUNNING", job_id=str(job.job_id))
        write_json(folder / "grid.json", record)
        try:
            job.result()
            p["state"] = "COMPLETED"
        except Exception as err:  # the point failed; its run folder and log say why
            p["state"] = "FAILED"
            p["reason"] = str(err).strip().splitlines()[-1][:300] if str(err).strip() else type(err).__name__
        p.update(job_id=str(job.job_id), log=str(job.paths.stdout).replace("%t", "0"))
        jobs.append(job)
        write_json(folder / "grid.json", record)
    return jobs


def submit_follow_up(args, folder: Path, jobs, call, name: str):
    """A one-core job that SLURM starts once the array of jobs has ended, however it ended (afterany)."""
    import submitit

    executor = submitit.SlurmExecutor(folder=folder / "submitit")
    params = dict(job_name=name, nodes=1, ntasks_per_node=1, cpus_per_task=1, mem="1GB", time=10,
                  dependency=f"afterany:{jobs[0].job_id.split('_')[0]}")
    for key in ("partition", "account"):
        if getattr(args, key):
            params[key] = getattr(args, key)
    executor.update_parameters(**params)
    return executor.submit(call)


def wait_for_slurm(jobs, folder: Path):
    """Blocks until every array task has left SLURM's active states; prints a line for each of their
    points whose progress changed (state, epoch, validation accuracy), so that a log stays readable
    (a later rung's or a resubmission's lines are of its own points only)."""
    array_id = jobs[0].job_id.split("_")[0]
    ids = {j.job_id for j in jobs}
    shown, misses = {}, 0
    while True:
        states = slurm.job_states(array_id)
        if not states and misses < 12:  # sacct and scontrol both failed to answer: not an end, ask again
            misses += 1
            time.sleep(5)
            continue
        misses = 0
        mine = [states.get(j.job_id, states.get(array_id, "UNKNOWN")) for j in jobs]
        record = read_record(folder)
        waited = {**record, "points": [p for p in record["points"] if p.get("job_id") in ids]}
        for p in (progress(r) for r in point_rows(waited)):
            key = (p["status"], p["epoch"], p["val_accuracy"])
            if shown.get(p["point"]) != key:
                shown[p["point"]] = key
                cells = progress_cells(p)
                print(f"hpccnn: {datetime.datetime.now():%H:%M:%S} {cells[0]}: {cells[1]}, epoch {cells[2]}, "
                      f"val_acc {cells[3]}, elapsed {cells[4]}, left {cells[5]}", flush=True)
        if not any(s in slurm.ACTIVE for s in mine):
            return
        time.sleep(5)


def after_submit(args, folder: Path, jobs, final=False) -> int:
    """Once the points are submitted: on SLURM the collector job, or --wait; then grid.csv and the table.
    final: every job has ended already (the last rung of a halving grid): grid.csv and the table now."""
    if args.cluster == "slurm" and not final:
        print(f"hpccnn: submitted job array {jobs[0].job_id.split('_')[0]} ({len(jobs)} task(s))")
        if not args.wait:
            collector = submit_follow_up(args, folder, jobs, Collect(folder), "hpccnn-collect")
            print(f"hpccnn: grid.csv will be written by job {collector.job_id} when the array has ended "
                  f"(or now: python -m hpccnn.submit --collect {folder}; progress: --status {folder})")
            return 0
        wait_for_slurm(jobs, folder)
    rows = collect(folder)
    print(format_table(rows))
    print(f"hpccnn: {folder / 'grid.csv'}")
    failed = [r for r in rows if r["status"] != COMPLETED]
    if failed:
        print(f"hpccnn: {len(failed)} of {len(rows)} point(s) did not complete; logs: "
              + ", ".join(r["log"] for r in failed if r["log"]), file=sys.stderr)
    return 1 if failed else 0

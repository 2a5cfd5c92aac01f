"""sbatch slurm/*.sbatch, submitted for real to the local one-node SLURM cluster."""

import pytest

from conftest import read_json, run_folders, sbatch, wait_for

pytestmark = [pytest.mark.mpi, pytest.mark.slow]  # every job here runs 2 ranks or more (slurm: conftest)


@pytest.mark.parametrize("template", ["slurm/alexnet_cpu.sbatch", "slurm/alexnet_gpu.sbatch"])
def test_template_runs_two_ranks_on_the_local_cluster(slurm_env, tmp_path, template):
    results = tmp_path / "results"
    # The node here has 2 cores and about 20 GB; the #SBATCH defaults are for real nodes,
    # so the test scales them down on the sbatch command line as a user would (a small CNN: 2 ranks a node).
    job = sbatch(dict(slurm_env, EXPERIMENT="digits_cnn", EPOCHS="1", RESULTS_DIR=str(results)), template,
                 "--export=ALL", "--ntasks-per-node=2", "--cpus-per-task=1", "--mem=4G", "--time=15",
                 f"--output={tmp_path}/slurm-%j.out", args=["--no-save-model"])
    state = wait_for(slurm_env, job)
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert state == "COMPLETED", log[-3000:]
    (folder,) = run_folders(results)
    prov = read_json(folder / "provenance.json")
    assert prov["world_size"] == 2 and prov["launcher"] == "srun"
    assert prov["slurm"]["SLURM_JOB_ID"] == job and prov["slurm"]["SLURM_NTASKS"] == "2"
    assert read_json(folder / "metrics.json")["status"] == "completed"
    assert (folder / "slurm.out").resolve() == (tmp_path / f"slurm-{job}.out").resolve()
    # The GPUs are fake GRES devices (this machine has none), but SLURM schedules and grants
    # them for real: the GPU job gets both, the CPU job none. TensorFlow then runs on the CPU.
    expected = "gpus=0,1" if "gpu" in template else "gpus=none"
    assert expected in log, log[:2000]


def test_the_templates_run_the_users_experiment_and_grid_submitted_from_their_own_folder(slurm_env, tmp_path):
    """EXPERIMENT= and GRID= name entries of the hpccnn.toml in the folder the jobs are submitted from (not the
    repository), whose model is a module there: the templates find hpccnn_job.sh beside themselves."""
    import subprocess

    from conftest import ROOT
    from usermodels import write_mynets

    project = tmp_path / "project"
    write_mynets(project)
    (project / "hpccnn.toml").write_text('[experiments.mine]\nmodel = "mynets:small_resnet"\ndataset = "digits"\n'
                                         'model_args = { width = 4 }\n'
                                         '[grids.widths]\nexperiment = "mine"\n'
                                         'sweep = { model_args = ["width=2", "width=3"] }\n')

    def submit(template, *options, **variables):
        proc = subprocess.run(["sbatch", "--parsable", "--export=ALL", "--ntasks-per-node=2", "--cpus-per-task=1",
                               "--mem=4G", "--time=15", *options, str(ROOT / "slurm" / template), "--no-save-model"],
                              capture_output=True, text=True, timeout=60, cwd=project,
                              env=dict(slurm_env, EPOCHS="1", RESULTS_DIR="results", **variables))
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().split(";")[0]

    one = submit("alexnet_cpu.sbatch", f"--output={tmp_path}/slurm-%j.out", EXPERIMENT="mine")
    grid = submit("grid_array.sbatch", "--array=1", f"--output={tmp_path}/slurm-%A_%a.out", GRID="widths")
    assert wait_for(slurm_env, one) == "COMPLETED", (tmp_path / f"slurm-{one}.out").read_text()[-3000:]
    assert wait_for(slurm_env, f"{grid}_1") == "COMPLETED", (tmp_path / f"slurm-{grid}_1.out").read_text()[-3000:]
    (folder,) = [f for f in run_folders(project / "results") if f.name.startswith("mine-")]
    assert read_json(folder / "metrics.json")["status"] == "completed"
    assert read_json(folder / "config.json")["model_args"] == "width=4"
    assert read_json(folder / "provenance.json")["world_size"] == 2
    assert (folder / "model_source" / "mynets.py").exists()
    point = project / "results" / folder.parent.name / f"widths-job{grid}" / "01_width-3"
    assert read_json(point / "metrics.json")["status"] == "completed", sorted(project.rglob("*"))[:40]
    assert read_json(point / "config.json")["model_args"] == "width=3"

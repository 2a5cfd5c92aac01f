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


def test_a_template_runs_the_users_experiment_submitted_from_their_own_folder(slurm_env, tmp_path):
    """EXPERIMENT= names an experiment of the hpccnn.toml in the folder the job is submitted from (not the
    repository), whose model is a module there: the template finds hpccnn_job.sh beside itself."""
    import subprocess

    from conftest import ROOT
    from usermodels import write_mynets

    project = tmp_path / "project"
    write_mynets(project)
    (project / "hpccnn.toml").write_text('[experiments.mine]\nmodel = "mynets:small_resnet"\ndataset = "digits"\n'
                                         'model_args = { width = 4 }\n')
    proc = subprocess.run(["sbatch", "--parsable", "--export=ALL", "--ntasks-per-node=2", "--cpus-per-task=1",
                           "--mem=4G", "--time=15", f"--output={tmp_path}/slurm-%j.out",
                           str(ROOT / "slurm" / "alexnet_cpu.sbatch"), "--no-save-model"],
                          capture_output=True, text=True, timeout=60, cwd=project,
                          env=dict(slurm_env, EXPERIMENT="mine", EPOCHS="1", RESULTS_DIR="results"))
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    state = wait_for(slurm_env, job)
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert state == "COMPLETED", log[-3000:]
    (folder,) = run_folders(project / "results")
    assert folder.name.startswith("mine-") and read_json(folder / "metrics.json")["status"] == "completed"
    assert read_json(folder / "config.json")["model_args"] == "width=4"
    assert read_json(folder / "provenance.json")["world_size"] == 2
    assert (folder / "model_source" / "mynets.py").exists()

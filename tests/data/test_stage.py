"""python -m hpccnn.stage: real files in, a parsed cache out, nothing half-staged or overwritten."""

import tarfile

import pytest

from conftest import run_module, write_cifar10, write_galaxy10, write_mnist
from hpccnn.data import builtin
from hpccnn.data import datasets as data


@pytest.mark.slow
def test_stage_cifar10_from_the_official_tarball_layout(tmp_path):
    src = tmp_path / "src"
    write_cifar10(src / "cifar-10-batches-py", per_batch=3, test=4)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    cache = tmp_path / "cache"
    proc = run_module("hpccnn.stage", "cifar10", "--data-dir", cache, "--source", tmp_path / "cifar-10-python.tar.gz")
    assert proc.returncode == 0, proc.stderr
    assert "15 training images" in proc.stdout and "4 test images" in proc.stdout
    assert data.load("cifar10", cache).x_train.shape == (15, 32, 32, 3)
    assert not [p for p in (cache / "cifar10").iterdir() if p.name.startswith(".staging")]


def test_stage_mnist_and_galaxy10_from_local_copies(tmp_path):
    write_mnist(tmp_path / "mnist.npz", train=7, test=3)
    write_galaxy10(tmp_path / "Galaxy10.h5", n=9)
    cache = tmp_path / "cache"
    assert run_module("hpccnn.stage", "mnist", "--data-dir", cache, "--source", tmp_path / "mnist.npz").returncode == 0
    assert run_module("hpccnn.stage", "galaxy10", "--data-dir", cache, "--source", tmp_path / "Galaxy10.h5").returncode == 0
    assert data.load("mnist", cache).x_train.shape == (7, 28, 28, 1)
    assert data.load("galaxy10", cache).x_train.shape == (9, 69, 69, 3)


def test_staging_never_overwrites_without_force(tmp_path):
    write_mnist(tmp_path / "mnist.npz", train=7, test=3)
    write_mnist(tmp_path / "other.npz", train=5, test=3, seed=1)
    cache = tmp_path / "cache"
    run_module("hpccnn.stage", "mnist", "--data-dir", cache, "--source", tmp_path / "mnist.npz")
    before = builtin.mnist_file(cache).read_bytes()
    proc = run_module("hpccnn.stage", "mnist", "--data-dir", cache, "--source", tmp_path / "other.npz")
    assert proc.returncode == 2 and "already exists; pass --force" in proc.stderr
    assert builtin.mnist_file(cache).read_bytes() == before
    proc = run_module("hpccnn.stage", "mnist", "--data-dir", cache, "--source", tmp_path / "other.npz", "--force")
    assert proc.returncode == 0 and data.load("mnist", cache).x_train.shape[0] == 5


def test_a_file_that_does_not_parse_is_not_staged(tmp_path):
    (tmp_path / "mnist.npz").write_bytes(b"not a zip file")
    cache = tmp_path / "cache"
    proc = run_module("hpccnn.stage", "mnist", "--data-dir", cache, "--source", tmp_path / "mnist.npz")
    assert proc.returncode == 2 and "does not parse as mnist" in proc.stderr
    assert not cache.exists()  # not even the empty folders staging made


@pytest.mark.slow
def test_without_internet_the_download_fails_with_the_offline_alternative(tmp_path):
    proc = run_module("hpccnn.stage", "mnist", "--data-dir", tmp_path / "cache", timeout=300)
    assert proc.returncode == 2
    assert "could not download mnist" in proc.stderr and "--source" in proc.stderr
    assert not (tmp_path / "cache").exists()


def test_digits_needs_no_staging():
    proc = run_module("hpccnn.stage", "digits")
    assert proc.returncode == 2 and "ships with scikit-learn" in proc.stderr

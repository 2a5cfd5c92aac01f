"""python -m hpccnn.stage DATASET: puts a data set into the cache that training reads.

Run it where there is internet (a login node), or give --source, a copy you already
have; compute nodes then train from the cache without ever downloading.
"""

import argparse
import dataclasses
import re
import shutil
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

import numpy as np

from hpccnn.common.errors import Parser, UserError, cli, command_prog
from hpccnn.data import builtin, datasets, pack, userdata
from hpccnn.data.base import default_data_dir

ORIGINS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "mnist": "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
    "galaxy10": "https://www.astro.utoronto.ca/~bovy/Galaxy10/Galaxy10.h5",
}
TARGETS = {"cifar10": builtin.cifar10_folder, "mnist": builtin.mnist_file,
           "fashion_mnist": builtin.fashion_mnist_file, "galaxy10": builtin.galaxy10_file}
IDX_HELP = f"a folder with the four IDX files ({', '.join(builtin.IDX_FILES.values())}, each may be .gz)"
SOURCE_HELP = {
    "cifar10": "cifar-10-python.tar.gz or its extracted cifar-10-batches-py folder",
    "mnist": f"mnist.npz (keys x_train, y_train, x_test, y_test) or {IDX_HELP}",
    "fashion_mnist": IDX_HELP,
    "galaxy10": "Galaxy10.h5 (keys images, ans)",
}
# Debian's package dataset-fashion-mnist (scripts/install_system.sh installs it): Zalando's IDX files
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_SETS = ("mnist", "fashion_mnist")  # data sets staged from IDX folders into one .npz


def _download(name: str, folder: Path) -> Path:
    import tensorflow as tf

    try:  # Keras' downloader: resumes, and checks the file hash where Keras knows it
        return Path(tf.keras.utils.get_file(Path(ORIGINS[name]).name, ORIGINS[name], cache_dir=str(folder),
                                            cache_subdir="download"))
    except Exception as err:
        raise UserError(f"could not download {name} from {ORIGINS[name]} ({type(err).__name__}); on a machine "
                        f"without internet copy {SOURCE_HELP[name]} here and pass it with --source") from None


def unpack(name: str, source: Path, tmp: Path, staged: Path) -> None:
    """source into the staging folder tmp (an archive unpacked), or a UserError if it can't be read."""
    try:
        if name == "cifar10" and source.is_file():
            with tarfile.open(source) as tar:
                tar.extractall(tmp, filter="data")
        elif name in IDX_SETS and source.is_dir():
            idx_to_npz(source, staged, name)
        elif source.is_dir():
            shutil.copytree(source, staged)
        else:
            shutil.copyfile(source, staged)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:  # damaged, truncated, not a tar.gz at all
        what = {tarfile.ReadError: "not a tar archive, or a damaged one", EOFError: "it ends too early: truncated?",
                tarfile.FilterError: "a member would land outside the archive's folder"}
        problem = next((text for kind, text in what.items() if isinstance(err, kind)), f"{type(err).__name__}: {err}")
        raise UserError(f"{source} can't be read as {name} ({problem}); expected {SOURCE_HELP[name]}; "
                        f"nothing was staged") from None


def parsed(name: str, source: Path, check: Path):
    """The data set staged under check, loaded; a UserError that speaks of source if it doesn't parse."""
    try:
        return datasets.load(name, check)
    except UserError as err:  # load's own words name the temporary copy; say it of the source
        text = str(err)
        found = re.search(r"is unreadable \((.*)\); stage it|has (.*?); stage it|: (\S+) is missing; stage it", text)
        problem = next((g for g in found.groups() if g), "") if found else text
        if found and found.group(3):  # a file the archive or folder lacks, named inside it
            problem = f"{Path(problem).relative_to(TARGETS[name](check).parent)} is missing"
    except Exception as err:
        problem = type(err).__name__
    raise UserError(f"{source} does not parse as {name} ({problem}); expected {SOURCE_HELP[name]}; nothing was staged")


def stage(name: str, data_dir: Path, source: Path | None = None, force=False) -> Path:
    """Copies (or downloads) name into data_dir; returns the staged path. Never half-staged."""
    if name in ("digits", "synthetic"):
        raise UserError(f"{name} needs no staging: it ships with scikit-learn / is generated")
    if name not in TARGETS:
        raise UserError(f"unknown dataset {name!r}; stageable: {', '.join(TARGETS)}")
    target = TARGETS[name](data_dir)
    if target.exists() and not force:
        raise UserError(f"{target} already exists; pass --force to replace it")
    if source is not None and not source.exists():
        raise UserError(f"--source {source} does not exist")
    if name == "fashion_mnist" and source is None:
        if not DEBIAN_FASHION_MNIST.is_dir():
            raise UserError(f"fashion_mnist is staged offline from Debian's package, and {DEBIAN_FASHION_MNIST} is "
                            f"missing: apt-get install dataset-fashion-mnist, or pass --source with {IDX_HELP}")
        source = DEBIAN_FASHION_MNIST
    made = [p for p in (target.parent, *target.parent.parents) if not p.exists()]  # deepest first
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".staging-") as tmp:
            tmp = Path(tmp)
            source = source or _download(name, tmp)
            staged = tmp / target.name
            unpack(name, source, tmp, staged)
            check = tmp / "check"
            check.mkdir()
            TARGETS[name](check).parent.mkdir(parents=True, exist_ok=True)
            TARGETS[name](check).symlink_to(staged.resolve())
            raw = parsed(name, source, check)  # parsed before it counts as staged
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            staged.rename(target)
    except BaseException:  # leave no empty cache folders behind either
        for folder in made:
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    print(f"hpccnn: staged {name}: {len(raw.x_train)} training images of {raw.x_train.shape[1:]}"
          f"{'' if raw.x_test is None else f', {len(raw.x_test)} test images'} in {target}")
    return target


def idx_to_npz(folder: Path, npz: Path, name: str) -> None:
    """MNIST's four IDX files as the .npz training reads (keras.datasets.mnist's keys), or a UserError."""
    try:
        arrays = builtin.read_idx_folder(folder)
    except UserError as err:
        raise UserError(f"{folder} does not parse as {name} ({err}); nothing was staged") from None
    # a damaged or truncated gzip raises OSError or EOFError: unpack says so, as of any file it can't read
    with open(npz, "wb") as f:
        np.savez_compressed(f, **arrays)


IMAGENETTE_CLASSES = {  # Imagenette's ten ImageNet classes, by the WordNet ids its folders are named with
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player", "n03000684": "chain saw",
    "n03028079": "church", "n03394916": "French horn", "n03417042": "garbage truck", "n03425413": "gas pump",
    "n03445777": "golf ball", "n03888605": "parachute"}


def stage_imagenette(source: Path | None, job: pack.Packing) -> Path:
    """Imagenette (seed 004's optional data set) from its archive (imagenette2-320.tgz, or the folder it unpacks
    to): its ten classes by name and its own train/val split, packed as the pack 'imagenette' into job's data
    cache, as job says (its shards, --force, --skip-bad-images)."""
    data_dir = job.data_dir
    if source is None or not source.exists():
        raise UserError("imagenette is staged from its archive: download imagenette2-320.tgz (fast.ai's, about 330 MB) "
                        "where there is internet and pass it with --source")
    data_dir.mkdir(parents=True, exist_ok=True)
    root = unpacked(source, data_dir) if source.is_file() else source
    found = [p.parent for p in sorted(root.rglob("train")) if p.is_dir() and (p.parent / "val").is_dir()]
    if not found:
        raise UserError(f"{source} holds no train/ and val/ folders as Imagenette has; nothing was staged")
    unknown = sorted({p.name for p in (found[0] / "train").iterdir() if p.is_dir()} - set(IMAGENETTE_CLASSES))
    if unknown:
        raise UserError(f"{source}: class folder {unknown[0]} is not one of Imagenette's ten; nothing was staged")
    folder = pack.pack(dataclasses.replace(job, path=found[0], name="imagenette", class_names=IMAGENETTE_CLASSES,
                                           again=f"imagenette --source {source.resolve()}"))
    if root != source:
        shutil.rmtree(root)  # kept until the pack is whole: an interrupted pack goes on from the same files
    return folder


def unpacked(archive: Path, data_dir: Path) -> Path:
    """The archive unpacked into DATA_DIR/.imagenette.unpacked/ once: kept, with the archive's size and time, until
    its pack is whole, so that packing interrupted goes on from the same files (pack.pack's plan names them)."""
    root = data_dir / ".imagenette.unpacked"
    stat = archive.stat()
    stamp = f"{archive.resolve()} {stat.st_size} {stat.st_mtime_ns}"
    if (root / ".complete").is_file() and (root / ".complete").read_text() == stamp:
        return root
    shutil.rmtree(root, ignore_errors=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    except (tarfile.TarError, EOFError, OSError) as err:
        shutil.rmtree(root, ignore_errors=True)
        raise UserError(f"{archive} can't be read as imagenette ({type(err).__name__}: {err}); expected "
                        f"imagenette2-320.tgz; nothing was staged") from None
    (root / ".complete").write_text(stamp)
    return root


def stage_path(path: Path, args) -> Path:
    """A user's data set (a folder of images, an .npz or HDF5 file) checked and packed; or Imagenette."""
    if args.shards is not None and args.shards <= 0:
        raise UserError(f"--shards must be a positive integer, got {args.shards}")
    job = pack.Packing(path, args.name or path.resolve().stem, args.data_dir, args.shards, args.force,
                       skip_bad_images=args.skip_bad_images, hdf5_images=args.hdf5_images or "",
                       hdf5_labels=args.hdf5_labels or "")
    if args.dataset == "imagenette":
        folder = stage_imagenette(args.source, job)
    else:
        name = job.name
        if (not name or not all(c.isalnum() or c in "_-." for c in name) or name.startswith(".")
                or name.lower().endswith(userdata.FILE_SUFFIXES) or name in builtin.DATASETS):
            raise UserError(f"--name {name!r}: a pack's name is letters, digits, _ - . (not first), not ending in "
                            f"{', '.join(userdata.FILE_SUFFIXES)}, and not a built-in data set's; give --name NAME")
        folder = pack.pack(job)
    index = pack.read_index(folder)
    counts = ", ".join(f"{s['count']:,} {split}" for split, s in index["splits"].items())
    print(f"hpccnn: staged pack {index['name']}: {counts} images of {len(index['classes'])} classes in "
          f"{sum(len(s['shards']) for s in index['splits'].values())} shards, {folder}"
          + (f"; {len(index['skipped'])} unreadable files skipped (index.json lists them)" if index["skipped"] else "")
          + f"; train with --dataset {index['name']}")
    return folder


def build_parser() -> Parser:
    p = Parser(prog=command_prog("stage"), description=__doc__.split("\n\n")[0],
               formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="example: python -m hpccnn.stage mnist\ndocs: docs/data.md")
    p.add_argument("dataset", help=f"{', '.join(TARGETS)}, imagenette, or your own: a folder of images in class "
                                   f"subfolders, an .npz or HDF5 file, checked and packed")
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--source", type=Path, default=None,
                   help="a local copy instead of downloading (fashion_mnist: default Debian's " + str(DEBIAN_FASHION_MNIST) + ")")
    p.add_argument("--force", action="store_true", help="replace an already staged copy")
    p.add_argument("--name", default=None, help="your data set's name as a pack (default: the folder's or file's)")
    p.add_argument("--shards", type=int, default=None, help="shards per split (default: about 128 MB each, the "
                                                            "training split at least 8)")
    p.add_argument("--skip-bad-images", action="store_true", help="pack the readable images and list the others "
                                                                   "in index.json, instead of stopping")
    p.add_argument("--hdf5-images", default=None, help="an HDF5 file's images dataset (default: images, or x)")
    p.add_argument("--hdf5-labels", default=None, help="an HDF5 file's labels dataset (default: ans or labels, or y)")
    return p


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.dataset == "imagenette" or (args.dataset not in TARGETS and args.dataset not in ("digits", "synthetic")
                                        and (userdata.is_path(args.dataset) or Path(args.dataset).exists())):
        stage_path(Path(args.dataset), args)
        return 0
    stage(args.dataset, args.data_dir, args.source, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark's result files: name.csv and name.md, whose text says when and on what machine it was
measured."""

import csv
import datetime
import os
from pathlib import Path

from hpccnn.common import tables
from hpccnn.training.dist import cpu_model_and_flags


def document(intro: str, columns, rows, after="") -> str:
    """name.md's text: a sentence (intro) after the date and the machine, the table of columns, then after."""
    return (f"Measured {datetime.datetime.now():%Y-%m-%d %H:%M} on {machine()}{intro}\n\n"
            + tables.markdown(*tables.cells(columns, rows)) + after)


def write(out_dir: Path, name: str, rows, md: str, fresh=True) -> str:
    """name.csv and name.md (md, made by document) in out_dir, a new folder (never an existing one) unless
    not fresh (the run's own, made at its start); returns md."""
    out_dir.mkdir(parents=True, exist_ok=not fresh)
    write_tables(out_dir, name, rows, md)
    return md


def write_tables(out_dir: Path, name: str, rows, md):
    """name.csv and name.md in the folder out_dir."""
    write_csv(out_dir / f"{name}.csv", rows)
    (out_dir / f"{name}.md").write_text(md)


def write_csv(path: Path, rows):
    """rows (dicts alike) as a CSV file with a header."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def machine() -> str:
    """This machine in a few words: cores, CPU model and its widest vector unit, memory."""
    name, flags = cpu_model_and_flags()
    vector = next((v for v, flag in (("AVX-512 with BF16", "avx512_bf16"), ("AVX-512", "avx512f"), ("AVX2", "avx2"))
                   if flag in flags), "no AVX2")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return f"{os.cpu_count()} cores of {name} ({vector}), {memory:.0f} GB"

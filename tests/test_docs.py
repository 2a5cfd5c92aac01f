"""Every command in the manual works as typed (issue 36): README.md's and docs/'s ```sh blocks, read line by line.

- ``python -m hpccnn.X ...`` (also under an environment prefix, horovodrun, mpirun or srun) and ``hpccnn X ...``:
  the module exists, and the command's own parser (its build_parser()) takes the arguments as shown. The same for
  the hpccnn commands quoted inline in the text (`python -m hpccnn.X ...`). Nothing that trains, stages, benchmarks
  or reads results runs: those are parsed only.
- What needs no cluster and no staged data runs: every ``python -m hpccnn.submit --grid/--experiment`` line as a
  dry run (``--dry-run`` added where the line has none, the grid folder under a temporary --results-dir, the
  block's own heredoc files such as mynets.py and hpccnn.toml in its folder), and the ``--list`` lines.
- An experiment named (``--experiment``, sbatch's ``EXPERIMENT=``) is a built-in one or one the docs define.
- ``sbatch slurm/X.sbatch ARGS``: ARGS go to hpccnn.train (slurm/hpccnn_job.sh), so its parser takes them.
- ``make T``: the Makefile has target T; ``scripts/X.sh ... --opt``: the script reads --opt.
- Every scripts/... and slurm/... path, in a block or in the text, exists in the repository.
"""

import contextlib
import importlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import ROOT
from hpccnn.cli import COMMANDS
from hpccnn.common.errors import UserError

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL_FENCES = {"sh", "bash", "shell"}
LAUNCHERS = {"horovodrun", "mpirun", "mpiexec", "srun", "env", "time", "nohup", "exec", "sudo"}
PLACEHOLDER = "PLACEHOLDER"  # what a $(...) or `...` substitution stands for when parsed
# inline commands in the text left unparsed, each for its reason (keyed by the command as written)
SKIPPED = {
    "python -m hpccnn.submit --collect": "prose: the option is named, its GRID_FOLDER is the sentence's ('on that "
                                         "folder')",
}
# Found when this test was written (2026-12-07): 113 hpccnn commands with arguments (79 in sh blocks, 34 in the
# text's inline code; besides 13 bare command names in the text), 29 scripts/ and slurm/ paths. A broken extractor
# must not pass by finding nothing: at least about 90% of those (lower these when the docs drop commands).
MIN_COMMANDS, MIN_BLOCK_COMMANDS, MIN_PATHS = 101, 71, 26
RUN_TIMEOUT = 120


@dataclass
class Command:
    where: str  # docs/slurm.md:37
    text: str  # the simple command as written (after joining continuation lines)
    words: list
    inline: bool = False  # from the text's `...` rather than a ```sh block


@dataclass
class Doc:
    path: Path
    commands: list = field(default_factory=list)
    paths: list = field(default_factory=list)  # (where, path as written)
    heredocs: dict = field(default_factory=dict)  # file name -> text, as the blocks write them


# ---------------------------------------------------------------------------------------------- extraction

def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def substituted(line: str) -> str:
    """$(...) (nested too) and `...` replaced by PLACEHOLDER: their |, ( and ) are not the line's own."""
    out, i = [], 0
    while i < len(line):
        if line.startswith("$(", i):
            depth, j = 1, i + 2
            while j < len(line) and depth:
                depth += {"(": 1, ")": -1}.get(line[j], 0)
                j += 1
            out.append(PLACEHOLDER)
            i = j
        elif line[i] == "`":
            j = line.find("`", i + 1)
            out.append(PLACEHOLDER)
            i = len(line) if j < 0 else j + 1
        else:
            out.append(line[i])
            i += 1
    return "".join(out)


def simple_commands(line: str) -> list:
    """A shell line's simple commands, each a list of words: comments gone, split at ; && || | &, redirections
    (> file, < file) dropped."""
    lex = shlex.shlex(substituted(line), posix=True, punctuation_chars=True)
    lex.whitespace_split, lex.commenters = True, "#"
    commands, words, tokens = [], [], list(lex)
    skip_next = False
    for token in tokens:
        if skip_next:
            skip_next = False
        elif token in (";", "&&", "||", "|", "&", ";;"):
            commands.append(words)
            words = []
        elif token and set(token) <= set("<>&"):
            skip_next = token not in ("<<", "<<-")  # a heredoc's word is read by logical_lines
        elif token not in ("(", ")"):
            words.append(token)
    return [w for w in [*commands, words] if w]


HEREDOC = re.compile(r"<<-?\s*(['\"]?)(\w+)\1")
WRITES = re.compile(r"\bcat\s*>\s*(\S+)")


def logical_lines(lines: list, start: int, doc: Doc):
    """(line number, text) of a block's lines: continuations joined, heredoc bodies kept in doc.heredocs."""
    i = 0
    while i < len(lines):
        number, text = start + i, lines[i]
        while text.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text.rstrip()[:-1] + " " + lines[i].strip()
        i += 1
        heredoc = HEREDOC.search(text)
        if heredoc:
            body = []
            while i < len(lines) and lines[i].strip() != heredoc.group(2):
                body.append(lines[i])
                i += 1
            i += 1  # the terminator
            target = WRITES.search(text[:heredoc.start()])
            if target:
                doc.heredocs[target.group(1)] = "\n".join(body) + "\n"
            text = text[:heredoc.start()]
        yield number, text


def sh_blocks(lines: list):
    """(first line number, lines) of each shell block of a markdown file's lines."""
    block, fence = None, None
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if block is None and stripped.startswith("```"):
            fence = stripped[3:].strip().split()[0] if stripped[3:].strip() else ""
            block = (number + 1, [])
        elif block is not None and stripped.startswith("```"):
            if fence in SHELL_FENCES:
                yield block
            block = None
        elif block is not None:
            block[1].append(line)


def in_blocks(lines: list) -> set:
    """Line numbers inside a fenced block (any language)."""
    inside, numbers = False, set()
    for number, line in enumerate(lines, 1):
        if line.strip().startswith("```"):
            inside = not inside
        elif inside:
            numbers.add(number)
    return numbers


INLINE = re.compile(r"`([^`]+)`")
PATH = re.compile(r"(?<![\w./~$-])(?:\./)?(?:scripts|slurm)/[\w.-]+(?:/[\w.-]+)*")


def read_doc(path: Path) -> Doc:
    doc, lines = Doc(path), path.read_text().splitlines()
    for start, block in sh_blocks(lines):
        for number, text in logical_lines(block, start, doc):
            for words in simple_commands(text):
                doc.commands.append(Command(f"{rel(path)}:{number}", text.strip(), words))
    blocks = in_blocks(lines)
    for number, line in enumerate(lines, 1):
        doc.paths += [(f"{rel(path)}:{number}", m.group(0).rstrip(".")) for m in PATH.finditer(line)]
        if number in blocks:
            continue
        for span in INLINE.findall(line):
            words = shlex.split(substituted(span), comments=False) if _balanced(span) else None
            if words and hpccnn_command(words):
                doc.commands.append(Command(f"{rel(path)}:{number}", span, words, inline=True))
    return doc


def _balanced(span: str) -> bool:
    try:
        shlex.split(span)
        return True
    except ValueError:  # an inline span with a lone quote is prose, not a command
        return False


# ------------------------------------------------------------------------------------ what a command is

def name(word: str) -> str:
    return word.rsplit("/", 1)[-1]


def hpccnn_command(words: list):
    """(module, arguments, console) of a python -m hpccnn.X or (console) hpccnn X command, behind any prefix;
    else None."""
    for i, word in enumerate(words):
        if re.fullmatch(r"python(3(\.\d+)?)?", name(word)):
            j = i + 1
            while j < len(words) and words[j].startswith("-") and words[j] != "-m":
                j += 1  # python's own options (-u, -X ...)
            if j + 1 < len(words) and words[j] == "-m" and words[j + 1].split(".")[0] == "hpccnn":
                return words[j + 1], words[j + 2:], False
    command = [w for w in words if not re.match(r"[A-Za-z_]\w*=", w)]  # without the environment prefix
    for i, word in enumerate(command):
        if name(word) == "hpccnn" and (i == 0 or name(command[0]) in LAUNCHERS):
            sub = command[i + 1] if i + 1 < len(command) else ""
            return ("hpccnn.cli" if sub in ("", "-h", "--help") else f"hpccnn.{sub}"), command[i + 2:], True
    return None


def parser_for(module: str):
    """The command's build_parser: each of the hpccnn command's five must have one ("missing" if it hasn't);
    another module's, its main's module's (None for a module that has no command line of its own)."""
    short = module.removeprefix("hpccnn.")
    if short in COMMANDS:
        return getattr(COMMANDS[short], "build_parser", "missing")
    main = getattr(importlib.import_module(module), "main", None)
    return getattr(sys.modules[main.__module__], "build_parser", None) if main else None


def parsed(module: str, args: list):
    """(namespace, None) if the command's parser takes args, else (None, what it said)."""
    build = parser_for(module)
    if build == "missing":
        return None, f"{COMMANDS[module.removeprefix('hpccnn.')].__name__} has no build_parser()"
    if build is None:
        return None, None
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            return build().parse_args(args), None
    except SystemExit as exit:  # --help, or a parser that exits on errors
        return None, None if exit.code == 0 else (out.getvalue().strip().splitlines() or ["exit 2"])[-1]
    except UserError as err:  # hpccnn's Parser: a usage error is a UserError
        return None, str(err)


def known_experiments(docs) -> set:
    """The built-in experiments and those the docs' hpccnn.toml heredocs define."""
    from hpccnn.models.experiments import EXPERIMENTS

    names = set(EXPERIMENTS)
    for doc in docs:
        for file, text in doc.heredocs.items():
            if file.endswith(".toml"):
                names |= set(tomllib.loads(text).get("experiments", {}))
    return names


# -------------------------------------------------------------------------------------------- the checks

def check_hpccnn(cmd: Command, experiments: set, runs: list) -> list:
    """What is wrong with a python -m hpccnn.X / hpccnn X command; runnable ones appended to runs."""
    module, args, console = hpccnn_command(cmd.words)
    problem = console_script_problem(module) if console else None
    if problem:
        return [problem]
    if importlib.util.find_spec(module) is None:
        return [f"no module {module}"]
    if cmd.inline and not args or cmd.text in SKIPPED:
        return []  # a command named in the text, not a command line
    namespace, error = parsed(module, args)
    if error:
        return [error]
    if namespace is None:
        return []
    wrong = []
    experiment = getattr(namespace, "experiment", None)
    if module == "hpccnn.train" and experiment and experiment not in experiments:
        wrong.append(f"--experiment {experiment}: no such experiment (built in, or in the docs' hpccnn.toml)")
    if not cmd.inline and runnable(module, namespace):
        runs.append((cmd, module, args))
    return wrong


def console_script_problem(module: str):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text()).get("project", {}).get("scripts", {})
    if "hpccnn" not in scripts:
        return "pyproject.toml declares no console script hpccnn"
    short = module.removeprefix("hpccnn.")
    if module != "hpccnn.cli" and short not in importlib.import_module("hpccnn.cli").COMMANDS:
        return f"hpccnn has no command {short!r}"
    return None


def runnable(module: str, namespace) -> bool:
    """Needs no cluster, no staged data, no training: --list, and submit's dry run of a grid or experiment."""
    if getattr(namespace, "list", False) and module.split(".")[-1] in ("train", "submit"):
        return True
    return module.endswith("submit") and bool(namespace.grid or namespace.experiment) and not namespace.data_dir


def check_sbatch(cmd: Command, experiments: set) -> list:
    """sbatch [options] slurm/X.sbatch ARGS: ARGS are hpccnn.train's (slurm/hpccnn_job.sh passes them on)."""
    scripts = [i for i, w in enumerate(cmd.words) if w.endswith(".sbatch")]
    if not scripts:
        return []
    wrong = []
    _, error = parsed("hpccnn.train", cmd.words[scripts[0] + 1:])
    if error:
        wrong.append(f"the arguments after {cmd.words[scripts[0]]} (hpccnn.train's): {error}")
    for word in cmd.words[1:scripts[0]]:
        found = re.search(r"(?:^--export=|,)EXPERIMENT=([^,]+)", word)
        if found and found.group(1) not in experiments:
            wrong.append(f"EXPERIMENT={found.group(1)}: no such experiment")
    return wrong


def check_make(cmd: Command) -> list:
    makefile = (ROOT / "Makefile").read_text()
    targets = [w for w in cmd.words[1:] if not w.startswith("-") and "=" not in w]
    return [f"the Makefile has no target {t}" for t in targets
            if not re.search(rf"^{re.escape(t)}\s*:", makefile, re.M)]


def check_script(cmd: Command) -> list:
    """scripts/X.sh ... --opt: the script reads each option it is shown with."""
    script = ROOT / cmd.words[0].removeprefix("./")
    if not script.is_file() or script.suffix != ".sh":
        return []  # a missing script is said by the paths' check
    text = script.read_text()
    return [f"{cmd.words[0]} reads no option {w}" for w in cmd.words[1:] if w.startswith("--")
            and not re.search(rf"{re.escape(w.split('=')[0])}\b", text)]


def check_command(cmd: Command, experiments: set, runs: list) -> list:
    words = [w for w in cmd.words if not re.match(r"[A-Za-z_]\w*=", w)] or [""]
    if hpccnn_command(cmd.words):
        return check_hpccnn(cmd, experiments, runs)
    if name(words[0]) == "sbatch":
        return check_sbatch(Command(cmd.where, cmd.text, words), experiments)
    if words[0] == "make":
        return check_make(Command(cmd.where, cmd.text, words))
    if PATH.fullmatch(words[0]):
        return check_script(Command(cmd.where, cmd.text, words))
    return []


def run_all(runs: list, doc: Doc, tmp_path: Path) -> list:
    """The runnable commands run (submit's with --dry-run), in a folder holding the doc's heredoc files."""
    for file, text in doc.heredocs.items():
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / file).write_text(text)
    stand_ins = tmp_path / ".stand-ins"  # scontrol: no cluster to ask (MaxArraySize unknown, as off a cluster)
    stand_ins.mkdir()
    (stand_ins / "scontrol").write_text("#!/bin/sh\necho 'no cluster here' >&2\nexit 1\n")
    (stand_ins / "scontrol").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("HPCCNN_CONFIG", "SLURM_CONF")}
    env["PATH"] = f"{stand_ins}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    results = tmp_path / "results"
    unique = {}
    for cmd, module, args in runs:
        full = list(args)
        if module.endswith("submit") and "--list" not in args:
            full += [*(["--dry-run"] if "--dry-run" not in args else []), "--results-dir", str(results)]
        key = tuple(a for a in [module, *full] if a != "--wait")  # a dry run returns before any wait
        unique.setdefault(key, (full, []))[1].append(cmd)

    def run(key):
        try:
            return subprocess.run([sys.executable, "-m", key[0], *unique[key][0]], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired as err:
            return subprocess.CompletedProcess(err.cmd, -1, "", f"timed out after {RUN_TIMEOUT} s")

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        procs = dict(zip(unique, pool.map(run, unique)))
    wrong = []
    for key, proc in procs.items():
        dry = "--dry-run" in key
        if proc.returncode != 0 or dry and "nothing was submitted" not in proc.stdout:
            said = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
            ran = shlex.join(["python", "-m", key[0], *unique[key][0]])
            wrong += [f"{cmd.where}: {cmd.text}\n    run as {ran}: exit {proc.returncode}: " + " | ".join(said)
                      for cmd in unique[key][1]]
    if results.exists() and any(results.rglob("*")):
        wrong.append(f"a dry run wrote into --results-dir: {sorted(map(str, results.rglob('*')))[:5]}")
    return wrong


# ---------------------------------------------------------------------------------------------- the tests

@pytest.fixture(scope="module")
def docs():
    return {rel(path): read_doc(path) for path in DOCS}


@pytest.mark.parametrize("doc_file", [rel(p) for p in DOCS])
def test_every_command_works_as_typed(doc_file, docs, tmp_path):
    doc, experiments, runs, wrong = docs[doc_file], known_experiments(docs.values()), [], []
    for cmd in doc.commands:
        wrong += [f"{cmd.where}: {cmd.text}\n    {problem}" for problem in check_command(cmd, experiments, runs)]
    if runs:
        wrong += run_all(runs, doc, tmp_path)
    assert not wrong, f"{len(wrong)} command(s) of {doc_file} do not work as typed:\n" + "\n".join(wrong)


@pytest.mark.parametrize("doc_file", [rel(p) for p in DOCS])
def test_every_scripts_and_slurm_path_exists(doc_file, docs):
    missing = [f"{where}: {path}" for where, path in docs[doc_file].paths
               if not any(Path(p).exists() for p in [ROOT / path, *ROOT.glob(path)])]
    assert not missing, f"{doc_file} names paths the repository does not have:\n" + "\n".join(missing)


def test_the_extractor_finds_the_commands(docs):
    def counts(doc):  # hpccnn commands with arguments, in blocks and inline; scripts/ and slurm/ paths
        found = [c for c in doc.commands if hpccnn_command(c.words) and hpccnn_command(c.words)[1]]
        return sum(not c.inline for c in found), sum(c.inline for c in found), len(doc.paths)

    each = {f: counts(d) for f, d in docs.items()}
    in_blocks_, inline, paths = map(sum, zip(*each.values()))
    assert in_blocks_ + inline >= MIN_COMMANDS and in_blocks_ >= MIN_BLOCK_COMMANDS and paths >= MIN_PATHS, \
        f"too few found: {in_blocks_} + {inline} commands, {paths} paths (per file: {each})"
    # the shapes the extractor must see through: a launcher prefix, a quoted $(...), a heredoc's body left out
    texts = [c.text for d in docs.values() for c in d.commands if not c.inline]
    assert any(t.startswith("horovodrun") for t in texts) and any("$(" in t for t in texts), texts
    assert not any(c.words[0] in ("from", "def", "return", "[grids.resnet_widths]")
                   for d in docs.values() for c in d.commands), "a heredoc's body was read as commands"
    stale = set(SKIPPED) - {c.text for d in docs.values() for c in d.commands}
    assert not stale, f"SKIPPED names commands the docs no longer have: {stale}"

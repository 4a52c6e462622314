"""The README and the guides stay true: every command parses, every file named exists, every link resolves.

What is checked, without running anything heavy (no training, no model):
- README.md is at most 250 lines.
- Every `python X.py ...`, `torchrun ... X.py ...`, `make ...`, `streamlit run ...` and `bash X.sh` command in a
  code block of README.md, BENCHMARKS.md and docs/*.md: the script exists; each flag it uses is an exact option
  of that script's argparse parser (argparse itself would accept an abbreviation such as `--vid-strid`); the
  whole command line parses; `train.py` commands resolve through `config.load_config`, env vars included.
- Every repository file or folder README.md names (in code spans and commands) exists. The Layout section is
  skipped: it describes the layout being built, and paths outside the repository (data, runs) are not checked.
- Every relative link (and #anchor) in README.md, BENCHMARKS.md and docs/*.md resolves.
- docs/training.md lists every setting of config.py; docs/ mention every flag of export.py and inference.py.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import inspect
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

README = ROOT / "README.md"
MAX_README_LINES = 250
GUIDES = [README, ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
# Linked before it exists: generated from the code (runtime/metadata.py) on another branch. Checked once present.
PENDING_FILES = {"docs/metadata.md"}
# The section whose paths describe the layout being built; its links are still checked.
SKIP_PATHS_IN_SECTION = "Layout"
PYTHONS = {"python", "python3", ".venv/bin/python", ".venv/bin/python3"}
STREAMLITS = {"streamlit", ".venv/bin/streamlit"}
SEPARATORS = {"&&", "||", ";", "|", "&"}
ENV_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)
BARE_REPO_FILE = re.compile(r"^(?:[\w.-]+\.(?:py|md|sh|toml|ini)|requirements-[\w-]+\.txt|Makefile)$")
# train.py settings that must name an existing file; the check gives them a stand-in file.
FILE_SETTINGS = ("classes_file", "groups", "load_model", "crop_model")


# ----------------------------------------------------------------------------- markdown


@dataclass
class Command:
    source: str  # "<file>:<line>"
    text: str
    env: dict[str, str]
    argv: list[str]  # program first


def fenced_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, first line number, lines) of every ``` block."""
    blocks, lines, current = [], text.splitlines(), None
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            if current is None:
                current = (stripped[3:].strip().lower(), number + 1, [])
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current[2].append(line)
    return blocks


def strip_comment(line: str) -> str:
    """Drop a shell comment: '#' at the start of a word, outside quotes."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def split_shell(line: str) -> list[list[str]]:
    """Words of each simple command of one shell line (split at &&, ||, ;, |)."""
    lexer = shlex.shlex(strip_comment(line), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    commands, current = [], []
    for token in lexer:
        if token in SEPARATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [c for c in commands + [current] if c]


def shell_commands(path: Path) -> list[Command]:
    """Every simple command in the shell code blocks of a markdown file (backslash continuations joined)."""
    found = []
    for language, first, lines in fenced_blocks(path.read_text()):
        if language not in ("", "bash", "sh", "shell", "console"):
            continue
        joined, start = "", None
        for offset, line in enumerate(lines):
            start = first + offset if start is None else start
            if line.rstrip().endswith("\\"):
                joined += line.rstrip()[:-1] + " "
                continue
            joined += line
            for words in split_shell(joined):
                env = {}
                while words and ENV_ASSIGNMENT.match(words[0]):
                    name, value = ENV_ASSIGNMENT.match(words[0]).groups()
                    env[name] = value
                    words = words[1:]
                if words:
                    found.append(Command(f"{path.name}:{start}", joined.strip(), env, words))
            joined, start = "", None
    return found


def sections(text: str) -> list[tuple[str, list[tuple[int, str]]]]:
    """(## heading, [(line number, line)]) outside code blocks; the part before the first ## is ''."""
    result, heading, body, fenced = [], "", [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        if line.startswith("## "):
            result.append((heading, body))
            heading, body = line[3:].strip(), []
        else:
            body.append((number, line))
    result.append((heading, body))
    return result


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    fenced = False
    for line in path.read_text().splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
        if fenced or not re.match(r"^#{1,6} ", line):
            continue
        base = slug(line.lstrip("#"))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


# ----------------------------------------------------------------------------- what the repository holds


@functools.lru_cache(maxsize=None)
def tracked_top_level() -> frozenset[str]:
    """Top-level names under version control (what a fresh clone has), else what is on disk minus run outputs."""
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        names = {line.split("/")[0] for line in out.splitlines() if line}
        if names:
            return frozenset(names)
    except (OSError, subprocess.CalledProcessError):
        pass
    generated = {".git", ".venv", "runs", "work", "demo_work", "demo_steel", "__pycache__", ".pytest_cache"}
    return frozenset(p.name for p in ROOT.iterdir() if p.name not in generated)


def repo_path(word: str) -> str | None:
    """The repository-relative path a word refers to, or None when it is not a path into the repository."""
    word = word.strip().strip("\"'").rstrip(",.;:)").lstrip("(")
    if "=" in word:
        word = word.split("=", 1)[1]
    if not word or word.startswith(("-", "/", "~", "../", "$")) or "://" in word:
        return None
    if any(char in word for char in "<>*?{}[]|"):
        return None  # a placeholder or a glob
    word = word[2:] if word.startswith("./") else word
    first = word.split("/")[0]
    if "/" in word:
        return word if first in tracked_top_level() else None
    return word if BARE_REPO_FILE.match(word) else None


@functools.lru_cache(maxsize=None)
def make_targets() -> frozenset[str]:
    text = (ROOT / "Makefile").read_text()
    return frozenset(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M))


@functools.lru_cache(maxsize=None)
def python_sources() -> str:
    """The text of every non-test Python file in the repository (where an env var a command sets must be read)."""
    files = [p for p in ROOT.rglob("*.py") if p.relative_to(ROOT).parts[0] in tracked_top_level()
             and p.relative_to(ROOT).parts[0] != "tests"]
    return "\n".join(p.read_text() for p in files)


class _Captured(Exception):
    def __init__(self, parser):
        super().__init__("captured")
        self.parser = parser


def load_script(script: str):
    """The module of a script: by import name for top-level files, else from its file (bench/, tests/)."""
    path = ROOT / script
    if path.parent == ROOT:
        return importlib.import_module(path.stem)
    name = "_readme_" + "_".join(path.relative_to(ROOT).with_suffix("").parts)
    if name in sys.modules:
        return sys.modules[name]
    sys.path.insert(0, str(path.parent))  # bench scripts import their `common` module
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


@functools.lru_cache(maxsize=None)
def script_parser(script: str) -> argparse.ArgumentParser:
    """The argparse parser a script builds: config.build_parser for train.py; for the others the parser their
    parse_args (or main) builds, caught at its parse_args call, before anything runs."""
    if script == "train.py":
        import config

        return config.build_parser()
    module = load_script(script)
    entry = getattr(module, "parse_args", None) or getattr(module, "main", None)
    assert entry is not None, f"{script} has neither parse_args nor main"

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture), \
            mock.patch.object(argparse.ArgumentParser, "parse_known_args", capture):
        try:
            entry([]) if inspect.signature(entry).parameters else entry()
        except _Captured as caught:
            return caught.parser
    raise AssertionError(f"{script}: {entry.__name__} built no argparse parser")


# ----------------------------------------------------------------------------- the checks


class ParseError(Exception):
    pass


def parse_strictly(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """parser.parse_args, with argparse's error (which would exit) raised as ParseError."""
    def error(message):
        raise ParseError(message)

    with mock.patch.object(parser, "error", error):
        return parser.parse_args(argv)


def flag_problems(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Flags that are not exact options of the parser (argparse would accept a unique abbreviation)."""
    options = set(parser._option_string_actions)
    flags = [word.split("=", 1)[0] for word in argv if re.match(r"^--?[A-Za-z]", word)]
    return [f"unknown flag {flag}" for flag in flags if flag not in options]


def train_problems(argv: list[str], env: dict[str, str], tmp: Path) -> list[str]:
    """A train.py command resolves through load_config (types, choices, cross-setting rules); files that must
    exist (CLASSES_FILE, GROUPS, LOAD_MODEL, CROP_MODEL) are replaced by stand-ins first."""
    import config
    from utils import UserError

    fields = {f.env: f for f in config.FIELDS}
    problems = [f"unknown setting {name} (not a config.py field)" for name in env if name not in fields]
    if problems or {"-h", "--help"} & set(argv):
        return problems
    parser = script_parser("train.py")
    try:
        given = vars(parse_strictly(parser, argv))
    except ParseError as exc:
        return [str(exc)]
    env = dict(env)
    by_dest = {f.name: f for f in config.FIELDS}
    for name in FILE_SETTINGS:
        if name not in by_dest:
            continue
        value = given.get(name) or env.get(by_dest[name].env) or by_dest[name].default
        if not value or value.lower() == "none" or Path(value).is_file():
            continue
        classes = int(given.get("classes") or env.get("CLASSES") or by_dest["classes"].default)
        stand_in = tmp / (name + Path(value).suffix)
        stand_in.write_text("".join(f"class_{i}\n" for i in range(classes)) if name == "classes_file" else "")
        if given.get(name):
            argv = [str(stand_in) if word == value else word for word in argv]
        else:
            env[by_dest[name].env] = str(stand_in)
    try:
        config.load_config(argv, environ=env)
    except UserError as exc:
        return [str(exc)]
    return []


def command_problems(command: Command, tmp: Path) -> list[str]:
    """What is wrong with one command; [] when it would run as written (or is not ours to check)."""
    argv = command.argv
    program = argv[0]
    if program in PYTHONS:
        if len(argv) < 2 or argv[1] == "-m" or argv[1].startswith("-"):
            return []  # python -m pytest / -m venv: not a script of this repository
        script, args = argv[1], argv[2:]
    elif program == "torchrun":
        scripts = [i for i, word in enumerate(argv) if word.endswith(".py")]
        if not scripts:
            return ["torchrun without a .py script"]
        script, args = argv[scripts[0]], argv[scripts[0] + 1:]
    elif program == "make":
        targets = [word for word in argv[1:] if not word.startswith("-") and "=" not in word]
        return [f"no make target {target!r} in the Makefile" for target in targets if target not in make_targets()]
    elif program in STREAMLITS:
        if argv[1:2] != ["run"] or len(argv) < 3:
            return ["expected: streamlit run app.py"]
        return [] if (ROOT / argv[2]).is_file() else [f"{argv[2]} does not exist"]
    elif program in ("bash", "sh"):
        target = next((word for word in argv[1:] if not word.startswith("-")), "")
        return [] if not target.endswith(".sh") or (ROOT / target).is_file() else [f"{target} does not exist"]
    else:
        return []
    if not (ROOT / script).is_file():
        return [f"{script} does not exist"]
    if script == "train.py":
        return flag_problems(script_parser(script), args) or train_problems(args, command.env, tmp)
    unknown_env = [name for name in command.env if f'"{name}"' not in python_sources()
                   and f"'{name}'" not in python_sources()]
    problems = [f"env var {name} is read nowhere in the code" for name in unknown_env]
    parser = script_parser(script)
    problems += flag_problems(parser, args)
    if not problems and not {"-h", "--help"} & set(args):
        try:
            parse_strictly(parser, args)
        except ParseError as exc:
            problems.append(str(exc))
    return problems


def path_problems(text: str, name: str = "README.md") -> list[str]:
    """Repository paths named in code spans and commands (outside the Layout section) that do not exist."""
    words: list[tuple[int, str]] = []
    for heading, body in sections(text):
        if heading == SKIP_PATHS_IN_SECTION:
            continue
        for number, line in body:
            for span in re.findall(r"`([^`]+)`", line):
                words += [(number, word) for word in span.split()]
    for language, first, lines in fenced_blocks(text):
        if language in ("", "bash", "sh", "shell", "console"):
            for offset, line in enumerate(lines):
                for words_of_command in split_shell(line.rstrip("\\")):
                    words += [(first + offset, word) for word in words_of_command]
    problems = []
    for number, word in words:
        path = repo_path(word)
        if path and path not in PENDING_FILES and not (ROOT / path).exists():
            problems.append(f"{name}:{number}: {path} does not exist")
    return sorted(set(problems))


def link_problems(path: Path, root: Path = ROOT) -> list[str]:
    """Relative markdown links (files and #anchors) of one file under `root` that do not resolve."""
    problems = []
    text = path.read_text()
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            fenced = not fenced
        if fenced:
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if "://" in target or target.startswith("mailto:"):
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            relative = linked.relative_to(root).as_posix() if linked.is_relative_to(root) else str(linked)
            where = f"{path.relative_to(root)}:{number}: {target}"
            if not linked.exists():
                if relative not in PENDING_FILES:
                    problems.append(f"{where}: {relative} does not exist")
                continue
            if anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                problems.append(f"{where}: no heading #{anchor} in {relative}")
    return problems


# ----------------------------------------------------------------------------- the tests


def test_readme_is_at_most_250_lines():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; keep it a guide and move reference to docs/"


def test_readme_has_commands_of_every_kind():
    programs = {Path(c.argv[1]).name if c.argv[0] in PYTHONS and len(c.argv) > 1 else c.argv[0]
                for c in shell_commands(README)}
    assert {"train.py", "export.py", "inference.py", "make"} <= programs
    assert programs & STREAMLITS


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_command_in_the_guides_runs_as_written(guide, tmp_path):
    problems = [f"{c.source}: {c.text}\n    {p}" for c in shell_commands(guide) for p in command_problems(c, tmp_path)]
    assert not problems, "\n".join(problems)


def test_every_repository_path_in_the_readme_exists():
    problems = path_problems(README.read_text())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_resolves(guide):
    problems = link_problems(guide)
    assert not problems, "\n".join(problems)


def test_readme_links_every_guide_in_docs():
    text = README.read_text()
    missing = [p.name for p in (ROOT / "docs").glob("*.md") if f"docs/{p.name}" not in text
               and p.name != "export_matrix.md"]  # generated by bench/export_matrix.py, linked from docs/export.md
    assert not missing, f"README.md does not link {missing}"
    assert "docs/metadata.md" in text


def test_training_guide_lists_every_setting():
    import config

    text = (ROOT / "docs" / "training.md").read_text()
    missing = [f.env for f in config.FIELDS if f"`{f.env}`" not in text]
    missing += [flag for f in config.FIELDS for flag in f.all_flags if f"`{flag}`" not in text]
    assert not missing, f"docs/training.md does not list {missing}"


@pytest.mark.parametrize("script,guides", [("export.py", ["export.md"]), ("inference.py", None)])
def test_docs_mention_every_flag(script, guides):
    files = [ROOT / "docs" / g for g in guides] if guides else sorted((ROOT / "docs").glob("*.md"))
    text = "\n".join(p.read_text() for p in files)
    flags = [o for o in script_parser(script)._option_string_actions if o.startswith("--") and o != "--help"]
    missing = [flag for flag in flags if not re.search(re.escape(flag) + r"(?![\w-])", text)]
    assert not missing, f"{script}: {missing} not in {[p.name for p in files]}"


# ----------------------------------------------------------------------------- the checker catches mistakes


def commands_of(markdown: str, tmp_path: Path) -> list[Command]:
    path = tmp_path / "GUIDE.md"
    path.write_text(markdown)
    return shell_commands(path)


def problems_of(markdown: str, tmp_path: Path) -> list[str]:
    return [p for c in commands_of(markdown, tmp_path) for p in command_problems(c, tmp_path)]


def test_extraction_joins_continuations_and_splits_env_and_chains(tmp_path):
    found = commands_of("text\n```bash\nA=1 B='x y' python train.py --lr 1e-3 \\\n    --epochs 2   # note #1\n"
                        "make demo && .venv/bin/streamlit run app.py\n```\n", tmp_path)
    assert [c.argv for c in found] == [["python", "train.py", "--lr", "1e-3", "--epochs", "2"],
                                       ["make", "demo"], [".venv/bin/streamlit", "run", "app.py"]]
    assert found[0].env == {"A": "1", "B": "x y"}


@pytest.mark.parametrize("command,expected", [
    ("python inference.py --model m.onnx --source a/ --output b/ --vid-strid 3", "unknown flag --vid-strid"),
    ("python export.py --work-dir runs/x --fp-16", "unknown flag --fp-16"),
    ("python train.py --raw-img-dir d --epoch 3", "unknown flag --epoch"),
    ("EPOCH=3 python train.py --raw-img-dir d", "unknown setting EPOCH"),
    ("python train.py --scheduler cosin", "not allowed"),
    ("python train.py --input-size 100", "multiple of 32"),
    ("python inference.py --model m.onnx --source a/ --output b/ --tta flip", "invalid choice"),
    ("python inference.py --model m.onnx --source a/", "required"),
    ("MODEL_PTH=m.onnx python inference.py --model m.onnx --source a/ --output b/", "read nowhere"),
    ("python nothere.py --x 1", "nothere.py does not exist"),
    ("make dmeo", "no make target 'dmeo'"),
    ("streamlit run ap.py", "ap.py does not exist"),
    ("torchrun --standalone --nproc_per_node=2 train.py --raw-img-dir d --devices cpu", "unknown flag --devices"),
])
def test_checker_catches_a_wrong_command(command, expected, tmp_path):
    problems = problems_of(f"```bash\n{command}\n```\n", tmp_path)
    assert any(expected in p for p in problems), problems


def test_checker_accepts_good_commands(tmp_path):
    good = ("```bash\nCROP=person python train.py --raw-img-dir d --classes 3 --classes-file d/classes.txt "
            "--class-weights auto --input-size 1600 --train-patch 256x320 --patch-size 1600\n"
            "python inference.py --model m.onnx --source \"a/**/*.jpg\" --output b/ --color '#00ff00'\n"
            "MAX_IMAGE_PIXELS=5 python inference.py --method otsu --source a/ --output b/\n"
            "python export.py --help\nmake demo-steel\npython -m pytest -m slow\n```\n")
    assert problems_of(good, tmp_path) == []


def test_checker_catches_a_missing_path_but_not_user_paths(tmp_path):
    text = ("Run `bench/nothere.py` or `nothere.py` with `requirements-infer.txt`.\n"
            "```bash\npython inference.py --model runs/x/m.onnx --source data/images --output preds/\n"
            "python bench/plain_unet.py --train ../shared/x --val y --out bench/results/<name>.json\n```\n"
            "## Layout\n| `training/` | planned |\n")
    assert path_problems(text) == ["README.md:1: bench/nothere.py does not exist",
                                   "README.md:1: nothere.py does not exist"]


def test_checker_catches_a_broken_link_and_anchor(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "training.md").write_text("# Training\n## Patch training\n```bash\n# not a heading\n```\n")
    guide = tmp_path / "docs" / "guide.md"
    guide.write_text("# Title\n## A section\n[ok](#a-section) [ok](training.md#patch-training) "
                     "[bad](nothere.md) [bad](#no-such) [bad](training.md#no-such) [pending](metadata.md) "
                     "[bad](training.md#not-a-heading)\n")
    problems = link_problems(guide, root=tmp_path)
    assert len(problems) == 4, problems
    assert "docs/nothere.md does not exist" in problems[0]
    assert "no heading #no-such" in problems[1] and "no heading #no-such in docs/training.md" in problems[2]
    assert "no heading #not-a-heading" in problems[3]


def test_slug_matches_github():
    assert slug("3. Inference (no torch): `inference.py`") == "3-inference-no-torch-inferencepy"
    assert slug("Cost growth: folds × TTA, input side, batched TTA") == "cost-growth-folds--tta-input-side-batched-tta"

"""The commands in README.md and docs/*.md still run as written.

Every line of a ```bash fence (backslash continuations joined, comments
dropped) that calls one of the CLIs (`python -m classkd_jax.<cli>`), a
launcher (`bash launch/X.sh`, `sbatch launch/X.sbatch`) or a script is
checked without running anything heavy:
  - the module or script exists;
  - every `--flag` is one the CLI's own parser accepts (the parsers are
    taken from the CLIs themselves, not listed here), and a launcher's
    options are ones its `case` accepts;
  - `--config configs/X.py[:ARG]` names a config file whose `get_config(ARG)`
    loads, every `--config.KEY=VALUE` override and `--sweep KEY=...` names a
    key of that config, and a concrete train / compile command parses
    through the trainer's own flag parser (values' types included).
Optional parts written `[...]` and placeholders written `<...>` are skipped.
The markdown files also never point outside the repository, and every
relative link in them resolves to a file or folder of the repository.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import re
import shlex
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")


# ----- extracting the commands -----


def fenced_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(language, lines) of every ``` fence of a markdown text (indented fences too)."""
    blocks, lang, lines = [], None, []
    for raw in text.splitlines():
        match = FENCE.match(raw.strip())
        if match and lang is None:
            lang, lines = match.group(1), []
        elif raw.strip() == "```" and lang is not None:
            blocks.append((lang, lines))
            lang = None
        elif lang is not None:
            lines.append(raw)
    return blocks


def bash_commands(text: str) -> list[str]:
    """Every command of the ```bash fences: continuations joined, comment lines dropped."""
    commands = []
    for lang, lines in fenced_blocks(text):
        if lang != "bash":
            continue
        current = ""
        for line in lines:
            stripped = line.strip()
            if not current and (not stripped or stripped.startswith("#")):
                continue
            if stripped.endswith("\\"):
                current += stripped[:-1] + " "
                continue
            commands.append((current + stripped).strip())
            current = ""
        if current:
            commands.append(current.strip())
    return commands


def tokens(command: str) -> list[str]:
    """The command's words, trailing comments and `[optional ...]` parts removed."""
    words, depth = [], 0
    for word in shlex.split(command, comments=True):
        if word.startswith("["):
            depth += 1
        if depth == 0:
            words.append(word)
        if word.endswith("]") and depth:
            depth -= 1
    return words


def all_commands() -> list[tuple[str, str]]:
    return [(p.relative_to(ROOT).as_posix(), c) for p in DOCS for c in bash_commands(p.read_text())]


# ----- what each CLI accepts, from the CLI itself -----


class _Captured(Exception):
    pass


def _captured_parser(call) -> argparse.ArgumentParser:
    """The argparse parser `call()` builds, caught as it starts parsing."""
    seen = []

    def capture(self, *args, **kwargs):
        seen.append(self)
        raise _Captured

    patch = mock.patch.object(argparse.ArgumentParser, "parse_known_args", capture)
    with patch, pytest.raises(_Captured):
        call()
    return seen[0]


def _absl_flags(workdir: bool) -> set[str]:
    """The flags the trainer's absl parser defines (`train.parse_flags`)."""
    from absl import flags

    from classkd_jax.train import parse_flags

    seen = []

    def capture(self, *args, **kwargs):
        seen.append(self)
        raise _Captured

    with mock.patch.object(flags.FlagValues, "__call__", capture), pytest.raises(_Captured):
        parse_flags(["--config", str(ROOT / "configs" / "sft.py")], workdir=workdir)
    return {f"--{name}" for name in seen[0]}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for o in parser._option_string_actions if o.startswith("--")}


@functools.cache
def cli_options(module: str) -> frozenset[str]:
    """The long options `python -m classkd_jax.<module>` accepts."""
    if module == "teacher_cache":  # a package: its parser is in __main__
        own = importlib.import_module("classkd_jax.teacher_cache.__main__").build_parser()
        return frozenset(_options(own) | _absl_flags(workdir=False))
    mod = importlib.import_module(f"classkd_jax.{module}")
    if module == "train":
        from classkd_jax import distributed

        multi = _captured_parser(lambda: distributed.split_flags([]))
        return frozenset(_options(multi) | _absl_flags(workdir=True))
    if module == "compile":
        own = _captured_parser(lambda: mod.parse_args([]))
        return frozenset(_options(own) | _absl_flags(workdir=False))
    if hasattr(mod, "build_parser"):
        return frozenset(_options(mod.build_parser()))
    return frozenset(_options(_captured_parser(lambda: mod.parse_args([]))))


# CLIs whose unrecognised `--config.KEY=VALUE` arguments are config overrides.
TAKES_OVERRIDES = ("train", "compile", "compare", "demo", "teacher_cache")


# ----- configs -----


def _placeholder(text: str) -> bool:
    return "<" in text or "..." in text


@functools.cache
def load_config(spec: str):
    """`configs/X.py[:ARG]` -> the locked ConfigDict its get_config(ARG) returns."""
    path, _, arg = spec.partition(":")
    file = (ROOT / path).resolve()
    assert file.is_file(), f"--config {spec}: no such config file"
    module_spec = importlib.util.spec_from_file_location(f"_docs_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def has_key(config, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError):
            return False
    return True


def _flag_name(word: str) -> str:
    return word.split("=", 1)[0]


def check_cli(module: str, args: list[str], where: str) -> None:
    file = ROOT / "classkd_jax" / f"{module}.py"
    package = ROOT / "classkd_jax" / module / "__main__.py"
    exists = file.is_file() or package.is_file()
    assert exists, f"{where}: python -m classkd_jax.{module}: no such CLI"
    accepted = cli_options(module)
    config = None
    spec = _value(args, "--config")
    if module == "demo":
        from classkd_jax.demo import CONFIG

        spec = CONFIG
    if spec is not None and not _placeholder(spec):
        config = load_config(spec)
    for word in args:
        if not word.startswith("--"):
            continue
        name = _flag_name(word)
        if name.startswith("--config.") and module in TAKES_OVERRIDES:
            key = name[len("--config.") :]
            if config is not None and not _placeholder(key):
                assert has_key(config, key), f"{where}: {spec} has no key {key}"
            continue
        assert name in accepted, f"{where}: {module} does not accept {name}"
    if module == "compare" and config is not None:
        for i, word in enumerate(args):
            if word == "--sweep":
                key = args[i + 1].split("=", 1)[0]
                assert has_key(config, key), f"{where}: --sweep {key}: {spec} has no such key"
    if module in ("train", "compile") and config is not None and not any(map(_placeholder, args)):
        _parse_like_the_trainer(module, args, where)


def _parse_like_the_trainer(module: str, args: list[str], where: str) -> None:
    """The trainer's own flag parsing: keys, value types, required flags."""
    from classkd_jax import distributed
    from classkd_jax.cli import UserError
    from classkd_jax.train import parse_flags

    rest = args
    if module == "train":
        _, rest = distributed.split_flags(args)
    else:
        rest = [w for i, w in enumerate(args) if not _is_compile_own(args, i)]
    try:
        parse_flags(rest, workdir=module == "train")
    except UserError as e:
        pytest.fail(f"{where}: {e}")


def _is_compile_own(args: list[str], i: int) -> bool:
    own = ("--topology", "--out", "--programs", "--jobs")
    word = args[i]
    return _flag_name(word) in own or (i > 0 and args[i - 1] in own)


def _value(args: list[str], flag: str) -> str | None:
    for i, word in enumerate(args):
        if word == flag and i + 1 < len(args):
            return args[i + 1]
        if word.startswith(flag + "="):
            return word.split("=", 1)[1]
    return None


def launcher_options(script: Path) -> set[str]:
    """The options a launcher's `case "$1"` accepts."""
    return set(re.findall(r"^\s*(--[\w-]+)\)", script.read_text(), re.M))


def check_launcher(words: list[str], where: str) -> None:
    """`bash launch/X.sh ...` or `sbatch [...] launch/X.sbatch ...`."""
    index = next(i for i, w in enumerate(words) if w.startswith("launch/"))
    script = ROOT / words[index]
    assert script.is_file(), f"{where}: {words[index]}: no such script"
    args = words[index + 1 :]
    if script.name == "demo.sh":
        check_cli("demo", args, where)
    elif script.name == "test.sh":
        pass  # pytest's own arguments
    elif script.name == "slurm_gpu.sbatch":
        check_cli("train", [a for a in args if a != "--dry_run"], where)
    else:
        cut = args.index("--") if "--" in args else len(args)
        own, train = args[:cut], args[cut + 1 :]
        accepted = launcher_options(script)
        for word in own:
            if word.startswith("--"):
                assert word in accepted, f"{where}: {script.name} does not accept {word}"
        if train:
            check_cli("train", train, where)


def check_command(command: str, where: str) -> bool:
    """Checks one command; False when it is none of the kinds this file knows."""
    words = tokens(command)
    if words[:2] == ["python", "-m"] and words[2].startswith("classkd_jax."):
        check_cli(words[2].split(".", 1)[1], words[3:], where)
    elif words[:1] in (["bash"], ["sbatch"]) and any(w.startswith("launch/") for w in words):
        check_launcher(words, where)
    elif words[:1] == ["python"] and words[1].endswith(".py"):
        assert (ROOT / words[1]).is_file(), f"{where}: {words[1]}: no such script"
    else:
        return False
    return True


# ----- tests -----


def test_the_docs_exist_and_have_commands():
    names = {p.name for p in DOCS}
    assert {"README.md", "method.md", "baselines.md", "training.md"} <= names
    assert {"comparing.md", "pods.md", "models.md", "benchmarks.md"} <= names
    modules = {c.split()[2] for _, c in all_commands() if c.startswith("python -m classkd_jax.")}
    for cli in ("train", "compare", "generate", "evaluate", "export", "compile", "demo"):
        assert f"classkd_jax.{cli}" in modules, f"no command of {cli} in README.md or docs/"


@pytest.mark.parametrize("where,command", all_commands())
def test_command_matches_its_cli(where, command):
    if not check_command(command, f"{where}: {command[:80]}"):
        # Shell structure and one-liners are all a fence may hold besides the
        # commands checked above; anything else needs a check here first.
        words = tokens(command)
        assert words[0] in ("for", "done") or words[:2] == ["python", "-c"], (
            f"{where}: {command[:80]}: not a command this test knows how to check"
        )


def test_the_quick_start_is_two_commands():
    readme = (ROOT / "README.md").read_text()
    first = bash_commands(readme)[:2]
    assert [tokens(c) for c in first] == [["bash", "launch/demo.sh"], ["bash", "launch/test.sh"]]
    start, end = "<!-- demo-results:start -->", "<!-- demo-results:end -->"
    assert readme.count(start) == 1 and readme.count(end) == 1
    assert readme.index(start) < readme.index(end)


def test_a_wrong_flag_or_key_is_caught():
    """The checks above fail on the mistakes they exist for."""
    bad = [
        "python -m classkd_jax.train --config configs/sft.py:size=tiny --workdir x --wrokdir y",
        "python -m classkd_jax.train --config configs/sft.py:size=tiny --workdir x "
        "--config.misfeedback.wieght=1",
        "python -m classkd_jax.train --config configs/nope.py --workdir x",
        "python -m classkd_jax.export --workdir x --out y --rol classmate",
        "python -m classkd_jax.compare --config configs/demo.py --workdir x --sweep nope.key=1,2",
        "python -m classkd_jax.nope --x",
        "bash launch/nope.sh",
        "bash launch/local.sh --num_proceses 2 -- --config configs/sft.py:size=tiny --workdir x",
    ]
    for command in bad:
        with pytest.raises((AssertionError, pytest.fail.Exception)):
            check_command(command, command)
    good = "python -m classkd_jax.generate --model M --prompts p.jsonl --out o.jsonl --greedy"
    assert check_command(good, good)


def anchors(doc: Path) -> set[str]:
    """GitHub's anchors of a markdown file's headings."""
    out = set()
    for line in _prose(doc.read_text()).splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The text outside fenced code blocks."""
    out, inside = [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            inside = not inside
            continue
        if not inside:
            out.append(line)
    return "\n".join(out)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_docs_stay_inside_the_repository(doc):
    text = doc.read_text()
    for word in ("shared/", "METHODS.md", "classkd-method.md", "STYLE.md"):
        assert word not in text, f"{doc.name} refers to {word!r}, outside the repository"
    for path in re.findall(r"(?:\.\./)+[\w./-]*", _prose(text)):
        resolved = (doc.parent / path).resolve()
        assert resolved.is_relative_to(ROOT), f"{doc.name}: {path} leaves the repository"
    for match in LINK.finditer(text):
        target, _, anchor = (match.group(1) or match.group(2)).partition("#")
        if re.match(r"^[a-z]+:", target):  # http(s):, mailto:
            continue
        if not target:  # an anchor in the same file
            assert anchor in anchors(doc), f"{doc.name}: no heading #{anchor}"
            continue
        resolved = (doc.parent / target).resolve()
        assert resolved.is_relative_to(ROOT), f"{doc.name}: {target} leaves the repository"
        assert resolved.exists(), f"{doc.name}: link target {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{doc.name}: no heading #{anchor} in {target}"

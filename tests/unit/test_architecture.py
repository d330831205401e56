"""The house rules of docs/architecture.md, kept by tests: no module over 400 lines, no cycle
between rooms (counting imports inside functions), every run-directory name spelled once and
joined onto a path only in launcher/rundir/, and no tracker numbers or benchmark figures in the
code's comments or strings (figures belong in bench/RESULTS.md)."""
from __future__ import annotations

import ast
import io
import re
import tokenize
from collections import defaultdict
from pathlib import Path

import pytest

from launcher.rundir import names

PKG = Path(__file__).resolve().parents[2] / "launcher"
MAX_LINES = 400
SOURCES = sorted(PKG.rglob("*.py"))


def _module(p: Path) -> str:
    parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _room(module: str):
    """The room of a module: its folder below launcher/, or the top-level module itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _imports(p: Path) -> list[tuple[str, int]]:
    """Every launcher module ``p`` imports, at any depth (inside functions too), with its line."""
    mod = _module(p)
    pkg = mod if p.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(p.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, node.lineno))
            out += [(f"{target}.{a.name}", node.lineno) for a in node.names]
    return [(m, line) for m, line in out if m.startswith("launcher.")]


def room_graph() -> dict[str, dict[str, str]]:
    """room -> {room it imports: where (file:line)}."""
    g: dict[str, dict[str, str]] = defaultdict(dict)
    for p in SOURCES:
        src = _room(_module(p))
        for target, line in _imports(p):
            dst = _room(target)
            if src and dst and dst != src:
                g[src].setdefault(dst, f"{p.relative_to(PKG)}:{line}")
    return g


def cycles(g: dict[str, dict[str, str]]) -> list[list[str]]:
    """The strongly connected components of more than one room (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in g.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(g):
        if v not in index:
            visit(v)
    return out


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(PKG)): n for p in SOURCES if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"


def test_no_cycle_between_rooms():
    g = room_graph()
    found = cycles(g)
    where = [{a: {b: g[a][b] for b in comp if b in g.get(a, {})} for a in comp} for comp in found]
    assert not found, f"rooms that import each other (arrows must run one way): {where}"


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b": ""}, "b": {"c": ""}, "c": {"a": ""}, "d": {"a": ""}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b": ""}, "b": {}}) == []


def _run_dir_names() -> dict[str, str]:
    return {k: v for k, v in vars(names).items() if k.isupper() and isinstance(v, str) and not k.endswith("_RE")}


def _pattern(value: str) -> re.Pattern:
    """A name as a regex over path components: a template's fields (and globs, %j) match anything."""
    parts = re.split(r"\{[^}]*\}", value)
    return re.compile(".+".join(re.escape(p) for p in parts) + "$")


def _literals(tree: ast.AST):
    """(line, text) of every string in a module; an f-string with ``{}`` for its fields."""
    in_fstring = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            in_fstring.update(id(v) for v in node.values)
            yield node.lineno, text
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in in_fstring:
            yield node.lineno, node.value


# the same text meaning something else: not a run-directory name
OTHER_MEANINGS = {
    ("jobdoc.py", "job.yaml"): "the starter job file `launcher init` writes in the user's folder",
    ("cli/init.py", "job.yaml"): "the starter job file `launcher init` writes in the user's folder",
}


def test_each_run_directory_name_is_spelled_once():
    """A name of launcher/rundir/names.py appears as a path component (a string without spaces:
    prose may mention it) nowhere else. File names only: folder names and markers ("logs",
    "export", COMPLETED) are also words of the CLI and of Slurm, and the path-join rule below
    covers them."""
    checked = {k: v for k, v in _run_dir_names().items()
               if re.search(r"[.-]", v) and len(v.split("{")[0]) >= 4 or ("{" not in v and "." in v)}
    patterns = {k: _pattern(v) for k, v in checked.items()}
    found = []
    for p in SOURCES:
        rel = str(p.relative_to(PKG))
        if rel.startswith("rundir/"):
            continue
        for line, text in _literals(ast.parse(p.read_text())):
            if " " in text or "\n" in text:
                continue
            for component in re.split(r"[/\\]", text):
                for k, pat in patterns.items():
                    if ("{" in checked[k] or component == checked[k]) and pat.match(component) \
                            and (rel, component) not in OTHER_MEANINGS and not component.endswith(".j2"):
                        found.append(f"{rel}:{line}: {component!r} is rundir.{k}")
    assert not found, "run-directory names spelled outside launcher/rundir/names.py:\n" + "\n".join(found)


def test_no_run_directory_name_is_joined_onto_a_path_outside_rundir():
    """``x / rundir.REPORT_JSON`` belongs in launcher.rundir.RunDir: callers ask for the path."""
    known = set(_run_dir_names())
    found = []
    for p in SOURCES:
        rel = str(p.relative_to(PKG))
        if rel.startswith("rundir/"):
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
                r = node.right
                name = r.attr if isinstance(r, ast.Attribute) else r.id if isinstance(r, ast.Name) else None
                if name in known:
                    found.append(f"{rel}:{node.lineno}: / {name}")
    assert not found, "use launcher.rundir.RunDir for these paths:\n" + "\n".join(found)


TRACKER_NUMBER = re.compile(r"(?<![\w&/])#\d{1,5}\b")  # "#10", "issue #27"; not "&#39;", not a URL
# a measured ratio: "0.97x", "0.68-0.74x", "5x slower", "5-7x faster"; not a formula's "4x" or "%02x"
FIGURE = re.compile(r"\b\d+\.\d+(-\d+(\.\d+)?)?x\b|\b\d+(-\d+)?x (faster|slower|as fast)")


def _comments_and_strings(p: Path):
    src = p.read_text()
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type in (tokenize.COMMENT, tokenize.STRING) or tok.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
            yield tok.start[0], tok.string


def test_no_tracker_numbers_or_benchmark_figures_in_comments_or_strings():
    """History and figures go stale in code: tracker numbers belong in commits, measured ratios in
    bench/RESULTS.md. Templates are checked too (what users read)."""
    found = []
    for p in SOURCES:
        for line, text in _comments_and_strings(p):
            for pat, what in ((TRACKER_NUMBER, "tracker number"), (FIGURE, "benchmark figure")):
                for m in pat.finditer(text):
                    found.append(f"{p.relative_to(PKG)}:{line}: {what} {m.group(0)!r}")
    for p in sorted((PKG / "templates").glob("*.j2")):
        for i, text in enumerate(p.read_text().splitlines(), 1):
            found += [f"templates/{p.name}:{i}: tracker number {m.group(0)!r}" for m in TRACKER_NUMBER.finditer(text)
                      if not re.fullmatch(r"#[0-9a-fA-F]{3,6}", m.group(0))]  # CSS colours
    assert not found, "\n".join(found)


@pytest.mark.parametrize("text,hit", [("issue #10's trainer", True), ("ran 0.97x as fast", True), ("5-7x faster", True),
                                      ("0.68-0.74x", True), ("a 2x8 mesh", False), ("&#39;", False),
                                      ("#SBATCH --nodes=2", False), ("4x the hidden size", False), ("%02x", False)])
def test_the_history_patterns_catch_what_they_should(text, hit):
    assert bool(TRACKER_NUMBER.search(text) or FIGURE.search(text)) is hit

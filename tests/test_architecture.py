"""The shape of the code (docs/design.md §1): kfp stays out of the library, functions stay short, the docs the code
cites exist, and nothing in the repository points outside it."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "src" / "memaudit"
CODE_DIRS = (LIBRARY, ROOT / "components", ROOT / "pipelines")
MAX_FUNCTION_LINES = 50
TEXT_SUFFIXES = (".py", ".md", ".toml", ".yaml", ".yml", ".txt", ".tpl", ".json", ".sh")
DOC_REF = re.compile(r"docs/(method|design)\.md (§[\d.]*\d(?:(?:, | and |–)§?[\d.]*\d)*)")


def _library_modules() -> list[str]:
    modules = []
    for path in sorted(LIBRARY.rglob("*.py")):
        parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def test_no_library_module_loads_kfp():
    modules = _library_modules()
    assert "memaudit.stages.aggregate" in modules and "memaudit.cli" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m == 'kfp' or m.startswith('kfp.'))\n"
        "print(loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip() == "[]"


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [
        f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]


def test_functions_stay_short():
    long = [entry for folder in CODE_DIRS for path in sorted(folder.rglob("*.py")) for entry in _long_functions(path)]
    assert long == []


def test_the_length_check_sees_a_long_function(tmp_path):
    for n_body, found in ((MAX_FUNCTION_LINES - 1, []), (MAX_FUNCTION_LINES, ["m.py:1 f (51 lines)"])):
        body = "\n".join(f"    x{i} = {i}" for i in range(n_body))
        (tmp_path / "m.py").write_text(f"def f():\n{body}\n")
        assert _long_functions(tmp_path / "m.py") == found


def _headings(doc: str) -> set[str]:
    text = (ROOT / "docs" / f"{doc}.md").read_text()
    return {m.group(1) for m in re.finditer(r"^#{2,4} (\d+(?:\.\d+)*)\.? ", text, flags=re.MULTILINE)}


def _cited_sections() -> list[tuple[str, str, str]]:
    """(file, doc, section) of every ``docs/method.md §x`` / ``docs/design.md §x`` reference in the repository."""
    cited = []
    files = [p for d in (*CODE_DIRS, ROOT / "tests", ROOT / "benchmarks") for p in d.rglob("*.py")]
    for path in [*files, ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for match in DOC_REF.finditer(path.read_text()):
            for section in re.findall(r"\d+(?:\.\d+)*", match.group(2)):
                cited.append((str(path.relative_to(ROOT)), match.group(1), section))
    return cited


def test_every_cited_section_exists():
    cited = _cited_sections()
    assert len(cited) > 20
    headings = {"method": _headings("method"), "design": _headings("design")}
    missing = [entry for entry in cited if entry[2] not in headings[entry[1]]]
    assert missing == []


@pytest.mark.parametrize("pattern", ["shared" + "/docs", "METHOD" + ".md", "DESIGN" + ".md", "METHOD §", "DESIGN §"])
def test_nothing_points_outside_the_repository(pattern):
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    texts = {
        name: ROOT / name
        for name in tracked
        if Path(name).suffix in TEXT_SUFFIXES and name != "tests/test_architecture.py"
    }
    hits = [name for name, path in texts.items() if path.is_file() and pattern in path.read_text(errors="ignore")]
    assert len(texts) > 100
    assert hits == []

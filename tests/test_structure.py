"""The house's structure, read from the source with `ast`: no function in vtom/*.py is longer than 80 lines.

A long function is several steps under one name; split it into named steps (small functions with type hints and a
docstring each, in the notebook that exports it) rather than raising the limit.
"""
import ast
from pathlib import Path

VTOM = Path(__file__).resolve().parents[1] / "vtom"
MAX_FUNCTION_LINES = 80


def function_lengths(path: Path) -> list[tuple[int, str, int]]:
    "(first line, qualified name, length in lines) of every function and method of one module, nested ones included."
    out = []
    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((child.lineno, prefix + child.name, child.end_lineno - child.lineno + 1))
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef): walk(child, f"{prefix}{child.name}.")
            else: walk(child, prefix)
    walk(ast.parse(path.read_text()), "")
    return out


def test_the_ast_check_measures_whole_functions(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    x = 1\n\n    return x\n\nclass C:\n    def g(self):\n        def inner(): pass\n        return 2\n")
    assert function_lengths(src) == [(1, "f", 4), (7, "C.g", 3), (8, "C.g.inner", 1)]


def test_no_function_is_over_80_lines():
    long = [f"vtom/{p.name}:{line} {name}: {n} lines" for p in sorted(VTOM.glob("*.py")) if p.name != "_modidx.py"
            for line, name, n in function_lengths(p) if n > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps in their notebooks):\n" + "\n".join(long)

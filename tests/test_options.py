"""Options declared once (issue 28): the flags every command shares are fields of `vtom.core.RunOptions` and
`vtom.registry.ModelOptions`, added to each parser by `vtom.core.add_options`; no module re-declares them by hand."""
import argparse
import ast
from pathlib import Path

from vtom.core import RunOptions, add_options
from vtom.registry import ModelOptions

VTOM = Path(__file__).resolve().parents[1] / "vtom"
SHARED = ("device", "dtype", "seed", "llm", "vision", "num_frames")


def hand_declared(folder: Path = VTOM) -> list[str]:
    "`add_argument('--device', ...)` and the like: a shared flag declared by hand."
    flags = {"--" + name.replace("_", "-") for name in SHARED}
    out = []
    for path in sorted(folder.glob("*.py")):
        for n in ast.walk(ast.parse(path.read_text())):
            if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "add_argument" and n.args
                    and isinstance(n.args[0], ast.Constant) and n.args[0].value in flags):
                out.append(f"{path.name}:{n.lineno}: {n.args[0].value}")
    return out


def option_fields(folder: Path = VTOM) -> dict[str, list[str]]:
    "Field name -> the classes that declare it with `option(...)`."
    out: dict[str, list[str]] = {}
    for path in sorted(folder.glob("*.py")):
        for cls in (n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)):
            for s in cls.body:
                if (isinstance(s, ast.AnnAssign) and isinstance(s.value, ast.Call) and isinstance(s.value.func, ast.Name)
                        and s.value.func.id == "option"):
                    out.setdefault(s.target.id, []).append(f"{path.stem}.{cls.name}")
    return out


def test_shared_flags_are_declared_once():
    fields = option_fields()
    assert {name: fields.get(name) for name in SHARED} == {"device": ["core.RunOptions"], "dtype": ["core.RunOptions"], "seed": ["core.RunOptions"],
                                                           "llm": ["registry.ModelOptions"], "vision": ["registry.ModelOptions"],
                                                           "num_frames": ["registry.ModelOptions"]}
    by_hand = hand_declared()
    assert not by_hand, "use vtom.core.add_options with RunOptions / ModelOptions:\n" + "\n".join(by_hand)


def test_the_check_finds_a_hand_declared_flag(tmp_path):
    (tmp_path / "m.py").write_text('def main(p):\n    p.add_argument("--device", default="cpu")\n    p.add_argument("--seedling")\n')
    assert hand_declared(tmp_path) == ["m.py:2: --device"]


def test_every_command_with_the_flags_parses_them():
    "The converted commands accept the shared flags with the usual spelling and defaults."
    from vtom.evaluate import _parser
    args = _parser().parse_args(["siq2", "--llm", "tiny", "--num-frames", "8", "--device", "cpu", "--seed", "3"])
    assert (args.llm, args.num_frames, args.device, args.seed, args.dtype, args.vision) == ("tiny", 8, "cpu", 3, "auto", None)
    p = add_options(add_options(argparse.ArgumentParser(), ModelOptions, ("num_frames",), num_frames=16), RunOptions, ("device",), device="cpu")
    assert vars(p.parse_args([])) == {"num_frames": 16, "device": "cpu"}

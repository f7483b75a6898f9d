"""Deliberate defaults are named once: the frames per video (`vtom.core.REFERENCE_NUM_FRAMES`, other frame counts by
name beside their code) and the default vision tower of each purpose (`vtom.registry`). These checks read vtom/*.py
and fail on a literal default in a signature, a dataclass field, an argparse parser or a `num_frames or N` fallback."""
import ast
import re
from pathlib import Path

from vtom.core import REFERENCE_NUM_FRAMES

VTOM = Path(__file__).resolve().parents[1] / "vtom"
FRAMES = re.compile(r"^(num_frames|social_frames|--num-frames|--social-frames)$")
TOWER = re.compile(r"^(hf|open_clip|random|imagenet|thumbnail):")
TOWER_HOME = "registry.py"     # the one module that spells default tower names


def _defaults(tree: ast.AST):
    "(line, name, default node) of every parameter default, dataclass field and `add_argument(..., default=)`."
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = n.args
            pos = a.posonlyargs + a.args
            for arg, d in list(zip(pos[len(pos) - len(a.defaults):], a.defaults)) + list(zip(a.kwonlyargs, a.kw_defaults)):
                if d is not None: yield d.lineno, arg.arg, d
        elif isinstance(n, ast.ClassDef):
            for s in n.body:
                if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name) and s.value is not None:
                    yield s.lineno, s.target.id, s.value
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "add_argument" and n.args:
            flag = n.args[0].value if isinstance(n.args[0], ast.Constant) else ""
            for k in n.keywords:
                if k.arg == "default": yield n.lineno, flag, k.value


def literal_defaults(folder: Path = VTOM) -> list[str]:
    "Every frame-count default written as a number and every tower default written as a name, outside their homes."
    bad = []
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text())
        for line, name, d in _defaults(tree):
            literal = d.value if isinstance(d, ast.Constant) else None
            if FRAMES.match(name) and isinstance(literal, int) and not isinstance(literal, bool):
                bad.append(f"{path.name}:{line}: {name} defaults to the literal {literal}")
            if isinstance(literal, str) and TOWER.match(literal) and path.name != TOWER_HOME:
                bad.append(f"{path.name}:{line}: {name} defaults to the tower {literal!r}")
        for n in ast.walk(tree):   # `meta.num_frames or 0` (unknown) is no default
            if (isinstance(n, ast.BoolOp) and isinstance(n.op, ast.Or) and isinstance(n.values[-1], ast.Constant)
                    and isinstance(n.values[-1].value, int) and n.values[-1].value != 0 and any("num_frames" in ast.unparse(v) for v in n.values[:-1])):
                bad.append(f"{path.name}:{n.lineno}: `{ast.unparse(n)}` falls back to a literal")
    return bad


def test_no_literal_frame_or_tower_defaults():
    bad = literal_defaults()
    assert not bad, "name the default (vtom.core.REFERENCE_NUM_FRAMES, a named constant, vtom.registry's towers):\n" + "\n".join(bad)


def test_reference_frames_defined_once():
    homes = [p.name for p in sorted(VTOM.glob("*.py")) if re.search(r"^REFERENCE_NUM_FRAMES\s*=", p.read_text(), re.M)]
    assert homes == ["core.py"] and REFERENCE_NUM_FRAMES == 100


def test_defaults_follow_the_constant():
    import inspect
    from vtom.decode import read_video
    from vtom.features import extract_to_store, features_main
    from vtom.model import VideoLLMConfig
    from vtom.registry import REFERENCE_TOWER
    assert inspect.signature(read_video).parameters["num_frames"].default == REFERENCE_NUM_FRAMES
    assert inspect.signature(extract_to_store).parameters["num_frames"].default == REFERENCE_NUM_FRAMES
    assert VideoLLMConfig().num_frames == REFERENCE_NUM_FRAMES and VideoLLMConfig().vision_name == REFERENCE_TOWER
    assert callable(features_main)


# `VideoChat(model)` without a frame count reads the frames its model was built for (not a default of a run)
FALLBACKS_ALLOWED = {"infer.py: num_frames or model.config.num_frames"}


def reference_fallbacks(folder: Path = VTOM) -> list[str]:
    "Every `x or REFERENCE_NUM_FRAMES` and `x or <something>.num_frames`: a frame count resolved outside `resolve_spec`."
    bad = []
    for path in sorted(folder.glob("*.py")):
        for n in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(n, ast.BoolOp) and isinstance(n.op, ast.Or)): continue
            last = n.values[-1]
            if f"{path.name}: {ast.unparse(n)}" in FALLBACKS_ALLOWED: continue
            if (isinstance(last, ast.Name) and last.id == "REFERENCE_NUM_FRAMES") or (isinstance(last, ast.Attribute) and last.attr == "num_frames"):
                bad.append(f"{path.name}:{n.lineno}: `{ast.unparse(n)}` resolves the frame count itself")
    return bad


def test_frames_resolved_in_one_place():
    "The frame count of a run falls back to the checkpoint's or the reference's only in `vtom.model.resolve_spec` (issue 28)."
    bad = reference_fallbacks()
    assert not bad, "resolve it with vtom.model.resolve_spec:\n" + "\n".join(bad)


def test_the_check_finds_literals(tmp_path):
    (tmp_path / "m.py").write_text('def f(num_frames: int = 100, vision: str = "random:ViT-B-32"): ...\n'
                                   'def g(p, n=None):\n    p.add_argument("--num-frames", type=int, default=32)\n    return n.num_frames or 100\n')
    assert len(literal_defaults(tmp_path)) == 4
    (tmp_path / "m.py").write_text("def f(n, cfg):\n    return n or REFERENCE_NUM_FRAMES, n or cfg.num_frames\n")
    assert len(reference_fallbacks(tmp_path)) == 2

"""The installed `vtom` console script works from a shell, not only in-process."""
import json
import subprocess
import sys
from pathlib import Path

VTOM = Path(sys.executable).parent / "vtom"


def test_help_lists_commands():
    out = subprocess.run([VTOM, "--help"], capture_output=True, text=True, check=True).stdout
    for name in ("features", "train", "chat", "eval", "synth", "bench", "run"):
        assert f"\n  {name} " in out


def test_info_resolves_embedded_llm():
    out = subprocess.run([VTOM, "info"], capture_output=True, text=True, check=True).stdout
    info = json.loads(out)
    assert (Path(info["embedded_llm"]) / "model.safetensors").is_file()


def test_unknown_command_is_a_clear_error():
    res = subprocess.run([VTOM, "frobnicate"], capture_output=True, text=True)
    assert res.returncode == 2 and "Unknown command `vtom frobnicate`" in res.stderr

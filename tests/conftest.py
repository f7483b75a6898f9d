"""Shared pytest set-up: run from the repository root, keep caches out of the user's home when asked."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


class _FakeNvdecFrame:
    "A decoded frame as PyNvVideoCodec hands it over: DLPack and `getPTS()` (here host memory instead of GPU memory)."
    def __init__(self, img, pts: int): self.img, self.pts = img, pts
    def getPTS(self) -> int: return self.pts
    def __dlpack__(self, **kw): return self.img.__dlpack__(**kw)
    def __dlpack_device__(self): return self.img.__dlpack_device__()


class FakeNvdec:
    "PyNvVideoCodec's SimpleDecoder as vtom uses it, on the CPU: frames by index (decoded by PyAV), `pts_shift` misplaces them."
    calls = 0
    pyav = None   # the real PyAV decoder, kept by the fixture (a test may replace the module's to fake a wrong reference)

    def __init__(self, path, pts_shift: int = 0):
        from vtom import decode as D
        self.path, self.ix, self.pts_shift = path, D._scan(path), pts_shift

    def __len__(self) -> int: return len(self.ix.pts)

    def get_batch_frames_by_index(self, indices):
        import numpy as np
        FakeNvdec.calls += 1
        imgs = FakeNvdec.pyav(self.path, self.ix, np.asarray(indices), None, "nearest")
        return [_FakeNvdecFrame(img, self.ix.pts[min(i + self.pts_shift, len(self.ix.pts) - 1)]) for i, img in zip(indices, imgs)]


@pytest.fixture
def fake_nvdec(monkeypatch):
    "The nvdec backend on this machine with a fake PyNvVideoCodec decoder (no GPU needed): returns the fake's class."
    from vtom import decode as D
    real = D.backend_problem
    monkeypatch.setattr(D, "backend_problem", lambda name: None if name == "nvdec" else real(name))
    monkeypatch.setattr(D, "_nvdec_decoder", lambda path: FakeNvdec(path))
    FakeNvdec.calls, FakeNvdec.pyav = 0, staticmethod(D._decode_pyav)
    return FakeNvdec

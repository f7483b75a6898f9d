"""Unit tests for vtom.experiments: per-frame facts, probes, the thumbnail tower by name."""
import numpy as np
import torch


def test_frame_facts():
    from vtom.experiments import frame_facts
    ev = {"layout": {"containers": [{"name": "red box", "x": 150}, {"name": "blue jar", "x": 20}]},
          "frames": {"t": [0, 1, 2, 3], "location": ["red box", "held:B", "blue jar", "blue jar"], "visible": [False, True, True, False],
                     "present_A": [True, True, False, True], "sees_scene_A": [True, False, False, True],
                     "belief_false_A": [False, False, True, True]}}
    f = frame_facts(ev, [0.0, 1.4, 2.1])                    # nearest event frames 0, 1, 2
    assert f["object_slot"] == ["slot1", "held", "slot0"]   # slots ordered by x: blue jar (x=20) is slot0
    assert f["object_slot_when_visible"] == [None, "held", "slot0"] and f["A_belief_false"] == [False, False, True]
    assert frame_facts(ev, [2.6])["object_slot_when_visible"] == [None]


def test_linear_probe_finds_a_linear_fact():
    from vtom.experiments import linear_probe
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 10, generator=g); y = (x[:, 3] > 0).long().tolist()
    r = linear_probe(x[:200], y[:200], x[200:], y[200:])
    assert r["accuracy"] > 0.9 and r["majority"] < 0.7


def test_thumbnail_tower_is_registered():
    from vtom.features import load_vision_tower, list_towers
    t = load_vision_tower("thumbnail:7", device="cpu")
    px = torch.zeros(1, 3, 224, 224); px[0, 0] = 1.0
    tok = t.encode(px)
    assert "thumbnail:14" in list_towers() and tok.shape == (1, 49, 147)
    assert torch.allclose(tok.mean(1)[0].reshape(49, 3), torch.tensor([1.0, 0, 0]).expand(49, 3))

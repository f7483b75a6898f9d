"""Unit tests of vtom.model that are awkward in a notebook: error paths, batching edge cases, and the real embedded LM."""
import pytest
import torch

from vtom.core import VtomError
from vtom.model import (IGNORE_INDEX, VID_PATCH_TOKEN, VID_START_TOKEN, VIDEO_TOKEN, ModelLoadError, VideoLLM, VideoLLMConfig, add_video_tokens, build_prompt,
                        load_llm, pad_batch, tiny_llm, tokenize_conversation)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    lm, tok = load_llm("tiny", device="cpu")
    cfg = VideoLLMConfig(lm_name="tiny", vision_hidden_size=16, num_frames=3, num_spatial_tokens=4)
    return VideoLLM(cfg, lm, tok)


def test_config_validates_and_round_trips():
    cfg = VideoLLMConfig(projector_type="mlp2", template="vicuna_v1_1")
    assert VideoLLMConfig.from_dict(cfg.to_dict()) == cfg and cfg.num_video_tokens == 356
    with pytest.raises(VtomError): VideoLLMConfig(projector_type="qformer")
    with pytest.raises(VtomError): VideoLLMConfig(template="alpaca")


def test_batch_generation_matches_single_items(tiny):
    feats = torch.randn(2, tiny.num_video_tokens, 16)
    questions = ["Why is the woman in the red coat surprised?", "Hi"]
    batch = tiny.prepare_inputs(questions, feats)
    together = tiny.generate(**batch, max_new_tokens=5, min_new_tokens=5)
    for i, q in enumerate(questions):
        alone = tiny.generate(**tiny.prepare_inputs([q], feats[i:i + 1]), max_new_tokens=5, min_new_tokens=5)
        assert torch.equal(together[i], alone[0])


def test_features_for_video_rows_only(tiny):
    feats = torch.randn(1, tiny.num_video_tokens, 16)
    full = torch.cat([feats, torch.zeros_like(feats)])
    a = tiny.prepare_inputs(["With video", "Without"], full, has_video=[True, False])
    b = dict(a, video_features=feats)  # one entry per video row is accepted too
    with torch.no_grad(): assert torch.equal(tiny(**a).logits, tiny(**b).logits)
    assert (a["input_ids"][1] == tiny.token_ids[VID_PATCH_TOKEN]).sum() == 0


def test_clear_errors(tiny):
    tok = tiny.tokenizer
    ids = tok(f"look {VIDEO_TOKEN}", return_tensors="pt")["input_ids"]
    with pytest.raises(VtomError, match="unexpanded"): tiny(ids)
    batch = tiny.prepare_inputs(["q"], torch.randn(1, tiny.num_video_tokens, 16))
    with pytest.raises(VtomError, match="no video_features"): tiny(batch["input_ids"])
    with pytest.raises(VtomError, match="num_video_tokens"): tiny(**dict(batch, video_features=torch.randn(1, 5, 16)))
    with pytest.raises(VtomError, match="wide"): tiny(**dict(batch, video_features=torch.randn(1, tiny.num_video_tokens, 8)))
    conv = [{"role": "user", "content": "a " * 20 + VIDEO_TOKEN}, {"role": "assistant", "content": "b"}]
    first_patch = tokenize_conversation(tok, conv, "chat", 40)["input_ids"].tolist().index(tiny.token_ids[VID_PATCH_TOKEN])
    with pytest.raises(VtomError, match="max_length"): tokenize_conversation(tok, conv, "chat", 40, max_length=first_patch + 5)
    assert len(tokenize_conversation(tok, conv, "chat", 40, max_length=first_patch - 1)["input_ids"]) == first_patch - 1
    with pytest.raises(VtomError): build_prompt([{"role": "assistant", "content": "x"}], "vicuna_v1_1")
    with pytest.raises(VtomError, match="template"): build_prompt([{"role": "user", "content": "x"}], "chat")
    with pytest.raises(ModelLoadError, match="does not exist"): load_llm("./no/such/dir")


def test_frozen_rows_and_mlp2_and_checkpointing():
    lm, tok = tiny_llm()
    cfg = VideoLLMConfig(vision_hidden_size=16, num_frames=3, num_spatial_tokens=4, projector_type="mlp2", tune_video_embeddings=False)
    model = VideoLLM(cfg, lm, tok)
    model.gradient_checkpointing_enable()
    model.train()
    item = tokenize_conversation(tok, [{"role": "user", "content": "<video> why?"}, {"role": "assistant", "content": "because"}], "chat", 7)
    batch = pad_batch([dict(item, video_features=torch.randn(7, 16))], tok.pad_token_id)
    torch.nn.init.normal_(model.projector[2].weight, std=0.1)  # as after one optimizer step (the output layer starts at zero)
    model(**batch).loss.backward()
    assert set(model.trainable_parameters()) == {"projector.0.weight", "projector.0.bias", "projector.2.weight", "projector.2.bias"}
    assert model.projector[0].weight.grad.abs().sum() > 0 and model.video_embeddings.grad is None
    assert all(p.grad is None for p in lm.parameters())


def test_labels_with_a_llama_style_sep_template(tiny):
    tok = tiny.tokenizer
    conv = [{"from": "human", "value": "Who hid the ball?\n<video>"}, {"from": "gpt", "value": "Sally did."}]
    enc = tokenize_conversation(tok, conv, "vicuna_v1_1", 7)
    kept = enc["labels"][enc["labels"] != IGNORE_INDEX]
    assert tok.decode(kept).strip() == "Sally did." + tok.eos_token
    assert (enc["input_ids"] == tiny.token_ids[VID_PATCH_TOKEN]).sum() == 7


def test_embedded_smollm2_offline():
    "The real embedded LM: loads without network, answers a text-only question, and runs a forward with video tokens."
    lm, tok = load_llm("embedded", device="cpu")
    model = VideoLLM(VideoLLMConfig(vision_hidden_size=32, num_frames=4, num_spatial_tokens=8), lm, tok)
    reply = model.answer("What is the capital of France? Answer in one word.", max_new_tokens=8)
    assert "paris" in reply.lower(), reply
    batch = model.prepare_inputs(["What is happening?"], torch.randn(1, 12, 32))
    with torch.no_grad(): out = model(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(out.logits).all()
    assert model.generate(**batch, max_new_tokens=4, min_new_tokens=4).shape == (1, 4)


def test_text_only_batch_keeps_projector_in_graph(tiny):
    "DDP needs every trainable parameter in the graph: a text-only training batch gives the projector a zero gradient."
    tok = tiny.tokenizer
    item = tokenize_conversation(tok, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], "chat", None)
    batch = pad_batch([item], tok.pad_token_id)
    tiny.train()
    try:
        tiny.zero_grad()
        tiny(**batch).loss.backward()
        assert tiny.projector.weight.grad is not None and tiny.projector.weight.grad.abs().sum() == 0
    finally:
        tiny.eval(); tiny.zero_grad()


def test_add_video_tokens_is_idempotent_and_never_rebuilds_the_vocabulary(monkeypatch):
    _, tok = load_llm("tiny", device="cpu")
    ids, n = add_video_tokens(tok), len(tok)
    def no_full_vocab(self): raise AssertionError("get_vocab() rebuilds the whole vocabulary; tokenising must not call it")
    monkeypatch.setattr(type(tok), "get_vocab", no_full_vocab)
    assert add_video_tokens(tok) == ids and len(tok) == n and len(set(ids.values())) == 4
    enc = tokenize_conversation(tok, [{"role": "user", "content": f"{VIDEO_TOKEN} hi"}, {"role": "assistant", "content": "ok"}],
                                "vicuna_v1_1", num_video_tokens=3)
    assert (enc["input_ids"] == ids[VID_PATCH_TOKEN]).sum() == 3


def test_temporal_projector_trains_saves_and_reloads(tmp_path):
    "A temporal VideoLLM: gradients reach the mixer, save_pretrained/from_pretrained restores the same logits, order matters."
    lm, tok = tiny_llm()
    cfg = VideoLLMConfig(lm_name="tiny", vision_hidden_size=16, num_frames=3, num_spatial_tokens=4, projector_type="temporal")
    model = VideoLLM(cfg, lm, tok).train()
    item = tokenize_conversation(tok, [{"role": "user", "content": "<video> why?"}, {"role": "assistant", "content": "because"}], "chat", 7)
    feats = torch.randn(7, 16)
    batch = pad_batch([dict(item, video_features=feats)], tok.pad_token_id)
    model(**batch).loss.backward()
    assert model.projector.up.weight.grad.abs().sum() > 0  # zero-initialised, but it learns
    with torch.no_grad(): torch.nn.init.normal_(model.projector.up.weight, std=0.5)
    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits
        shuffled = dict(batch, video_features=feats[[2, 0, 1, 3, 4, 5, 6]][None])
        assert not torch.allclose(model(**shuffled).logits, logits)
    model.save_pretrained(tmp_path)
    again = VideoLLM.from_pretrained(tmp_path, lm=lm, tokenizer=tok, device="cpu")
    with torch.no_grad(): torch.testing.assert_close(again(**batch).logits, logits)


@pytest.mark.parametrize("kind", ["linear", "mlp2", "temporal", "graph"])
def test_untrained_projector_emits_zero_tokens(kind):
    "An untrained model puts zero vectors at the video positions (random ones derailed the LM), and still trains."
    lm, tok = tiny_llm()
    model = VideoLLM(VideoLLMConfig(vision_hidden_size=16, num_frames=3, num_spatial_tokens=4, projector_type=kind, graph_cells=4), lm, tok)
    with torch.no_grad(): assert torch.equal(model.projector(torch.randn(2, 7, 16)), torch.zeros(2, 7, model.hidden_size))
    item = tokenize_conversation(tok, [{"role": "user", "content": "<video> why?"}, {"role": "assistant", "content": "because"}], "chat", 7)
    model.train()(**pad_batch([dict(item, video_features=torch.randn(7, 16))], tok.pad_token_id)).loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.startswith("projector."))


def test_graph_projector_on_a_tiny_config(tmp_path):
    "graph: shapes, gradients reach the slots and the message passing, frame order matters (a bag's does not), checkpoint round trip."
    from vtom.model import build_projector
    lm, tok = tiny_llm()
    cfg = VideoLLMConfig(lm_name="tiny", vision_hidden_size=4 * 5, num_frames=3, num_spatial_tokens=1, projector_type="graph", graph_cells=4)
    model = VideoLLM(cfg, lm, tok).train()
    item = tokenize_conversation(tok, [{"role": "user", "content": "<video> why?"}, {"role": "assistant", "content": "because"}], "chat", 4)
    feats = torch.randn(4, 20)
    batch = pad_batch([dict(item, video_features=feats)], tok.pad_token_id)
    model(**batch).loss.backward()
    assert model.projector.up.weight.grad.abs().sum() > 0
    with torch.no_grad(): torch.nn.init.normal_(model.projector.up.weight, std=0.5)
    model(**batch).loss.backward()
    for name in ("queries", "cell_in.weight", "edge.0.0.weight", "along.0.weight_hh_l0"):
        assert model.projector.get_parameter(name).grad.abs().sum() > 0, name
    model.eval()
    perm = [2, 0, 1, 3]
    with torch.no_grad():
        proj = model.projector(feats[None])
        assert proj.shape == (1, 4, model.hidden_size)
        assert not torch.allclose(model.projector(feats[perm][None]), proj[:, perm], atol=1e-4)   # graph: order-aware
        bag = build_projector("linear", 20, 8)
        torch.testing.assert_close(bag(feats[perm]), bag(feats)[perm])                           # bag: equivariant
        logits = model(**batch).logits
    model.save_pretrained(tmp_path)
    again = VideoLLM.from_pretrained(tmp_path, lm=lm, tokenizer=tok, device="cpu")
    assert again.config.graph_cells == 4
    with torch.no_grad(): torch.testing.assert_close(again(**batch).logits, logits)


def test_social_tokens_shapes_splice_and_checkpoint_round_trip(tmp_path):
    "social_dim > 0: the social projector adds per-frame offsets to the temporal rows only, trains, and survives save/load; mismatches are refused."
    from vtom.model import SocialProjector, add_social_tokens
    lm, tok = tiny_llm()
    cfg = VideoLLMConfig(lm_name="tiny", vision_hidden_size=16, num_frames=3, num_spatial_tokens=4, social_dim=5)
    model = VideoLLM(cfg, lm, tok)
    sp = model.social_projector
    assert isinstance(sp, SocialProjector) and sp(torch.rand(2, 3, 5)).shape == (2, 3, model.hidden_size)
    assert add_social_tokens(torch.zeros(2, 7, 4), torch.ones(2, 3, 4)).sum(-1).tolist() == [[4, 4, 4, 0, 0, 0, 0]] * 2
    with pytest.raises(VtomError): add_social_tokens(torch.zeros(1, 2, 4), torch.ones(1, 3, 4))
    item = tokenize_conversation(tok, [{"role": "user", "content": "<video> why?"}, {"role": "assistant", "content": "because"}], "chat", 7)
    sig = torch.rand(3, 5); sig[:, 0] = 1; sig[2] = 0          # two sampled frames and a padding row
    batch = pad_batch([dict(item, video_features=torch.randn(7, 16), social_signals=sig)], tok.pad_token_id)
    assert batch["social_signals"].shape == (1, 3, 5)
    model.train()(**batch).loss.backward()
    assert sp.mlp[2].weight.grad.abs().sum() > 0                # zero-initialised, but it learns
    with torch.no_grad(): torch.nn.init.normal_(sp.mlp[2].weight)
    model.eval()
    with torch.no_grad():
        a = model.embed_inputs(batch["input_ids"], batch["video_features"], social_signals=batch["social_signals"])
        b = model.embed_inputs(batch["input_ids"], batch["video_features"])
        rows = (batch["input_ids"][0] == model.token_ids[VID_PATCH_TOKEN]).nonzero().flatten()
        assert torch.equal((a - b)[0].abs().sum(-1).nonzero().flatten(), rows[:2])   # the 2 sampled frames' temporal tokens
        logits = model(**batch).logits
        with pytest.raises(VtomError, match="columns"): model.embed_inputs(batch["input_ids"], batch["video_features"], social_signals=torch.rand(1, 3, 4))
    model.save_pretrained(tmp_path / "ck")
    again = VideoLLM.from_pretrained(tmp_path / "ck", lm=lm, tokenizer=tok, device="cpu")
    assert again.config == cfg
    with torch.no_grad(): torch.testing.assert_close(again(**batch).logits, logits)
    plain = VideoLLM(VideoLLMConfig(lm_name="tiny", vision_hidden_size=16, num_frames=3, num_spatial_tokens=4), lm, tok)
    with pytest.raises(ModelLoadError, match="social projector"): plain.load_weights(tmp_path / "ck")
    with pytest.raises(VtomError, match="--social-store"): plain(**batch)


def _kept_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    "Tensors `model` keeps outside its parameters and buffers: plain attributes of any submodule, and what its hooks captured."
    from torch.utils.hooks import RemovableHandle
    found = []
    def captured(where, fn):
        fn = getattr(fn, "func", fn)  # a functools.partial
        cells = [c.cell_contents for c in getattr(fn, "__closure__", None) or () if c.cell_contents is not None]
        found.extend((where, v) for v in cells + list(getattr(fn, "__defaults__", None) or ()) if isinstance(v, torch.Tensor))
    for name, mod in model.named_modules():
        for key, val in vars(mod).items():
            if isinstance(val, torch.Tensor): found.append((f"{name}.{key}", val))
            elif isinstance(val, RemovableHandle) and (hooks := val.hooks_dict_ref()) is not None:
                for fn in hooks.values(): captured(f"{name}.{key}", fn)
        for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            for fn in (getattr(mod, kind, None) or {}).values(): captured(f"{name}.{kind}", fn)
    return found


@pytest.mark.parametrize("projector_type", ["linear", "temporal"])
def test_everything_the_model_keeps_follows_to_and_backward_runs(projector_type):
    "Regression (issue 25): the video_embeddings gradient hook kept a CPU float32 mask, so `.to(cuda)` training crashed."
    lm, tok = tiny_llm()
    cfg = VideoLLMConfig(vision_hidden_size=16, num_frames=3, num_spatial_tokens=4, projector_type=projector_type, social_dim=5)
    model = VideoLLM(cfg, lm, tok)
    item = tokenize_conversation(tok, [{"role": "user", "content": "<video> why?"}, {"role": "assistant", "content": "because"}], "chat", 7)
    batch = pad_batch([dict(item, video_features=torch.randn(7, 16))], tok.pad_token_id)
    model.to(torch.float64).train()   # a second dtype: a full forward and backward on the CPU
    model(**batch).loss.backward()
    g, rows = model.video_embeddings.grad, model._row
    assert g.dtype == torch.float64 and g[rows[VID_PATCH_TOKEN]].abs().sum() == 0 and g[rows[VIDEO_TOKEN]].abs().sum() == 0
    assert g[rows[VID_START_TOKEN]].abs().sum() > 0 and all(p.grad is not None for p in model.projector.parameters())
    for where, t in _kept_tensors(model):
        assert t.device == model.device and (not t.is_floating_point() or t.dtype == torch.float64), f"{where} stayed {t.device} {t.dtype}"
    model.to("meta")                  # another device: the hook runs on a meta gradient, and nothing kept stayed behind
    model.zero_grad(set_to_none=True)
    (model.video_embeddings * 2).sum().backward()
    assert model.video_embeddings.grad.device.type == "meta"
    for where, t in _kept_tensors(model): assert t.device.type == "meta", f"{where} stayed on {t.device}"

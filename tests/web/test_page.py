"""The page as a person uses it, in a real headless Chromium (Debian's `chromium`, driven by Playwright):
load a YAML into the form, see a wrong value rejected beside its field, fix it, launch, watch the
table and the curves grow, stop the run (a checkpoint appears), resume it to the end."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WAIT_MS = 90_000  # the bound on any wait for the page


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed: `make test` installs it with apt-get (apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    root, port = tmp_path / "runs", free_port()
    log = open(tmp_path / "web.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "ember", "web", "--runs", str(root), "--port", str(port)],
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise AssertionError("ember web did not serve: " + (tmp_path / "web.log").read_text()[-2000:])
            time.sleep(0.5)
    yield url, root
    proc.terminate()
    proc.wait(timeout=20)
    log.close()
    for lock in root.glob("*/.ember.lock"):  # a run the test left going: stop it
        pid = lock.read_text().strip()
        if pid.isdigit():
            try:
                os.kill(int(pid), 15)
            except ProcessLookupError:
                pass


def row_of(page, run: str) -> list[str]:
    """The runs table's cells for one run (empty when it is not listed yet)."""
    return [c.strip() for c in page.locator(f'#runs-table tr[data-run="{run}"] td').all_inner_texts()]


def wait_row(page, run: str, predicate, what: str, seconds: float = WAIT_MS / 1000) -> list[str]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        cells = row_of(page, run)
        if cells and predicate(cells):
            return cells
        page.wait_for_timeout(500)
    raise AssertionError(f"gave up waiting for {what}; the row reads {row_of(page, run)}")


def field(page, key: str):
    return page.locator(f"#field-{key}").locator("textarea, input").first


def test_configure_launch_watch_stop_resume(server, browser, corpus_dir, tokenizer_dir, tmp_path):
    url, root = server
    shots = Path(os.environ.get("EMBER_WEB_SHOTS", tmp_path))
    config = {"model_config": "llama-tiny", "tokenizer_name_or_path": str(tokenizer_dir), "dataset": "tiny_text",
              "dataset_dir": str(corpus_dir), "cutoff_len": 32, "per_device_train_batch_size": 2,
              "learning_rate": -1, "max_steps": 2000, "logging_steps": 10, "save_steps": 1000, "val_size": 8,
              "eval_steps": 1000, "disable_tqdm": True, "output_dir": str(root / "e2e")}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(config))
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    page.goto(url)
    page.locator("#runs-table").wait_for()  # the page opens on Watch

    page.locator("#tab-configure-button").click()
    page.locator("#load-yaml input[type=file]").set_input_files(str(tmp_path / "mine.yaml"))
    status = page.locator("#form-status")
    status.filter(has_text="learning_rate: input should be greater than 0").wait_for()
    page.locator(".field-error", has_text="learning_rate").first.wait_for()  # shown in the field's own group, opened
    assert "--learning_rate -1.0" in page.locator("#command").inner_text()
    page.locator("#launch-btn").click()
    page.locator("#launch-message", has_text="not launched: learning_rate").wait_for()
    assert not (root / ".queue").exists() or not list((root / ".queue").glob("*.json"))  # a bad form never starts

    field(page, "learning_rate").fill("0.001")
    status.filter(has_text="accepts this config").wait_for()
    assert "learning_rate: 0.001" in page.locator("#yaml-view").inner_text()
    page.locator("#dataset-preview").get_by_text("text", exact=True).first.wait_for()  # first rows of the dataset
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(shots / "web_configure.png"), full_page=False)
    page.locator("#launch-btn").click()

    page.locator("#tab-watch[role=tabpanel]").wait_for()  # launching switches to Watch
    first = wait_row(page, "e2e", lambda c: c[1] == "running" and int(c[2] or 0) >= 10, "the run to log steps")
    curve = page.locator("#curves img").first
    curve.wait_for()
    before = curve.get_attribute("src")
    wait_row(page, "e2e", lambda c: int(c[2] or 0) > int(first[2]), "the step to grow")
    page.wait_for_function("([el, src]) => el && el.getAttribute('src') !== src",
                           arg=[curve.element_handle(), before])  # the curve redrew with new points
    page.screenshot(path=str(shots / "web_watch.png"), full_page=True)

    page.locator("#stop-btn").click()
    page.locator("#control-message", has_text="sent SIGTERM").wait_for()
    stopped = wait_row(page, "e2e", lambda c: c[1] == "stopped", "the run to stop")
    step = int(stopped[2])
    assert step < 2000
    page.locator("#ckpt-table tr[data-run]").first.wait_for()  # a checkpoint appears
    saved = [p.name for p in (root / "e2e").glob("checkpoint-*")]
    assert saved, "stopping wrote no checkpoint"
    assert "stopped by SIGTERM" in page.locator("#log-tail textarea").input_value()

    page.locator("#resume-btn").click()
    page.locator("#control-message", has_text="queued: resume").wait_for()
    # the rest of the run: a minute on a quiet machine, several while the rest of the suite competes
    done = wait_row(page, "e2e", lambda c: c[1] in ("finished", "failed"), "the resumed run to end", seconds=600)
    assert done[1] == "finished" and done[2] == "2000", done
    assert (root / "e2e" / "model.safetensors").exists()
    page.locator("#ckpt-table").get_by_text("★ best").wait_for()


def test_refuses_other_hosts_without_a_token(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ember", "web", "--runs", str(tmp_path), "--host", "0.0.0.0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--token" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def pick(page, dropdown_id: str, option: str) -> None:
    """Choose an option of a Gradio dropdown as a person does: open it, click the entry."""
    page.locator(f"#{dropdown_id} input").first.click()
    page.get_by_role("option", name=option, exact=True).click()


def test_vae_reconstruction_plays_in_the_page(server, browser, tmp_path, one_thread):
    """A video VAE run made on the command line shows up on Watch; choosing it puts its evaluation's
    reconstruction clip (original | reconstruction) in a <video> the browser can load."""
    from ember.cli import main
    from ember.tasks.video_vae.synth import write_demo_videos

    url, root = server
    write_demo_videos(tmp_path / "clips", 3, num_frames=6, size=16, seed=0)
    assert main(["train", "--task", "video_vae", "--model_config", "causal_vae-tiny", "--video_path",
                 str(tmp_path / "clips"), "--val_size", "1", "--video_num_frames", "5", "--resolution", "16",
                 "--batch_size", "2", "--max_steps", "1", "--eval_steps", "1", "--save_steps", "0",
                 "--logging_steps", "1", "--output_dir", str(root / "vae"), "--disable_tqdm", "true",
                 "--perceptual_weight", "0"]) == 0  # the reference's LPIPS term needs VGG16 weights
    clips = [p.name for p in (root / "vae" / "reconstructions").glob("*-clip*.mp4")]
    assert clips, "the evaluation wrote no reconstruction clip"

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    page.goto(url)
    wait_row(page, "vae", lambda c: c[1] == "finished", "the VAE run to be listed as finished")
    pick(page, "focus-run", "vae")
    video = page.locator("#recon-clip video").first
    video.wait_for()
    page.wait_for_function("el => el.currentSrc || el.getAttribute('src')", arg=video.element_handle())
    src = video.evaluate("el => el.currentSrc || el.getAttribute('src')")
    assert any(src.endswith(name) for name in clips), (src, clips)
    # the browser fetched the file and decoded its header: it knows the clip's length and size
    page.wait_for_function("el => el.readyState >= 1 && el.duration > 0", arg=video.element_handle())
    assert video.evaluate("el => el.videoWidth") == 32  # 16 px original beside its 16 px reconstruction


def test_try_generates_text_from_a_finished_run(server, browser, make_config, train):
    """A finished tiny causal-LM run (a real short training) is offered on Try; Generate shows in the page
    exactly the text `ember generate` makes from that folder (greedy, so there is one right answer)."""
    import torch

    from ember.models.hf import load_causal_lm, load_tokenizer

    url, root = server
    train(make_config(output_dir=str(root / "lm"), max_steps=4, logging_steps=2))
    prompt, new = "The", 12
    tokenizer, model = load_tokenizer(str(root / "lm"), "model"), load_causal_lm(str(root / "lm")).eval()
    with torch.no_grad():
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=new, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(out[0], skip_special_tokens=True)

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    page.goto(url)
    page.locator("#runs-table").wait_for()
    page.locator("#tab-try-button").click()
    pick(page, "try-lm-run", "lm")
    page.locator("#try-prompt textarea").fill(prompt)
    page.get_by_label("number input for max_new_tokens").fill(str(new))
    page.get_by_label("number input for temperature (0 = greedy)").fill("0")
    page.locator("#try-generate").click()
    output = page.locator("#try-output textarea")
    page.wait_for_function("el => el.value.length > 0", arg=output.element_handle())
    assert output.input_value() == expected

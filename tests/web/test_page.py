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


def wait_row(page, run: str, predicate, what: str) -> list[str]:
    deadline = time.monotonic() + WAIT_MS / 1000
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
              "learning_rate": -1, "max_steps": 3000, "logging_steps": 10, "save_steps": 1000, "val_size": 8,
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
    assert step < 3000
    page.locator("#ckpt-table tr[data-run]").first.wait_for()  # a checkpoint appears
    saved = [p.name for p in (root / "e2e").glob("checkpoint-*")]
    assert saved, "stopping wrote no checkpoint"
    assert "stopped by SIGTERM" in page.locator("#log-tail textarea").input_value()

    page.locator("#resume-btn").click()
    page.locator("#control-message", has_text="queued: resume").wait_for()
    done = wait_row(page, "e2e", lambda c: c[1] in ("finished", "failed"), "the resumed run to end")
    assert done[1] == "finished" and done[2] == "3000", done
    assert (root / "e2e" / "model.safetensors").exists()
    page.locator("#ckpt-table").get_by_text("★ best").wait_for()


def test_refuses_other_hosts_without_a_token(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ember", "web", "--runs", str(tmp_path), "--host", "0.0.0.0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--token" in out.stderr and len(out.stderr.strip().splitlines()) == 1

"""The web demo end to end: a real server on a loopback port, driven over HTTP and from a real browser.

What is checked, with a smoke model trained for a few steps here:
1. API (gradio_client): the mask equals ``tools/predict.py``'s for the same image, labels and
   protocol (single pass; multi-scale + flip), pixel for pixel and id for id; the shares sum to 100 %.
2. Browser (Debian's headless Chromium + chromedriver, Selenium): upload, type labels, segment; the
   outputs have the image's size and the shares list the typed labels; an example and a label
   preset fill the form; refused input (not an image, no labels, too many labels, a label too long,
   an upload over the cap) is a message in the page, an image over the pixel budget is downscaled
   with a note, and the server keeps serving throughout.
3. Load: 20 requests from 4 concurrent clients all succeed within a bound, with equal answers.
4. Cluster: ``--submit`` on the real Slurm test cluster and through submitit's local executor:
   the job publishes where it serves, the tunnel command is printed, and the page answers.

The browser tests skip where Chromium is missing (run tests/ci_setup.sh browser), except under CI.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from lseg.inference import OFFICIAL_SCALES
from lseg.visualize import label_shares, palette

from helpers import ADE_DIR, REPO, free_port, run_train, skip_or_fail_in_ci, start_app, stop_app


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
MAX_PIXELS, MAX_LABELS, MAX_UPLOAD_MB = 200_000, 8, 1
LIMITS = ["--max-pixels", str(MAX_PIXELS), "--max-labels", str(MAX_LABELS), "--max-upload-mb", str(MAX_UPLOAD_MB)]
LABELS = ["sky", "grass", "house", "water", "other"]
ASSETS = REPO / "lseg" / "app" / "assets"
WAIT_S = 120  # a request on 2 busy cores, with the page's own start-up


@pytest.fixture(scope="module")
def app_extra() -> None:
    try:
        import gradio  # noqa: F401
        import gradio_client  # noqa: F401
    except ImportError:
        skip_or_fail_in_ci("the app extra is not installed: pip install -e '.[app]'")


@pytest.fixture(scope="module")
def trained(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smoke checkpoint trained for 6 steps (its run dir also holds class_names.txt)."""
    run = tmp_path_factory.mktemp("app_run") / "run"
    run_train(run, synthetic_root, "train.max_steps=6", "eval.max_samples=2")
    return run / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def server(app_extra, trained: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("app") / "app.log"
    proc, url = start_app(trained, log, *LIMITS)
    yield SimpleNamespace(url=url, log=log)
    assert stop_app(proc) == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def segment_api(url: str, image: Path, labels: str, multiscale: bool = False, heat_label: str = ""):
    from gradio_client import Client, handle_file

    return Client(url, verbose=False).predict(handle_file(str(image)), labels, multiscale, heat_label,
                                              api_name="/segment")


def ids_from_mask(mask: np.ndarray, num_labels: int) -> np.ndarray:
    """Invert the palette: (H, W, 3) colours -> label ids (-1 where no label's colour)."""
    ids = np.full(mask.shape[:2], -1, dtype=np.int64)
    for i, colour in enumerate(palette(num_labels)):
        ids[(mask == colour).all(-1)] = i
    return ids


def val_image(root: Path) -> Path:
    return sorted((root / ADE_DIR / "images" / "validation").iterdir())[0]


# ----------------------------------------------------------------------------------------- API


@pytest.mark.slow
@pytest.mark.parametrize("multiscale", [False, True], ids=["single", "multiscale_flip"])
def test_api_mask_equals_the_predict_tool(server, trained: Path, synthetic_root: Path, tmp_path: Path,
                                          multiscale: bool) -> None:
    image = val_image(synthetic_root)
    mask, overlay, heat, shares, info = segment_api(server.url, image, ", ".join(LABELS), multiscale, "grass")
    protocol = ["--scales", *map(str, OFFICIAL_SCALES), "--flip"] if multiscale else []
    subprocess.run([sys.executable, str(REPO / "tools" / "predict.py"), "--checkpoint", str(trained),
                    "--image", str(image), "--labels", ",".join(LABELS), "--output", str(tmp_path), *protocol],
                   check=True, capture_output=True, timeout=300)
    want_mask = np.asarray(Image.open(tmp_path / f"{image.stem}_mask.png").convert("RGB"))
    want_ids = np.asarray(Image.open(tmp_path / f"{image.stem}_ids.png")).astype(np.int64)
    got_mask = np.asarray(Image.open(mask).convert("RGB"))
    np.testing.assert_array_equal(got_mask, want_mask)
    np.testing.assert_array_equal(ids_from_mask(got_mask, len(LABELS)), want_ids)
    assert len(np.unique(want_ids)) >= 2  # a comparison that could fail
    assert list(shares) == LABELS
    assert abs(sum(shares.values()) - 100) <= 0.005 * len(LABELS)  # each share is rounded to 0.01
    assert shares == {k: round(100 * s, 2) for k, s in zip(LABELS, label_shares(want_ids, len(LABELS)))}
    w, h = Image.open(image).size
    assert Image.open(heat).size == (w, h)
    assert Image.open(overlay).width == w and Image.open(overlay).height > h  # legend underneath
    assert re.search(r"\*\*\d+ ms\*\* inference \(cpu, fp32, " + ("multi-scale \\+ flip" if multiscale else
                                                                  "single pass"), info), info
    assert "similarity to *grass*" in info


# ------------------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser(app_extra):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if missing:
        skip_or_fail_in_ci(f"{', '.join(missing)} missing: run tests/ci_setup.sh browser")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        skip_or_fail_in_ci("selenium is not installed: pip install -e '.[test]'")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    # Root in a container needs --no-sandbox; the resolver rule keeps the page on loopback (any
    # request for another host fails at once instead of waiting for a network that is not there).
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1500", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


class Page:
    """The demo page in the browser, in the words of its users."""

    def __init__(self, driver, url: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.d, self.By = driver, By
        self.wait = WebDriverWait(driver, WAIT_S)
        driver.get(url)
        self.wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#run"))

    def find(self, css: str):
        return self.d.find_element(self.By.CSS_SELECTOR, css)

    def upload(self, path: Path) -> None:
        self.find("#image input[type=file]").send_keys(str(path))

    def type_labels(self, text: str) -> None:
        from selenium.webdriver.common.keys import Keys

        box = self.find("#labels textarea")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        if text:
            box.send_keys(text)

    def labels(self) -> str:
        return self.find("#labels textarea").get_property("value")

    def info(self) -> str:
        return self.find("#info").text

    def segment(self) -> str:
        """Click Segment and wait for a new answer; the info text."""
        before = self.info()
        self.find("#run").click()
        self.wait.until(lambda d: "ms inference" in self.info() and self.info() != before)
        return self.info()

    def refused(self) -> str:
        """Click Segment and wait for the error message; its text (the message is then closed)."""
        self.find("#run").click()
        return self.toast()

    def toast(self) -> str:
        self.wait.until(lambda d: d.find_elements(self.By.CSS_SELECTOR, "[data-testid='toast-text']"))
        text = " ".join(e.get_property("textContent")  # .text is empty while the message fades in
                        for e in self.d.find_elements(self.By.CSS_SELECTOR, "[data-testid='toast-text']"))
        for close in self.d.find_elements(self.By.CSS_SELECTOR, "[data-testid='toast-close']"):
            close.click()
        self.wait.until(lambda d: not d.find_elements(self.By.CSS_SELECTOR, "[data-testid='toast-text']"))
        return text

    def image_size(self, elem_id: str) -> tuple[int, int]:
        img = self.find(f"#{elem_id} img")
        return int(img.get_property("naturalWidth")), int(img.get_property("naturalHeight"))

    def shares(self) -> dict[str, float]:
        """The share-of-pixels panel, read back from its text."""
        text = self.find("#shares").text
        return {k: float(v) for k, v in re.findall(r'"([^"]+)"\s*:\s*([0-9.]+)', text)}

    def choose(self, elem_id: str, option: str) -> None:
        self.find(f"#{elem_id} input").click()
        css = f"[data-testid='dropdown-option'][aria-label=\"{option}\"]"
        self.wait.until(lambda d: d.find_elements(self.By.CSS_SELECTOR, css))
        self.find(css).click()


def save_screenshot(driver, path: Path) -> None:
    """The page as a PNG; with LSEG_APP_SCREENSHOT=FILE also a small copy there (README's picture)."""
    driver.save_screenshot(str(path))
    target = os.environ.get("LSEG_APP_SCREENSHOT")
    if target:
        shot = Image.open(path).convert("RGB")
        shot = shot.resize((shot.width * 3 // 4, shot.height * 3 // 4), Image.Resampling.LANCZOS)
        shot.quantize(128, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)


@pytest.mark.slow
def test_browser_upload_labels_segment(server, browser, tmp_path: Path) -> None:
    page = Page(browser, server.url)
    page.upload(ASSETS / "field.jpg")
    page.type_labels(", ".join(LABELS))
    info = page.segment()
    assert "480×360 px" in info and "single pass" in info
    assert page.image_size("mask") == (480, 360) == page.image_size("heat")
    width, height = page.image_size("overlay")
    assert width == 480 and height > 360  # the legend strip underneath
    shares = page.shares()
    assert list(shares) == LABELS and abs(sum(shares.values()) - 100) <= 0.05
    save_screenshot(browser, tmp_path / "demo.png")
    assert (tmp_path / "demo.png").stat().st_size > 0


@pytest.mark.slow
def test_browser_example_and_label_preset(server, browser) -> None:
    from lseg.app.ui import EXAMPLES

    page = Page(browser, server.url)
    page.type_labels("")
    page.find("table tbody tr").click()  # the first example: its image and its labels
    page.wait.until(lambda d: page.labels() == EXAMPLES[0][1])
    page.segment()
    assert page.image_size("mask") == Image.open(ASSETS / EXAMPLES[0][0]).size
    assert list(page.shares()) == [x.strip() for x in EXAMPLES[0][1].split(",")]
    page.choose("preset", "MSeg universal (194)")
    page.wait.until(lambda d: page.labels().count(",") == 193)
    assert f"194 labels is more than this demo takes ({MAX_LABELS})" in page.refused()


@pytest.mark.slow
def test_browser_refusals_are_messages_and_the_server_keeps_serving(server, browser, tmp_path: Path) -> None:
    page = Page(browser, server.url)
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is text, not a PNG\n")
    page.upload(not_image)
    page.type_labels("sky, grass")
    assert "cannot read image notes.png" in page.refused()

    page.upload(ASSETS / "beach.jpg")
    page.type_labels(" , ")
    assert "no labels" in page.refused()
    page.type_labels(", ".join(f"thing {i}" for i in range(MAX_LABELS + 1)))
    assert f"{MAX_LABELS + 1} labels is more than this demo takes ({MAX_LABELS})" in page.refused()
    page.type_labels("sky, " + "very " * 80 + "long")
    assert "label 2 is too long" in page.refused()

    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(int(1.5 * MAX_UPLOAD_MB * 2**20)))
    page.upload(big)
    assert "exceed the maximum allowed size" in page.toast()

    large = tmp_path / "large.png"
    Image.open(ASSETS / "beach.jpg").resize((600, 450)).save(large)  # 270,000 px > the budget
    page.upload(large)
    page.type_labels("sky, sea, sand")
    info = page.segment()
    assert "downscaled from 600×450 to 516×387" in info
    assert "downscaled" in page.toast()  # also said as a warning
    assert page.image_size("mask") == (516, 387)
    assert "Traceback" not in browser.page_source and "Traceback" not in server.log.read_text()


# ------------------------------------------------------------------------------------------ load


@pytest.mark.slow
def test_load_20_requests_from_4_clients(server, synthetic_root: Path) -> None:
    from lseg.app.loadtest import load_test

    stats = load_test(server.url, val_image(synthetic_root), ", ".join(LABELS), requests=20, clients=4,
                      timeout_s=600)
    masks = [np.asarray(Image.open(m)) for m in stats.pop("masks")]
    assert len(masks) == 20 and all(np.array_equal(m, masks[0]) for m in masks)
    assert 0 < stats["median_s"] <= stats["p95_s"] <= stats["max_s"] <= stats["wall_s"]
    print(json.dumps(stats))


# --------------------------------------------------------------------------------------- cluster


@pytest.mark.slow
def test_submit_local_serves_and_says_how_to_stop(app_extra, trained: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "submit.log"
    with log.open("w") as out:  # a file, not a pipe: the local job inherits the submitter's stdout
        rc = subprocess.run([sys.executable, "-m", "lseg.app", "--checkpoint", str(trained), "--submit", "--local",
                             "--gpus-per-node", "0", "--port", str(port), "--logs-dir", str(tmp_path / "jobs")],
                            stdout=out, stderr=subprocess.STDOUT, timeout=300).returncode
    assert rc == 0, log.read_text()
    (address_file,) = (tmp_path / "jobs").glob("*_app.json")
    address = json.loads(address_file.read_text())
    try:
        assert address["port"] == port and address["host"] == "127.0.0.1" and address["cluster"] == "local"
        assert f"serves on http://127.0.0.1:{port}" in log.read_text()
        assert f"kill -INT {address['pid']}" in log.read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200 and b"LSeg demo" in page.read()
    finally:
        os.kill(address["pid"], signal.SIGINT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
        except OSError:
            break
        time.sleep(1)
    else:
        raise AssertionError("the app job still serves after SIGINT")


@pytest.mark.slow
def test_submit_to_slurm_prints_the_tunnel_and_serves(app_extra, cluster, trained: Path, tmp_path: Path) -> None:
    """On the real test cluster (tests/slurm_cluster.sh): the job serves on a node of this machine."""
    import socket

    slurm = cluster
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lseg.app", "--checkpoint", str(trained), "--submit",
                             "--gpus-per-node", "0", "--cpus-per-task", "1", "--timeout", "10", "--port", str(port),
                             "--logs-dir", str(tmp_path)], env=slurm.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        address = json.loads(next(tmp_path.glob("*_app.json")).read_text())
        node, job = address["node"], address["job_id"]
        assert address["cluster"] == "slurm" and address["port"] == port
        assert f"ssh -N -L {port}:localhost:{port} -J {socket.getfqdn()} {node}" in out
        assert f"scancel {job}" in out
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:  # the node is this machine
            assert page.status == 200 and b"LSeg demo" in page.read()
    finally:
        proc.kill()
        for f in tmp_path.glob("*_app.json"):
            slurm.cmd("scancel", json.loads(f.read_text())["job_id"], check=False)
    assert slurm.wait_done(job, timeout=120) in ("CANCELLED", "CANCELLED+")


"""``python -m lseg.app``: bad start-up input is one line and exit 2; bad requests are messages, not crashes.

Start-up (in process, no server): a missing, truncated, foreign or malicious checkpoint, a missing
GPU, a taken port, bad flags, config overrides, a multi-node ``--submit``. Requests (a real server
on a loopback port, called over HTTP): every refusal comes back as the page's message, the server
log has no traceback, an upload far over the cap is refused by the server itself, and a good
request still works afterwards.
"""
from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import evil_checkpoint, one_error_line, start_app, stop_app


@pytest.fixture(scope="module")
def app_main():
    pytest.importorskip("gradio", reason="the app extra is not installed: pip install -e '.[app]'")
    from lseg.app.__main__ import main

    return main


@pytest.mark.parametrize("which, needle", [
    ("missing", "checkpoint not found"),
    ("trunc", "truncated.pt"),
    ("not_ckpt", "not a checkpoint file"),
    ("plain", "plain_state_dict.pt"),
])
def test_a_bad_checkpoint_is_one_line(app_main, files, capsys, which: str, needle: str) -> None:
    path = files["dir"] / "nope.pt" if which == "missing" else files[which]
    assert app_main(["--checkpoint", str(path)]) == 2
    assert needle in one_error_line(capsys)


def test_a_pickle_that_runs_code_is_refused(app_main, tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"
    assert app_main(["--checkpoint", str(evil_checkpoint(tmp_path / "evil.pt", marker))]) == 2
    one_error_line(capsys)
    assert not marker.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cuda_without_a_gpu_is_one_line(app_main, files, capsys) -> None:
    assert app_main(["--checkpoint", str(files["good"]), "--device", "cuda"]) == 2
    assert "no CUDA device" in one_error_line(capsys)


def test_a_taken_port_is_one_line(app_main, files, capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert app_main(["--checkpoint", str(files["good"]), "--port", str(port)]) == 2
    assert f"cannot serve on 127.0.0.1, port {port}" in one_error_line(capsys)


@pytest.mark.parametrize("flags, needle", [
    (["--port", "0"], "--port: must be > 0"),
    (["--port", "70000"], "--port: must be <= 65535"),
    (["--max-pixels", "0"], "--max-pixels: must be > 0"),
    (["--max-labels", "many"], "--max-labels: expected an integer"),
    (["--max-upload-mb", "-1"], "--max-upload-mb: must be > 0"),
    (["--precision", "fp8"], "--precision: invalid choice"),
])
def test_bad_flags_are_usage_errors(app_main, files, capsys, flags: list[str], needle: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        app_main(["--checkpoint", str(files["good"]), *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


@pytest.mark.parametrize("flags, needle", [
    (["train.max_steps=3"], "takes no config overrides"),
    (["--submit", "--nodes", "2"], "runs on one node"),
    (["--dry-run"], "add --submit"),
])
def test_wrong_use_is_one_line(app_main, files, capsys, flags: list[str], needle: str) -> None:
    assert app_main(["--checkpoint", str(files["good"]), *flags]) == 2
    assert needle in one_error_line(capsys)


# ------------------------------------------------------------------------------- bad requests


@pytest.fixture(scope="module")
def server(app_main, files, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("app") / "app.log"
    proc, url = start_app(files["good"], log, "--max-labels", "4", "--max-upload-mb", "1")
    yield url, log
    assert stop_app(proc) == 0


def call(url: str, image: Path, labels: str) -> str:
    """The message of a refused request ('' when it was answered)."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    try:
        Client(url, verbose=False).predict(handle_file(str(image)), labels, False, "", api_name="/segment")
    except AppError as exc:
        return str(exc)
    return ""


@pytest.mark.slow
def test_refused_requests_are_messages_and_the_server_keeps_serving(server, files, tmp_path: Path) -> None:
    url, log = server
    photo = files["jpeg"]
    text = tmp_path / "photo.png"
    text.write_text("not a picture")
    truncated = tmp_path / "cut.png"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(tmp_path / "whole.png")
    truncated.write_bytes((tmp_path / "whole.png").read_bytes()[:60])
    cases = [
        (text, "a, b", "cannot read image photo.png"),
        (truncated, "a, b", "cannot read image cut.png"),
        (photo, "", "no labels"),
        (photo, " , ,", "no labels"),
        (photo, "dog, dog", "duplicate labels: dog"),
        (photo, "a, b, c, d, e", "5 labels is more than this demo takes (4)"),
        (photo, "dog, " + "very " * 80 + "long", "label 2 is too long"),
    ]
    for image, labels, needle in cases:
        message = call(url, image, labels)
        assert needle in message, (labels, message)
    assert call(url, photo, "red, green") == ""  # still serving
    assert "Traceback" not in log.read_text()
    assert log.read_text().count("[lseg.app] refused:") == len(cases)


@pytest.mark.slow
def test_an_upload_far_over_the_cap_is_refused_by_the_server(server, tmp_path: Path) -> None:
    import httpx

    url, _ = server
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (5 * 2**20))
    with big.open("rb") as f:
        reply = httpx.post(f"{url}/gradio_api/upload", files={"files": ("big.png", f, "image/png")}, timeout=60)
    assert reply.status_code == 413 and "maximum allowed size" in reply.text

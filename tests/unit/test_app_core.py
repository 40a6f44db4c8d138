"""lseg.app without a server: one request's checks and pictures, presets, the tunnel line, percentiles.

The server, the browser and the cluster job are in tests/integration/test_app.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lseg.app.cluster import tunnel_command
from lseg.app.core import HEAT_STOPS, InputError, Limits, Segmenter, heat_image, label_presets
from lseg.app.loadtest import percentile
from lseg.checkpoints.payload import checkpoint_payload
from lseg.checkpoint_io import save_atomic
from lseg.config import load_config, to_dict
from lseg.predict import Predictor
from lseg.visualize import label_shares

from helpers import SMOKE

LABELS = ["red thing", "green thing", "other"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised smoke model in RUN/checkpoints/, with the run's class_names.txt."""
    from lseg.models import build_model

    run = tmp_path_factory.mktemp("run")
    cfg = load_config(SMOKE, ["model.text.layers=1"])
    torch.manual_seed(0)
    path = run / "checkpoints" / "last.pt"
    save_atomic(checkpoint_payload(build_model(cfg.model).state_dict(), to_dict(cfg)), path)
    (run / "class_names.txt").write_text("wall\nfloor\nsky\n")
    return path


@pytest.fixture(scope="module")
def segmenter(checkpoint: Path) -> Segmenter:
    return Segmenter(Predictor(checkpoint, "cpu"), Limits(max_pixels=5000, max_labels=3))


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    arr = np.zeros((48, 64, 3), np.uint8)
    arr[:, :32] = (220, 30, 30)
    arr[:, 32:] = (30, 200, 40)
    Image.fromarray(arr).save(tmp_path / "two.png")
    return tmp_path / "two.png"


def test_a_request_gives_predicts_ids_and_their_shares(segmenter: Segmenter, picture: Path) -> None:
    r = segmenter.run(picture, " red thing,green thing ,  other", heat_label="green thing")
    p = segmenter.predictor
    np.testing.assert_array_equal(r.ids, p.predict(Image.open(picture).convert("RGB"), LABELS, p.protocol()))
    assert r.mask.size == r.heat.size == (64, 48) and r.overlay.width == 64 and r.overlay.height > 48
    assert r.shares == {k: round(100 * s, 2) for k, s in zip(LABELS, label_shares(r.ids, 3))}
    assert r.heat_label == "green thing" and -1 <= r.heat_range[0] <= r.heat_range[1] <= 1
    assert r.notes == [] and r.seconds > 0


def test_an_unknown_heat_label_falls_back_to_the_first_with_a_note(segmenter: Segmenter, picture: Path) -> None:
    r = segmenter.run(picture, ", ".join(LABELS), heat_label="blue thing")
    assert r.heat_label == "red thing"
    assert r.notes == ["heat map label 'blue thing' is not among the labels; showing 'red thing'"]


def test_an_image_over_the_budget_is_downscaled_with_a_note(segmenter: Segmenter, tmp_path: Path) -> None:
    Image.new("RGB", (100, 100), (9, 9, 9)).save(tmp_path / "big.png")  # 10,000 px, budget 5,000
    r = segmenter.run(tmp_path / "big.png", "a, b")
    assert r.mask.size == (70, 70)  # sqrt(1/2) of each side, rounded down: 4,900 px
    assert r.notes[0].startswith("downscaled from 100×100 to 70×70 (pixel budget 5,000")


@pytest.mark.parametrize("labels, message", [
    ("", 'no labels: type them separated by commas, e.g. "sky, road, other"'),
    (" , ,\n", 'no labels: type them separated by commas, e.g. "sky, road, other"'),
    ("sky, sky", "duplicate labels: sky"),
    ("a, b, c, d", "4 labels is more than this demo takes (3)"),
])
def test_label_refusals(segmenter: Segmenter, picture: Path, labels: str, message: str) -> None:
    with pytest.raises(InputError) as err:
        segmenter.run(picture, labels)
    assert str(err.value) == message


def test_a_label_too_long_for_the_tokenizer_is_named_by_position(segmenter: Segmenter, picture: Path) -> None:
    with pytest.raises(InputError, match=r"^label 2 is too long: .* is 81 tokens, the text encoder takes at most 75"):
        segmenter.run(picture, "sky, " + "very " * 80 + "long")


@pytest.mark.parametrize("content", [b"", b"just text", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_a_file_that_is_not_an_image_is_named_without_the_server_path(segmenter: Segmenter, tmp_path: Path,
                                                                       content: bytes) -> None:
    path = tmp_path / "upload.png"
    path.write_bytes(content)
    with pytest.raises(InputError, match=r"^cannot read image upload\.png: ") as err:
        segmenter.run(path, "a, b")
    assert str(tmp_path) not in str(err.value)
    with pytest.raises(InputError, match="^no image: upload one or pick an example$"):
        segmenter.run(None, "a, b")


def test_heat_image_spans_the_colour_scale_from_the_minimum_to_the_maximum() -> None:
    sim = torch.tensor([[-0.2, 0.1], [0.4, 0.1]])
    heat = np.asarray(heat_image(Image.new("RGB", (2, 2)), sim, alpha=1.0))
    np.testing.assert_array_equal(heat[0, 0], HEAT_STOPS[0])
    np.testing.assert_array_equal(heat[1, 0], HEAT_STOPS[-1])
    np.testing.assert_array_equal(heat[0, 1], HEAT_STOPS[2])  # halfway: the middle stop
    flat = np.asarray(heat_image(Image.new("RGB", (2, 2)), torch.zeros(2, 2), alpha=1.0))
    assert (flat == HEAT_STOPS[0]).all()


def test_label_presets_offer_the_runs_list_and_the_taxonomies_found(checkpoint: Path) -> None:
    presets = label_presets(checkpoint)
    assert list(presets) == ["this run's classes (3)", "MSeg universal (194)", "ADE20K-150 (150)", "FoodSeg103 (104)"]
    assert presets["FoodSeg103 (104)"][:2] == ["background", "candy"] and "french fries" in presets["FoodSeg103 (104)"]
    assert presets["this run's classes (3)"] == ["wall", "floor", "sky"]
    assert len(set(presets["MSeg universal (194)"])) == 194 and "road barrier" in presets["MSeg universal (194)"]


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(20, 0, -1)]
    assert percentile(values, 95) == 19.0 and percentile(values, 50) == 10.0 and percentile(values, 100) == 20.0
    assert percentile([3.0], 95) == 3.0


def test_tunnel_command_jumps_to_a_loopback_node_and_forwards_to_a_bound_one() -> None:
    assert tunnel_command("gpu017", 7860, "127.0.0.1", "login1") == "ssh -N -L 7860:localhost:7860 -J login1 gpu017"
    assert tunnel_command("gpu017", 7861, "0.0.0.0", "login1") == "ssh -N -L 7861:gpu017:7861 login1"

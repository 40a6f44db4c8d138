"""lseg.predict: labels, images, and the Predictor (one checkpoint read, cached label embeddings)."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import lseg.predict as predict_mod
from lseg.checkpoint_io import FORMAT, save_atomic
from lseg.config import load_config, to_dict
from lseg.inference import ProtocolError, infer, logits_fn
from lseg.predict import PredictError, Predictor, load_image, parse_labels, to_input

from helpers import SMOKE


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from lseg.models import build_model

    cfg = load_config(SMOKE, ["model.text.layers=1", "data.base_size=40", "data.crop_size=32"])
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_atomic({"format": FORMAT, "model": build_model(cfg.model).state_dict(), "config": to_dict(cfg),
                 "step": 1}, path)
    return path


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return Predictor(checkpoint, device="cpu")


def test_parse_labels():
    assert parse_labels("dog, grass ,,other", None) == ["dog", "grass", "other"]
    with pytest.raises(PredictError, match="duplicate labels: dog"):
        parse_labels("dog,dog", None)
    with pytest.raises(PredictError, match="no labels given"):
        parse_labels(" , ", None)
    with pytest.raises(PredictError, match="exactly one of"):
        parse_labels(None, None)


def test_parse_labels_from_file(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("dog\n  tall  grass \n\nsky, sea\n")
    assert parse_labels(None, f) == ["dog", "tall grass", "sky", "sea"]
    with pytest.raises(PredictError, match="labels file not found"):
        parse_labels(None, tmp_path / "missing.txt")


def test_load_image_from_path_and_file_and_bad_input(tmp_path):
    img = Image.new("L", (5, 4), 100)
    path = tmp_path / "a.png"
    img.save(path)
    assert load_image(path).mode == "RGB" and load_image(path).size == (5, 4)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    buf.seek(0)
    assert np.asarray(load_image(buf)).tolist() == np.asarray(load_image(path)).tolist()
    with pytest.raises(PredictError, match="image not found: .*missing.jpg"):
        load_image(tmp_path / "missing.jpg")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image\n")
    with pytest.raises(PredictError, match=r"cannot read image .*notes.jpg"):
        load_image(text)
    with pytest.raises(PredictError, match="cannot read image uploaded image"):
        load_image(io.BytesIO(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40))


def test_to_input_normalises_to_minus_one_one():
    x = to_input(Image.fromarray(np.array([[[0, 255, 0]]], dtype=np.uint8)))
    assert x.shape == (1, 3, 1, 1) and x.flatten().tolist() == [-1.0, 1.0, -1.0]


def test_predictor_reads_the_checkpoint_once(checkpoint, monkeypatch):
    reads = []
    real = predict_mod.load_checkpoint

    def counting(path, *a, **kw):
        reads.append(path)
        return real(path, *a, **kw)

    monkeypatch.setattr(predict_mod, "load_checkpoint", counting)
    import lseg.models.loading as loading

    monkeypatch.setattr(loading, "load_checkpoint", counting)
    p = Predictor(checkpoint, device="cpu")
    assert len(reads) == 1
    assert (p.base_size, p.crop_size) == (40, 32)  # the sizes it was trained with


def test_protocol_switches(predictor):
    single = predictor.protocol()
    assert (single.name, single.scales, single.flip, single.base_size, single.crop_size) == ("single", (1.0,), False,
                                                                                             40, 32)
    official = predictor.protocol(scales=[0.75, 1.0], flip=True)
    assert official.name == "official" and official.scales == (0.75, 1.0) and official.flip
    whole = predictor.protocol(whole=True, flip=True)
    assert whole.crop_size is None and whole.base_size is None and whole.flip
    assert predictor.protocol(base_size=64, crop_size=48, stride=16).effective_stride == 16
    with pytest.raises(ProtocolError, match="stride must be in"):
        predictor.protocol(stride=40)


def test_predict_is_the_argmax_of_the_protocol_scores(predictor):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (37, 45, 3), dtype=np.uint8))
    labels = ["dog", "grass", "sky"]
    proto = predictor.protocol(scales=[0.75, 1.0], flip=True)
    scores = predictor.scores(img, labels, proto)
    assert scores.shape == (3, 37, 45) and scores.dtype == torch.float32
    expected = infer(logits_fn(predictor.model, labels), to_input(img), proto)[0]
    assert torch.equal(scores, expected)
    ids = predictor.predict(img, labels, proto)
    assert ids.dtype == np.int64 and ids.shape == (37, 45)
    assert np.array_equal(ids, expected.argmax(0).numpy())
    # similarity: the summed logits divided by logit_scale and the 2 scales x 2 flips
    sim = predictor.similarity(scores, proto)
    scale = float(predictor.model.image.logit_scale.detach())
    assert torch.allclose(sim * scale * 4, scores, rtol=1e-6, atol=1e-5)
    assert float(sim.abs().max()) <= 1.0 + 1e-5


def test_label_embeddings_are_cached_per_label_list(predictor):
    a = predictor.encode(["dog", "grass"])
    assert predictor.encode(["dog", "grass"]) is a
    assert predictor.encode(["grass", "dog"]) is not a
    with pytest.raises(ValueError, match=r"labels\[1\]"):
        predictor.encode(["dog", "word " * 80])

"""lseg.visualize: palette, colour masks, shares, legend, overlay and TensorBoard panel."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lseg.visualize import colorize, label_shares, legend, palette, panel, render


def test_palette_is_distinct_and_stable():
    pal = palette(256)
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert len({tuple(c) for c in pal.tolist()}) == 256
    assert (0, 0, 0) not in {tuple(c) for c in pal.tolist()}  # black stays free for unlabelled pixels
    assert np.array_equal(palette(20), pal[:20])  # a label keeps its colour whatever the list length
    assert palette(0).shape == (0, 3)


def test_colorize_paints_unlabelled_black():
    pal = palette(3)
    ids = np.array([[0, 1], [2, 255]])
    out = colorize(ids, pal)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert (out[0, 0] == pal[0]).all() and (out[0, 1] == pal[1]).all() and (out[1, 0] == pal[2]).all()
    assert (out[1, 1] == 0).all()
    assert (colorize(np.array([-1, 3]), pal) == 0).all()


def test_label_shares_are_fractions_of_labelled_pixels():
    ids = np.array([[0, 0, 2, 255], [0, 2, 255, 255]])
    assert label_shares(ids, 3) == [3 / 5, 0.0, 2 / 5]
    assert sum(label_shares(ids, 3)) == pytest.approx(1.0)
    assert label_shares(np.full((2, 2), 255), 3) == [0.0, 0.0, 0.0]


def test_legend_lists_labels_largest_share_first():
    pal = palette(3)
    strip = legend(300, ["dog", "grass", "sky"], pal, [0.1, 0.0, 0.9])
    assert strip.width == 300 and strip.height > 10
    arr = np.asarray(strip)
    # swatches are drawn in share order: sky's colour appears left of dog's on the first row
    def first_x(colour):
        return int(np.argwhere((arr == colour).all(-1))[:, 1].min())
    assert first_x(pal[2]) < first_x(pal[0])
    # with many labels only those that occur are listed: absent colours do not appear
    many = palette(20)
    shares = [0.0] * 20
    shares[7] = 1.0
    arr = np.asarray(legend(400, [f"c{i}" for i in range(20)], many, shares))
    assert (arr == many[7]).all(-1).any() and not (arr == many[3]).all(-1).any()


def test_render_blends_and_adds_the_legend():
    img = Image.new("RGB", (64, 48), (10, 20, 30))
    ids = np.zeros((48, 64), dtype=np.int64)
    ids[:, 32:] = 2
    pal = palette(3)
    mask, overlay = render(img, ids, ["dog", "grass", "other"], alpha=0.5)
    m = np.asarray(mask)
    assert mask.size == img.size
    assert (m[:, :32] == pal[0]).all() and (m[:, 32:] == pal[2]).all()
    assert overlay.width == 64 and overlay.height > 48  # legend strip below the image
    blended = np.asarray(overlay)[:48, :32].astype(int)
    assert np.abs(blended - (np.asarray(img)[:, :32] * 0.5 + pal[0] * 0.5)).max() <= 1
    _, opaque = render(img, ids, ["dog", "grass", "other"], alpha=1.0)
    assert (np.asarray(opaque)[:48] == m).all()
    with pytest.raises(ValueError, match="alpha"):
        render(img, ids, ["dog", "grass", "other"], alpha=1.5)


def test_panel_is_input_truth_prediction_and_legend():
    image = torch.full((3, 8, 10), -1.0)  # normalised black
    target = torch.tensor([[0] * 10] * 4 + [[255] * 10] * 4)
    pred = torch.full((8, 10), 2)
    out = panel(image, target, pred, ["a", "b", "c"])
    pal = palette(3)
    assert out.dtype == np.uint8 and out.shape[1] == 30 and out.shape[0] > 8
    assert (out[:8, :10] == 0).all()  # the input, denormalised
    assert (out[:4, 10:20] == pal[0]).all() and (out[4:8, 10:20] == 0).all()  # truth, ignore in black
    assert (out[:8, 20:30] == pal[2]).all()  # prediction

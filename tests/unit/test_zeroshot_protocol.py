"""lseg.zeroshot.protocol (+ synthetic): preprocessing, the 2-way decision, and exact scores of known predictors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lseg.zeroshot.benchmarks import get_benchmark
from lseg.zeroshot.episodes import fair_pairs, official_episodes
from lseg.zeroshot.protocol import foreground, model_input, score_fold
from lseg.zeroshot.readers import binary_target, read_episode, resize_mask
from lseg.zeroshot.synthetic import write_synthetic

CPU = torch.device("cpu")


def test_model_input_equals_the_official_torchvision_pipeline():
    from torchvision import transforms

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    official = transforms.Compose([transforms.Resize((48, 48)), transforms.ToTensor(),
                                   transforms.Normalize([0.5] * 3, [0.5] * 3)])(img)
    assert torch.equal(model_input(img, 48)[0], official)


def test_ties_are_others():
    logits = torch.tensor([[[[0.0, 1.0, 2.0]], [[0.0, 1.5, 1.0]]]])  # (1, 2, 1, 3)
    assert foreground(logits).tolist() == [[0, 1, 0]]


class ConstantModel:
    """The two-tower API of an LSeg model; its class logit is ``fg`` and the "others" logit 0 everywhere."""

    def __init__(self, fg: float) -> None:
        self.fg = fg
        self.text = self

    def encode(self, labels):
        return torch.zeros(len(labels), 4)

    def image(self, x, feats):
        out = torch.zeros(x.shape[0], feats.shape[0], *x.shape[-2:])
        out[:, 1] = self.fg
        return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fewshot")
    write_synthetic(root, ("pascal-5i", "coco-20i"), folds=(1,), episodes=5, train_images=0, size=24)
    return root


@pytest.mark.parametrize("name", ["pascal-5i", "coco-20i"])
@pytest.mark.parametrize("protocol", ["official", "fair"])
def test_known_predictors_give_exact_scores(data, name, protocol):
    bench = get_benchmark(name)
    eps = (official_episodes if protocol == "official" else fair_pairs)(bench, 1)[:5]
    fg, valid = {}, 0
    for ep in eps:
        _, mask = read_episode(bench, data, ep)
        t = binary_target(bench, resize_mask(mask, 32) if protocol == "official" else mask, ep.class_id)
        g = int((t == 1).sum())
        f, v = fg.get(ep.class_id, (0, 0))
        fg[ep.class_id] = (f + g, v + int((t != 255).sum()))
        valid += int((t != 255).sum())
    classes = bench.novel_classes(1)
    kw = dict(image_size=32, max_episodes=5)
    none = score_fold(ConstantModel(0.0), bench, 1, data, protocol, bench.class_names, CPU, **kw)  # ties: all "others"
    total_fg = sum(f for f, _ in fg.values())
    assert none.mIoU == 0.0 and none.FB_IoU == ((valid - total_fg) / valid + 0.0) / 2
    everything = score_fold(ConstantModel(1.0), bench, 1, data, protocol, bench.class_names, CPU, **kw)
    per_class = [fg[c][0] / fg[c][1] if c in fg else 0.0 for c in classes]
    assert everything.mIoU == sum(per_class) / len(per_class)
    assert everything.FB_IoU == (0.0 + total_fg / valid) / 2
    assert everything.episodes == 5 and int(everything.counts.episodes.sum()) == 5
    assert list(everything.per_class_iou) == [bench.class_names[c] for c in classes]

"""tools/eval_sweep.py and tools/predict.py pieces that need no trained model (fast)."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from lseg.data.names import universal_class_names
from lseg.data.taxonomy import load_taxonomy
from lseg.inference import whole_protocol
from lseg.launch_flags import executor_parameters, parse_mem_gb, parse_timeout_min



from helpers import load_tool as _load_tool  # noqa: E402


sweep = _load_tool("eval_sweep")
predict = _load_tool("predict")
ADE = "ade20k-150-relabeled"


@pytest.fixture(scope="module")
def tax():
    return load_taxonomy()


@pytest.fixture(scope="module")
def prompts():
    return universal_class_names()


def test_universal_label_set(tax, prompts):
    ls = sweep.resolve_label_set("universal", ADE, tax, prompts)
    assert ls.num_classes == 194 and ls.prompts == prompts
    assert ls.gt_lut[:194].tolist() == list(range(194)) and ls.gt_lut[255] == 255


def test_dataset_label_set_scores_the_datasets_own_ids(tax, prompts):
    ls = sweep.resolve_label_set("dataset", ADE, tax, prompts)
    classes = tax.dataset_classes[ADE]
    assert ls.num_classes == len(classes) and ls.class_names == list(classes)
    # every ADE relabeled id d has a universal id u with lut[u] == d; names agree
    table = tax.table(ADE)
    for d, name in enumerate(classes):
        u = int(table[d])
        assert ls.gt_lut[u] == d and tax.universal[u] == name
    # a universal class that ADE does not have is ignored
    backpack = tax.universal.index("backpack")
    assert "backpack" not in classes and ls.gt_lut[backpack] == 255


def test_synonym_set_substitutes_and_keeps_the_rest(tax, prompts):
    ls = sweep.resolve_label_set("synonyms", ADE, tax, prompts)
    assert ls.name == "synonyms" and ls.num_classes == 194
    couch = tax.universal.index("couch")
    assert ls.prompts[ls.groups.index(couch)] == "sofa" and ls.substituted[couch]
    assert sum(ls.substituted) >= 100  # a good share of the taxonomy
    sky_prompts = [p for p, g in zip(ls.prompts, ls.groups) if g == tax.universal.index("sky")]
    assert sky_prompts == ["heavens"]
    untouched = tax.universal.index("stage")
    assert not ls.substituted[untouched] and ls.prompts[ls.groups.index(untouched)] == prompts[untouched]
    # no synonym is the training name of another class (it would not be "unseen")
    readable = set(prompts)
    assert not {p for p, g in zip(ls.prompts, ls.groups) if ls.substituted[g]} & readable


def test_user_files_and_errors(tmp_path, tax, prompts):
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text("name: mine\nsubstitutions:\n  dog: [hound, 'canine | mutt']\n")
    ls = sweep.resolve_label_set(str(yaml_file), ADE, tax, prompts)
    dog = tax.universal.index("dog")
    assert [p for p, g in zip(ls.prompts, ls.groups) if g == dog] == ["hound", "canine", "mutt"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("substitutions:\n  dgo: hound\n")
    with pytest.raises(sweep.SweepError, match="'dgo' is not a universal class.*did you mean 'dog'"):
        sweep.resolve_label_set(str(bad), ADE, tax, prompts)
    txt = tmp_path / "names.txt"
    lines = list(prompts)
    lines[0] = "rucksack | knapsack"
    txt.write_text("\n".join(lines) + "\n")
    ls = sweep.resolve_label_set(str(txt), ADE, tax, prompts)
    assert ls.prompts[:2] == ["rucksack", "knapsack"] and ls.groups[:3] == [0, 0, 1]
    assert ls.substituted[0] and sum(ls.substituted) == 1
    short = tmp_path / "short.txt"
    short.write_text("a\nb\n")
    with pytest.raises(sweep.SweepError, match="need 194 non-empty lines"):
        sweep.resolve_label_set(str(short), ADE, tax, prompts)


class _LabelEcho(torch.nn.Module):
    """Stand-in model: channel 0 of the image holds the class id; logits peak at that id."""

    def forward(self, x, labels):
        ids = torch.arange(len(labels), dtype=x.dtype).view(1, -1, 1, 1)
        return -(x[:, :1] - ids) ** 2


class _Set:
    def __init__(self, labels: list[torch.Tensor]):
        self.labels = labels

    def __getitem__(self, key):
        y = self.labels[key[0]]
        x = y.clamp(max=2).float().expand(3, *y.shape).clone()  # 255 -> anything, it is ignored
        return {"image": x, "label": y, "index": key[0], "num_bad": 0}


def test_evaluate_cell_with_known_model_gives_hand_confusion(tax, prompts):
    labels = sweep._build("toy", ["a", "b", "c"], [["a"], ["b"], ["c"]], sweep._identity_lut(3), [False] * 3)
    gt = [torch.tensor([[0, 1], [2, 255]]), torch.tensor([[1, 1], [0, 2]])]
    progress = sweep.Progress(2, enabled=False)
    conf, images, bad = sweep.evaluate_cell(_LabelEcho(), _Set(gt), [0, 1], labels, whole_protocol(),
                                            torch.device("cpu"), "fp32", progress)
    assert images == 2 and bad == 0
    assert conf.tolist() == [[2, 0, 0], [0, 3, 0], [0, 0, 2]]  # perfect model: diagonal = GT counts


def _args(**kw):
    base = dict(ema=False, precision="fp32")
    base.update(kw)
    return argparse.Namespace(**base)


def test_tables_from_cell_records(tmp_path, tax, prompts):
    labels = sweep._build("toy", ["a", "b", "c"], [["a"], ["b"], ["c"]], sweep._identity_lut(3), [False, True, True])
    conf = torch.tensor([[2, 0, 0], [1, 1, 0], [0, 0, 0]])
    ref = sweep.CkptRef("/x/step_00000010.pt", "run/step_00000010", 10)
    cell = sweep.Cell(ref, ADE, "toy", "toy", whole_protocol(), "cell-1")
    rec = sweep.cell_record(cell, labels, conf, 2, 0, 1.0, 10, _args(), 1, torch.device("cpu"))
    # IoU a = 2/3, b = 1/2, c absent from GT and prediction -> excluded
    assert rec["mIoU"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert rec["mIoU_sub"] == pytest.approx(1 / 2)  # substituted and present: b only
    assert rec["pixel_acc"] == pytest.approx(3 / 4) and rec["per_class_iou"]["c"] is None
    sweep.publish(tmp_path, rec, conf, writer=None)
    rows = (tmp_path / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 2 and rows[0].startswith("checkpoint,step,dataset")
    assert "| run/step_00000010 | 10 | ade20k-150-relabeled | toy | whole | 2 | 58.33 | 75.00 |" in \
        (tmp_path / "results.md").read_text()
    per_class = (tmp_path / "per_class.csv").read_text().strip().splitlines()
    assert len(per_class) == 1 + 3
    assert json.loads((tmp_path / "cells" / "cell-1.json").read_text())["cell_id"] == "cell-1"


def test_overrides_anywhere_and_cell_ids(tmp_path):
    args = sweep.parse_args(["--checkpoints", "a.pt", "--scales", "0.5", "1.0", "data.root=/d", "--output-dir", "o",
                             "eval.batch_size=2"])
    assert args.scales == [0.5, 1.0] and args.overrides == ["data.root=/d", "eval.batch_size=2"]


def test_scheduler_flags():
    assert parse_timeout_min("90") == 90 and parse_timeout_min("1:30:00") == 90
    assert parse_timeout_min("1-00:00") == 1440
    assert parse_mem_gb("64G") == 64 and parse_mem_gb("1500M") == 2 and parse_mem_gb(None) is None
    p = argparse.ArgumentParser()
    sweep.add_scheduler_args(p)
    a = p.parse_args(["--partition", "gpu", "--gpus-per-node", "2", "--timeout", "2:00", "--mem", "32G"])
    params = executor_parameters(a, "eval_sweep")
    assert params["slurm_partition"] == "gpu" and params["tasks_per_node"] == 2
    assert params["timeout_min"] == 120 and params["mem_gb"] == 32 and "slurm_account" not in params


def test_predict_labels_colours_and_overlay():
    assert predict.parse_labels("dog, grass ,,other", None) == ["dog", "grass", "other"]
    with pytest.raises(predict.PredictError, match="duplicate labels: dog"):
        predict.parse_labels("dog,dog", None)
    pal = predict.colours(20)
    assert len({tuple(c) for c in pal.tolist()}) == 20
    from PIL import Image

    img = Image.new("RGB", (64, 48), (10, 20, 30))
    pred = np.zeros((48, 64), dtype=np.int64)
    pred[:, 32:] = 2
    mask, overlay = predict.render(img, pred, ["dog", "grass", "other"], alpha=0.5)
    m = np.asarray(mask)
    assert (m[:, :32] == pal[0]).all() and (m[:, 32:] == pal[2]).all()
    assert overlay.width == 64 and overlay.height > 48  # legend strip below the image
    blended = np.asarray(overlay)[:48, :32].astype(int)
    assert np.abs(blended - (np.asarray(img)[:, :32] * 0.5 + pal[0] * 0.5)).max() <= 1

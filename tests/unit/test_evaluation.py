"""lseg.evaluation: label sets, the one scoring loop, sweep planning and the sweep's reports."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lseg.checkpoint_io import CheckpointError, load_checkpoint
from lseg.config import load_config
from lseg.data.names import universal_class_names
from lseg.data.taxonomy import load_taxonomy
from lseg.evaluation import SweepError
from lseg.evaluation.label_sets import build_label_set, fingerprint, identity_lut, resolve_label_set
from lseg.evaluation.reports import cell_record, publish
from lseg.evaluation.scoring import argmax_predictor, eval_mode, score
from lseg.evaluation.sweep import SweepSettings, build_protocols, checkpoint_refs, plan_cells, protocol_predictor
from lseg.inference import ProtocolError, whole_protocol

from helpers import ADE, SMOKE

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tax():
    return load_taxonomy()


@pytest.fixture(scope="module")
def prompts():
    return universal_class_names()


# ---------------------------------------------------------------------------------------- label sets


def test_universal_label_set(tax, prompts):
    ls = resolve_label_set("universal", ADE, tax, prompts)
    assert ls.num_classes == 194 and ls.prompts == prompts
    assert ls.gt_lut[:194].tolist() == list(range(194)) and ls.gt_lut[255] == 255
    assert ls.fingerprint == "dd39bd7b43d1"  # part of every cell id: reruns must find earlier cells


def test_dataset_label_set_scores_the_datasets_own_ids(tax, prompts):
    ls = resolve_label_set("dataset", ADE, tax, prompts)
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
    ls = resolve_label_set("synonyms", ADE, tax, prompts)
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
    ls = resolve_label_set(str(yaml_file), ADE, tax, prompts)
    dog = tax.universal.index("dog")
    assert [p for p, g in zip(ls.prompts, ls.groups) if g == dog] == ["hound", "canine", "mutt"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("substitutions:\n  dgo: hound\n")
    with pytest.raises(SweepError, match="'dgo' is not a universal class.*did you mean 'dog'"):
        resolve_label_set(str(bad), ADE, tax, prompts)
    txt = tmp_path / "names.txt"
    lines = list(prompts)
    lines[0] = "rucksack | knapsack"
    txt.write_text("\n".join(lines) + "\n")
    ls = resolve_label_set(str(txt), ADE, tax, prompts)
    assert ls.prompts[:2] == ["rucksack", "knapsack"] and ls.groups[:3] == [0, 0, 1]
    assert ls.substituted[0] and sum(ls.substituted) == 1
    short = tmp_path / "short.txt"
    short.write_text("a\nb\n")
    with pytest.raises(SweepError, match="need 194 non-empty lines"):
        resolve_label_set(str(short), ADE, tax, prompts)
    with pytest.raises(SweepError, match="unknown label set 'nonsense'"):
        resolve_label_set("nonsense", ADE, tax, prompts)


# ---------------------------------------------------------------------------------------- scoring


class _LabelEcho(torch.nn.Module):
    """Stand-in model: channel 0 of the image holds the class id; logits peak at that id."""

    def forward(self, x, labels):
        ids = torch.arange(len(labels), dtype=x.dtype).view(1, -1, 1, 1)
        return -(x[:, :1] - ids) ** 2


def _batches(labels: list[torch.Tensor], bad: tuple[int, ...] = ()) -> list[dict]:
    """One-image batches whose channel 0 is the label (255 -> 2: anything, it is ignored)."""
    out = []
    for i, y in enumerate(labels):
        x = y.clamp(max=2).float().expand(3, *y.shape).clone()
        out.append({"image": x[None], "label": y[None], "num_bad": torch.tensor([int(i in bad)])})
    return out


GT = [torch.tensor([[0, 1], [2, 255]]), torch.tensor([[1, 1], [0, 2]])]


def test_score_with_a_perfect_model_gives_the_ground_truth_counts():
    labels = build_label_set("toy", ["a", "b", "c"], [["a"], ["b"], ["c"]], identity_lut(3), [False] * 3)
    seen = []
    result = score(protocol_predictor(_LabelEcho(), labels, whole_protocol(), "fp32"), _batches(GT, bad=(1,)), 3,
                   CPU, target_map=labels.gt_lut, on_batch=seen.append)
    assert result.confusion.tolist() == [[2, 0, 0], [0, 3, 0], [0, 0, 2]]  # diagonal = GT counts
    assert (result.images, result.bad, seen) == (2, 1, [1, 1])
    assert result.panels == []


def test_score_adds_images_and_maps_targets():
    # prediction is always class 0; targets 0,1 map to classes 1,0 through the lookup table
    lut = torch.full((256,), 255, dtype=torch.int64)
    lut[0], lut[1] = 1, 0
    batch = {"image": torch.zeros(2, 3, 1, 2), "label": torch.tensor([[[0, 1]], [[1, 7]]]), "num_bad": torch.zeros(2)}
    result = score(lambda x: torch.zeros(x.shape[0], *x.shape[2:], dtype=torch.int64), [batch, batch], 2, CPU,
                   target_map=lut, num_panels=3)
    # per batch: targets (1, 0, 0, ignore) -> 1 pixel row 1, 2 pixels row 0; twice
    assert result.confusion.tolist() == [[4, 0], [2, 0]] and result.images == 4
    assert len(result.panels) == 3
    img, target, pred = result.panels[2]
    assert target.tolist() == [[1, 0]] and pred.tolist() == [[0, 0]] and img.shape == (3, 1, 2)


def test_argmax_predictor_and_eval_mode():
    class Image(torch.nn.Module):
        def forward(self, x, feats):
            assert not self.training
            return torch.einsum("bchw,nc->bnhw", x, feats)

    model = Image().train()
    feats = torch.eye(3)
    x = torch.tensor([[[[0.0]], [[2.0]], [[1.0]]]])  # (1, 3, 1, 1): channel 1 is largest
    with eval_mode(model):
        assert argmax_predictor(model, feats, "fp32")(x).tolist() == [[[1]]]
    assert model.training  # the previous mode is back


# ---------------------------------------------------------------------------------------- reports


def test_tables_from_cell_records(tmp_path):
    conf = torch.tensor([[2, 0, 0], [1, 1, 0], [0, 0, 0]])
    rec = cell_record(conf, ["a", "b", "c"], [False, True, True], 2, 0, 1.0, cell_id="cell-1",
                      checkpoint="run/step_00000010", checkpoint_path="/x/step_00000010.pt", step=10, dataset=ADE,
                      label_set="toy", **whole_protocol().describe(), weights="model", precision="fp32",
                      world_size=1, device="cpu")
    # IoU a = 2/3, b = 1/2, c absent from GT and prediction -> excluded
    assert rec["mIoU"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert rec["mIoU_sub"] == pytest.approx(1 / 2)  # substituted and present: b only
    assert rec["pixel_acc"] == pytest.approx(3 / 4) and rec["per_class_iou"]["c"] is None
    assert rec["gt_pixels"] == {"a": 2, "b": 2, "c": 0} and rec["classes_present"] == 2
    publish(tmp_path, rec, conf, writer=None)
    rows = (tmp_path / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 2 and rows[0].startswith("checkpoint,step,dataset")
    assert "| run/step_00000010 | 10 | ade20k-150-relabeled | toy | whole | 2 | 58.33 | 75.00 |" in \
        (tmp_path / "results.md").read_text()
    per_class = (tmp_path / "per_class.csv").read_text().strip().splitlines()
    assert len(per_class) == 1 + 3
    assert json.loads((tmp_path / "cells" / "cell-1.json").read_text())["cell_id"] == "cell-1"
    assert torch.equal(load_checkpoint(tmp_path / "cells" / "cell-1.conf.pt")["confusion"], conf)


def test_publish_logs_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    conf = torch.tensor([[3, 1], [0, 4]])
    rec = cell_record(conf, ["a", "b"], [False, False], 1, 0, 0.5, cell_id="c", checkpoint="r/s", checkpoint_path="/s",
                      step=20, dataset=ADE, label_set="universal", **whole_protocol().describe(), weights="model",
                      precision="fp32", world_size=1, device="cpu")
    with SummaryWriter(str(tmp_path / "tb")) as writer:
        publish(tmp_path, rec, conf, writer)
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    (event,) = acc.Scalars(f"{ADE}/universal/whole/pixel_acc")
    assert event.step == 20 and event.value == pytest.approx(7 / 8)
    assert f"{ADE}/universal/whole/mIoU_sub" not in acc.Tags()["scalars"]  # no substituted classes


# ---------------------------------------------------------------------------------------- planning


def _run_dir(tmp_path: Path, steps: list[int]) -> Path:
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    for s in steps:
        (ckpts / f"step_{s:08d}.pt").write_bytes(b"")
    return tmp_path / "run"


def test_settings_and_checkpoint_selection(tmp_path):
    with pytest.raises(SweepError, match="exactly one of --checkpoints and --run-dir"):
        SweepSettings(output_dir="o")
    with pytest.raises(SweepError, match="--last needs --run-dir"):
        SweepSettings(output_dir="o", checkpoints=["a.pt"], last=2)
    with pytest.raises(SweepError, match="unknown protocol 'multi'"):
        SweepSettings(output_dir="o", checkpoints=["a.pt"], protocols=["multi"])
    run = _run_dir(tmp_path, [10, 20, 30])
    refs = checkpoint_refs(SweepSettings(output_dir="o", run_dir=str(run), last=2))
    assert [(r.label, r.step) for r in refs] == [("run/step_00000020", 20), ("run/step_00000030", 30)]
    with pytest.raises(CheckpointError, match=r"cannot select the last 5 checkpoint.* has 3 \(steps 10, 20, 30\)"):
        checkpoint_refs(SweepSettings(output_dir="o", run_dir=str(run), last=5))
    with pytest.raises(SweepError, match="checkpoint not found"):
        checkpoint_refs(SweepSettings(output_dir="o", checkpoints=[str(tmp_path / "nope.pt")]))
    explicit = checkpoint_refs(SweepSettings(output_dir="o", checkpoints=[str(run / "checkpoints/step_00000010.pt")]))
    assert [(r.label, r.step) for r in explicit] == [("run/step_00000010", 10)]


def test_protocols_follow_the_flags_and_config():
    cfg = load_config(SMOKE)
    single, official, whole = build_protocols(
        SweepSettings(output_dir="o", checkpoints=["a"], protocols=["single", "official", "whole"],
                      scales=[0.5, 1.0], flip=False, stride=30), cfg)
    assert (single.base_size, single.crop_size, single.effective_stride) == (cfg.data.base_size, cfg.data.crop_size, 30)
    assert official.scales == (0.5, 1.0) and not official.flip
    assert whole.crop_size is None
    with pytest.raises(ProtocolError, match="stride must be in"):
        build_protocols(SweepSettings(output_dir="o", checkpoints=["a"], stride=cfg.data.crop_size + 1), cfg)


def test_plan_cells_ids_done_and_selected(tmp_path, tax, prompts):
    cfg = load_config(SMOKE)
    run = _run_dir(tmp_path, [10, 20])
    out = tmp_path / "sweep"
    s = SweepSettings(output_dir=str(out), run_dir=str(run), datasets=[ADE], label_sets=["universal", "dataset"],
                      protocols=["single", "whole"])
    plan = plan_cells(s, cfg, tax, prompts)
    assert len(plan.cells) == 2 * 2 * 2 and plan.pending == plan.cells
    ids = [c.cell_id for c in plan.cells]
    assert len(set(ids)) == 8 and ids[0].startswith("run_step_00000010__ade20k-150-relabeled__universal__single-")
    ref, ls, proto = plan.cells[0].ckpt, plan.label_sets[("universal", ADE)], plan.cells[0].protocol
    assert ids[0].endswith(fingerprint(ref.path, ADE, ls.fingerprint, proto.describe(), proto.pad_value,
                                       proto.size_divisor, None, False, "fp32", cfg.data.val_split))
    (out / "cells").mkdir(parents=True)
    (out / "cells" / f"{ids[3]}.json").write_text("{}")
    assert [c.cell_id for c in plan_cells(s, cfg, tax, prompts).pending] == ids[:3] + ids[4:]
    one = SweepSettings(**{**s.__dict__, "cells": [ids[5]]})
    assert [c.cell_id for c in plan_cells(one, cfg, tax, prompts).cells] == [ids[5]]
    with pytest.raises(SweepError, match="--cell: 1 id"):
        plan_cells(SweepSettings(**{**s.__dict__, "cells": ["nope"]}), cfg, tax, prompts)
    changed = plan_cells(SweepSettings(**{**s.__dict__, "max_samples": 3}), cfg, tax, prompts)
    assert not {c.cell_id for c in changed.cells} & set(ids)  # a different sample limit is a different cell


# ---------------------------------------------------------------------------------------- held-out classes


def _cell(conf, cell_id, step, **extra):
    return cell_record(conf, ["a", "b", "c"], [False] * 3, 1, 0, 0.5, cell_id=cell_id, checkpoint=f"r/{cell_id}",
                       checkpoint_path="/x", step=step, dataset=ADE, label_set="universal",
                       **whole_protocol().describe(), weights="model", precision="fp32", world_size=1, device="cpu",
                       **extra)


def test_tables_gain_seen_unseen_columns_only_with_held_out_classes(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    conf = torch.tensor([[3, 1, 0], [0, 2, 0], [1, 0, 1]])  # IoU a 3/5, b 2/3, c 1/2
    plain = _cell(conf, "plain", 10)
    assert not {"mIoU_seen", "mIoU_unseen", "hIoU", "unseen_classes"} & plain.keys()
    publish(tmp_path, plain, conf)
    header = (tmp_path / "results.csv").read_text().splitlines()[0]
    assert "seen" not in header and "seen" not in (tmp_path / "results.md").read_text()
    assert (tmp_path / "per_class.csv").read_text().splitlines()[0].endswith(",iou,gt_pixels")

    held = _cell(conf, "held", 20, unseen=[2])
    s, u = (3 / 5 + 2 / 3) / 2, 1 / 2
    assert held["unseen_classes"] == ["c"] and held["mIoU_unseen"] == u
    assert held["mIoU_seen"] == pytest.approx(s) and held["hIoU"] == pytest.approx(2 * s * u / (s + u))
    with SummaryWriter(str(tmp_path / "tb")) as writer:
        publish(tmp_path, held, conf, writer)
    rows = (tmp_path / "results.csv").read_text().splitlines()
    cols = rows[0].split(",")
    assert cols[cols.index("mIoU_sub") + 1: cols.index("mIoU_sub") + 5] == ["mIoU_seen", "mIoU_unseen", "hIoU",
                                                                            "unseen_classes"]
    by_id = {r.split(",")[cols.index("cell_id")]: r for r in rows[1:]}
    assert by_id["plain"].split(",")[cols.index("hIoU")] == ""  # a run without held-out classes: empty cells
    assert by_id["held"].split(",")[cols.index("mIoU_unseen")] == "0.5"
    md = (tmp_path / "results.md").read_text()
    assert "| mIoU seen | mIoU unseen | hIoU |" in md
    assert f"| r/held | 20 | {ADE} | universal | whole | 1 | 58.89 | 75.00 | 59.17 | – | 63.33 | 50.00 | 55.88 |" in md
    per_class = (tmp_path / "per_class.csv").read_text().splitlines()
    assert per_class[0].endswith(",unseen") and "held,r/held,20,ade20k-150-relabeled,universal,whole,c,0.5,2,True" \
        in per_class
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    (event,) = acc.Scalars(f"{ADE}/universal/whole/hIoU")
    assert event.step == 20 and event.value == pytest.approx(2 * s * u / (s + u))


# ---------------------------------------------------------------------------------------- label sets of other datasets


def _food_space():
    from lseg.data import LabelSpace
    from lseg.data.synthetic import FOODSEG103_CLASSES

    return LabelSpace("foodseg103", FOODSEG103_CLASSES, FOODSEG103_CLASSES)


def test_own_label_sets_of_a_dataset_without_universal_mapping(tax, prompts, tmp_path):
    own = _food_space()
    ls = resolve_label_set("dataset", "foodseg103", tax, prompts, own, ())
    assert ls.space == "foodseg103" and ls.num_classes == 104 and ls.prompts == list(own.prompts)
    assert ls.gt_lut[:104].tolist() == list(range(104)) and ls.gt_lut[104] == 255
    for spec in ("universal", "synonyms"):
        with pytest.raises(SweepError, match=f"label set '{spec}': dataset foodseg103 has no mapping into the universal"):
            resolve_label_set(spec, "foodseg103", tax, prompts, own, ())
    txt = tmp_path / "food.txt"
    txt.write_text("\n".join(["plate", *own.prompts[1:]]) + "\n")
    ls = resolve_label_set(str(txt), "foodseg103", tax, prompts, own, ())
    assert ls.space == "foodseg103" and ls.substituted == [True] + [False] * 103


def test_foodseg103_synonym_file(tax, prompts):
    """The shipped synonym set: the FoodSeg LSeg pairs, keyed by real FoodSeg103 names, never another class's name."""
    from lseg.evaluation.label_sets import SYNONYMS_FILE

    own = _food_space()
    path = SYNONYMS_FILE.parent / "foodseg103_synonyms.yaml"
    ls = resolve_label_set(str(path), "foodseg103", tax, prompts, own, ())
    got = {own.classes[g]: p for p, g in zip(ls.prompts, ls.groups) if ls.substituted[g]}
    assert {k: got[k] for k in ("candy", "egg tart", "french fries", "chocolate", "biscuit", "popcorn", "pudding")} == {
        "candy": "sweets", "egg tart": "custard tart", "french fries": "chips", "chocolate": "cocoa",
        "biscuit": "cookie", "popcorn": "popped corn", "pudding": "custard"}
    assert len(got) >= 20 and ls.space == "foodseg103" and ls.num_classes == 104
    assert not set(got.values()) & set(own.classes)
    with pytest.raises(SweepError, match="keyed by foodseg103's classes"):
        resolve_label_set(str(path), ADE, tax, prompts)


def test_ade20k_150_label_sets(tax, prompts):
    from lseg.data import LabelSpace
    from lseg.data.builtin import ade20k_classes

    ade = ade20k_classes()
    own = LabelSpace("ade20k-150", ade.names, ade.prompts)
    ls = resolve_label_set("dataset", "ade20k-150", tax, prompts, own, ("universal",))
    assert ls.space == "ade20k-150" and ls.prompts[64] == "coffee" and ls.class_names[64] == "coffee table"
    uni = resolve_label_set("universal", "ade20k-150", tax, prompts, own, ("universal",))
    assert uni.space == "universal" and uni.fingerprint == "dd39bd7b43d1"  # the same cells as on any dataset

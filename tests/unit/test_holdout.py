"""Held-out classes: names -> training prompts, the label lookup and the unseen ids."""
from __future__ import annotations

import pytest
import torch

from lseg.config import DataConfig
from lseg.data import DataError, class_names
from lseg.data.holdout import resolve_holdout, run_holdout, unseen_classes
from lseg.data.taxonomy import load_taxonomy

PROMPTS = ["road", "road barrier", "sky", "person"]


def test_training_prompts_lookup_and_unseen_ids():
    h = resolve_holdout(PROMPTS, ["sky", "road barrier"])
    assert h.active and h.unseen_ids == [1, 2]
    assert h.train_prompts == ["road", "person"]  # seen classes, label-space order
    expected = torch.full((256,), 255, dtype=torch.int64)
    expected[0], expected[3] = 0, 1  # road -> 0, person -> 1; road barrier, sky, 255 and the rest -> 255
    assert h.train_lut.dtype == torch.int64 and torch.equal(h.train_lut, expected)
    labels = torch.tensor([[0, 1, 2, 3, 255]])
    assert h.train_lut[labels].tolist() == [[0, 255, 255, 1, 255]]


def test_nothing_held_out_is_the_identity_on_the_label_space():
    h = resolve_holdout(PROMPTS, [])
    assert not h.active and h.unseen_ids == [] and h.train_prompts == PROMPTS
    assert h.train_lut[:4].tolist() == [0, 1, 2, 3] and (h.train_lut[4:] == 255).all()


@pytest.mark.parametrize("name", ["road barrier", "road_barrier", "Road  Barrier", "ROAD_BARRIER"])
def test_prompt_or_raw_identifier_is_accepted(name):
    assert resolve_holdout(PROMPTS, [name, "road barrier"]).unseen_ids == [1]


def test_identifiers_name_classes_whose_prompt_was_overridden():
    h = resolve_holdout(["pier or wharf", "sky"], ["pier_wharf"], identifiers=["pier_wharf", "sky"])
    assert h.unseen_ids == [0] and h.train_prompts == ["sky"]


def test_unknown_class_is_one_line_with_a_suggestion():
    with pytest.raises(DataError) as exc:
        resolve_holdout(PROMPTS, ["road bariers"], space="universal")
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg == ("data.holdout_classes: 'road bariers' is not a class of the label space 'universal' "
                   "(did you mean 'road barrier'?)")
    with pytest.raises(DataError, match=r"'zebra crossing' is not a class .*'universal'$"):
        resolve_holdout(PROMPTS, ["zebra crossing"])


def test_holding_out_every_class_is_refused():
    with pytest.raises(DataError, match="holds out all 4 classes"):
        resolve_holdout(PROMPTS, PROMPTS)


def test_universal_space_by_identifier(mseg_root):
    universal = load_taxonomy(mseg_root).universal
    prompts = class_names(DataConfig(mseg_root=mseg_root))
    h = resolve_holdout(prompts, ["road_barrier", "sky"])
    assert [universal[c] for c in h.unseen_ids] == sorted(["road_barrier", "sky"], key=universal.index)
    assert len(h.train_prompts) == len(prompts) - 2 and "sky" not in h.train_prompts


def test_unseen_classes_of_an_evaluation_label_set():
    lut = torch.full((256,), 255, dtype=torch.int64)
    lut[0], lut[1], lut[2], lut[3], lut[5] = 2, 0, 1, 1, 3  # label-space id -> evaluated class
    assert unseen_classes(lut, [1]) == [0]
    assert unseen_classes(lut, [2]) == []  # class 1 also takes seen id 3: partly trained on, so seen
    assert unseen_classes(lut, [2, 3, 5]) == [1, 3]
    assert unseen_classes(lut, [4]) == []  # id 4 is not scored by this label set
    assert unseen_classes(resolve_holdout(PROMPTS, []).train_lut, []) == []


def test_run_holdout_accepts_the_identifier_of_an_overridden_prompt(tmp_path, mseg_root):
    names = tmp_path / "names.yaml"
    names.write_text("pier_wharf: pier or wharf\n")
    d = DataConfig(mseg_root=mseg_root, class_names_file=str(names), holdout_classes=["pier_wharf", "Pier or Wharf"])
    prompts = class_names(d)
    h = run_holdout(d, prompts)
    assert [prompts[c] for c in h.unseen_ids] == ["pier or wharf"] and "pier or wharf" not in h.train_prompts
    assert not run_holdout(DataConfig(mseg_root=mseg_root), prompts).active


def test_held_out_pixels_can_be_labelled_as_a_seen_class():
    """The official zero-shot recipe: novel objects become "others" instead of being ignored."""
    prompts = ["others", "aeroplane", "bicycle", "bird"]
    h = resolve_holdout(prompts, ["bicycle"], label_as="others")
    assert h.train_prompts == ["others", "aeroplane", "bird"] and h.unseen_ids == [2]
    assert h.train_lut[torch.tensor([0, 1, 2, 3, 255])].tolist() == [0, 1, 0, 2, 255]
    with pytest.raises(DataError, match="'bicycle' is a held-out class"):
        resolve_holdout(prompts, ["bicycle"], label_as="bicycle")
    with pytest.raises(DataError, match="'other' is not a class of the label space"):
        resolve_holdout(prompts, ["bicycle"], label_as="other")

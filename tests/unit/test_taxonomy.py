"""MSeg taxonomy: real mappings from the real mseg-api files (MSEG_ROOT, default ../shared/mseg).

Expected pairs were read by hand from MSeg_master.tsv (row index = universal id, header excluded)
and the relabeled names files (line number - 1 = dataset id).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lseg.config import load_config
from lseg.data import DataError, class_names, load_taxonomy, readable, resolve_mseg_root, write_class_names
from lseg.data.names import read_class_names
from lseg.data.taxonomy import main as taxonomy_main
from lseg.data.taxonomy import parse_cell

from helpers import REPO  # noqa: E402
ADE, COCO = "ade20k-150-relabeled", "coco-panoptic-133-relabeled"


@pytest.fixture(scope="module")
def tax(mseg_root):
    return load_taxonomy(mseg_root)


def test_counts(tax):
    assert tax.num_classes == 194
    assert len(tax.dataset_classes[ADE]) == 141
    assert len(tax.dataset_classes[COCO]) == 155


def test_universal_names_in_tsv_row_order(tax):
    assert tax.universal[0] == "backpack"
    assert tax.universal[41] == "cell phone"
    assert tax.universal[131] == "road_barrier"
    assert tax.universal[193] == "window_blind"
    assert "unlabeled" not in tax.universal


# (dataset class name, dataset id, universal id), checked by hand in the files
ADE_PAIRS = [("airplane", 0, 179), ("arcade_machine", 3, 93), ("bicyclist", 16, 127), ("person", 77, 125),
             ("road", 93, 98), ("sky", 108, 142), ("teddy_bear", 120, 109), ("wall", 132, 191)]
COCO_PAIRS = [("airplane", 0, 179), ("bicyclist", 17, 127), ("cell phone", 37, 41), ("person", 86, 125),
              ("road", 99, 98), ("sky", 115, 142), ("teddy_bear", 130, 109), ("wall", 147, 191)]


@pytest.mark.parametrize("dataset,pairs", [(ADE, ADE_PAIRS), (COCO, COCO_PAIRS)])
def test_known_pairs(tax, dataset, pairs):
    table = tax.table(dataset)
    for name, did, uid in pairs:
        assert tax.dataset_classes[dataset][did] == name
        assert int(table[did]) == uid, name
        assert tax.universal[uid] == name


@pytest.mark.parametrize("dataset,count", [(ADE, 141), (COCO, 155)])
def test_each_relabeled_class_has_exactly_one_universal_id(tax, dataset, count):
    table = tax.table(dataset)
    assert table.dtype == np.uint8 and table.shape == (256,)
    mapped = table[:count]
    assert 255 not in mapped
    assert len(set(mapped.tolist())) == count  # injective: distinct universal classes
    assert (table[count:] == 255).all()  # unused ids and 255 -> ignore
    # relabeled columns hold the universal name itself
    assert [tax.universal[u] for u in mapped] == list(tax.dataset_classes[dataset])


def test_ade_only_and_coco_only_classes(tax):
    ade_u = set(tax.table(ADE)[:141].tolist())
    coco_u = set(tax.table(COCO)[:155].tolist())
    assert 93 in ade_u and 93 not in coco_u  # arcade_machine
    assert 41 in coco_u and 41 not in ade_u  # cell phone


def test_remap_whole_array(tax):
    label = np.array([[0, 77, 255], [93, 132, 140]], dtype=np.uint8)
    out = tax.remap(ADE, label)
    assert out.dtype == np.uint8
    assert out.tolist() == [[179, 125, 255], [98, 191, int(tax.table(ADE)[140])]]


def test_parse_cell_irregular_sets():
    assert parse_cell("{house,building,  skyscraper}") == ["house", "building", "skyscraper"]
    assert parse_cell("{handbag}") == ["handbag"]
    assert parse_cell("crt screen") == ["crt screen"]
    assert parse_cell(" ") == []


def test_cli_json(mseg_root, capsys):
    assert taxonomy_main(["--mseg-root", mseg_root, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"universal", ADE, COCO}
    assert len(out["universal"]) == 194 and out["universal"][131] == "road_barrier"
    assert len(out[ADE]) == 141 and len(out[COCO]) == 155
    assert out[ADE]["77"] == 125 and out[COCO]["37"] == 41


def test_cli_module_entry_point(mseg_root):
    env = dict(os.environ, MSEG_ROOT=mseg_root)
    res = subprocess.run([sys.executable, "-m", "lseg.data.taxonomy"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("universal: 194 classes")
    assert "  77  person                   -> 125  person" in res.stdout
    assert "Warning" not in res.stderr  # e.g. runpy's double-import warning


def test_missing_mseg_root_names_both_fixes(tmp_path, monkeypatch):
    with pytest.raises(DataError) as exc:
        resolve_mseg_root(tmp_path / "nope")
    msg = str(exc.value)
    assert "\n" not in msg and str(tmp_path / "nope") in msg
    assert "git submodule update --init mseg" in msg and "MSEG_ROOT=" in msg
    monkeypatch.setenv("MSEG_ROOT", str(tmp_path))
    with pytest.raises(DataError, match="MSEG_ROOT"):
        resolve_mseg_root(None)


def test_root_precedence(mseg_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MSEG_ROOT", str(tmp_path))  # env is bad, explicit config wins
    assert resolve_mseg_root(mseg_root) == Path(mseg_root).resolve()
    # the inner mseg/ folder of a checkout is accepted too
    assert resolve_mseg_root(Path(mseg_root) / "mseg") == Path(mseg_root).resolve()
    monkeypatch.setenv("MSEG_ROOT", mseg_root)
    assert resolve_mseg_root(None) == Path(mseg_root).resolve()


def test_cli_error_is_one_line(tmp_path, capsys):
    assert taxonomy_main(["--mseg-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: MSeg taxonomy files not found")


def test_readable_names(mseg_root):
    assert readable("road_barrier") == "road barrier"
    cfg = load_config(None, [f"data.mseg_root={mseg_root}"])
    names = class_names(cfg)
    assert len(names) == 194
    assert names[131] == "road barrier" and names[41] == "cell phone" and names[33] == "pier wharf"
    assert all("_" not in n for n in names)


def test_overrides_yaml_and_tsv(mseg_root, tmp_path):
    yml = tmp_path / "names.yaml"
    yml.write_text("pier_wharf: pier or wharf\n41: mobile phone\n")
    tsv = tmp_path / "names.tsv"
    tsv.write_text("# comment\nroad_barrier\tjersey barrier\r\n")
    for path, uid, text in ((yml, 33, "pier or wharf"), (yml, 41, "mobile phone"), (tsv, 131, "jersey barrier")):
        cfg = load_config(None, [f"data.mseg_root={mseg_root}", f"data.class_names_file={path}"])
        names = class_names(cfg)
        assert names[uid] == text
        assert names[0] == "backpack" and len(names) == 194


def test_override_unknown_class_is_an_error(mseg_root, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pier_warf: pier\n")
    cfg = load_config(None, [f"data.mseg_root={mseg_root}", f"data.class_names_file={bad}"])
    with pytest.raises(DataError, match="'pier_warf' is not a universal class"):
        class_names(cfg)


def test_write_class_names(mseg_root, tmp_path):
    yml = tmp_path / "names.yaml"
    yml.write_text("road_barrier: traffic barrier\n")
    cfg = load_config(None, [f"data.mseg_root={mseg_root}", f"data.class_names_file={yml}"])
    path = write_class_names(cfg, tmp_path / "run")
    assert path == tmp_path / "run" / "class_names.txt"
    lines = path.read_text().split("\n")
    assert len(lines) == 195 and lines[-1] == ""  # 194 names + final newline
    assert lines[131] == "traffic barrier" and lines[193] == "window blind"
    assert read_class_names(path) == class_names(cfg)

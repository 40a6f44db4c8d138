"""Files are read as data, never run: every reader refuses code-running pickles; source scans."""
from __future__ import annotations

import ast
import re

import pytest

from lseg.checkpoint_io import CheckpointError

from helpers import REPO, SMOKE, ADE, one_error_line, evil_checkpoint


def test_pickle_that_would_run_code_is_refused_by_every_reader(tools, files, synthetic_root, tmp_path, capsys):
    from lseg.models import load_model

    marker = tmp_path / "pwned"
    evil = evil_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_model(evil)
    rc = tools["average_checkpoints"].main(["--checkpoints", str(evil), "--output", str(tmp_path / "a.pt")])
    assert rc == 2 and "refused to unpickle" in one_error_line(capsys)
    rc = tools["predict"].main(["--checkpoint", str(evil), "--image", str(files["jpeg"]), "--labels", "a",
                                "--output", str(tmp_path / "p")])
    assert rc == 2 and "refused to unpickle" in one_error_line(capsys)
    rc = tools["eval_sweep"].main(["--checkpoints", str(evil), "--output-dir", str(tmp_path / "s"),
                                   f"data.root={synthetic_root}"])
    assert rc == 2 and "refused to unpickle" in one_error_line(capsys)
    rc = tools["eval_sweep"].main(["--checkpoints", str(evil), "--config", str(SMOKE), "--output-dir",
                                   str(tmp_path / "s2"), f"data.root={synthetic_root}", "data.num_workers=0",
                                   "--max-samples", "1", "--datasets", ADE, "--protocols", "whole"])
    assert rc == 2 and "refused to unpickle" in one_error_line(capsys)
    rc = tools["convert_langseg"].main([str(evil), str(tmp_path / "c.pt")])
    assert rc == 2 and "re-run with --trust-pickle if you trust this file" in one_error_line(capsys)
    assert not marker.exists()


def test_reliability_table_cites_only_tests_that_exist():
    """docs/reliability.md's proof column stays true: every cited test is defined in its file."""
    table = (REPO / "docs" / "reliability.md").read_text()
    cited = [(REPO / "tests" / f, name) for f, name in re.findall(r"`((?:\w+/)?test_\w+\.py)::(test_\w+)`", table)]
    assert len(cited) > 40
    defined = {path: {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}
               for path in {path for path, _ in cited}}
    missing = [f"{path.name}::{name}" for path, name in cited if name not in defined[path]]
    assert not missing, missing


def test_every_torch_load_is_weights_only_and_every_yaml_load_is_safe():
    """Source scan: torch.load only in lseg/checkpoint_io.py (the documented --trust-pickle opt-in)
    or with a literal weights_only=True; YAML only through yaml.safe_load."""
    sources = [p for d in ("lseg", "tools", "tests") for p in (REPO / d).rglob("*.py")]
    assert len(sources) > 30
    torch_loads, unsafe = [], []
    for path in sources:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            if owner == "torch" and node.func.attr == "load":
                kw = {k.arg: k.value for k in node.keywords}
                literal_true = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                if path != REPO / "lseg/checkpoint_io.py" and not literal_true:
                    unsafe.append(f"{where}: torch.load without weights_only=True")
                torch_loads.append(where)
            if owner == "yaml" and node.func.attr in ("load", "load_all", "unsafe_load", "full_load",
                                                       "unsafe_load_all", "full_load_all"):
                unsafe.append(f"{where}: yaml.{node.func.attr}")
            if owner == "pickle" and node.func.attr in ("load", "loads") and "tests" not in path.parts:
                unsafe.append(f"{where}: pickle.{node.func.attr}")
    assert not unsafe, unsafe
    assert any(w.startswith("lseg/checkpoint_io.py") for w in torch_loads)
    # the one opt-in: weights_only is only ever off when a caller passes trust_pickle=True
    text = (REPO / "lseg/checkpoint_io.py").read_text()
    assert "weights_only=not trust_pickle" in text and "trust_pickle: bool = False" in text
    callers = [p for p in sources if "trust_pickle=" in p.read_text() and p.name != "checkpoint_io.py"
               and "tests" not in p.parts]
    assert sorted(str(p.relative_to(REPO)) for p in callers) == ["lseg/models/convert.py", "tools/convert_langseg.py"]

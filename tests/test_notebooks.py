"""The quickstart notebook runs top to bottom in a fresh kernel and shows what it promises."""

import base64
import subprocess
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "notebooks" / "quickstart.ipynb"


def outputs(nb) -> list:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]


def repo_status() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout


def test_the_committed_notebook_is_small_and_without_outputs():
    nb = nbformat.read(QUICKSTART, as_version=4)
    assert not outputs(nb) and QUICKSTART.stat().st_size < 20_000


@pytest.mark.slow
def test_quickstart_runs_and_shows_the_answer_its_plots_and_the_backtest(tmp_path, monkeypatch):
    monkeypatch.setenv("PREALERT_SAMPLE", str(ROOT / "data" / "sample"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's work folder goes here
    nb = nbformat.read(QUICKSTART, as_version=4)
    before = repo_status()
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    out = outputs(nb)
    assert not [o for o in out if o.output_type == "error"]
    stderr = "".join(o.text for o in out if o.output_type == "stream" and o.name == "stderr")
    assert stderr == "", f"noise in the cells: {stderr[:500]}"
    text = "\n".join(o.text if o.output_type == "stream" else o.get("data", {}).get("text/plain", "")
                     for o in out)
    html = "\n".join(o.get("data", {}).get("text/html", "") for o in out)
    pngs = [o["data"]["image/png"] for o in out if "image/png" in o.get("data", {})]

    assert "21 series on a 5m grid" in text
    assert "portal-demo/jvm_heap_pct above 90" in html  # the answer's rich repr
    assert "between (P10–P90)" in html and "drivers" in html
    assert len(pngs) == 3  # forecast, crossing-time distribution, drivers
    assert all(base64.b64decode(p).startswith(b"\x89PNG") for p in pngs)
    assert "true crossing 2026-10-04 00:42 UTC" in text
    for predictor in ("prealert", "predict_linear_60m", "predict_linear_30m"):
        assert f"&quot;{predictor}&quot;</td>" in html  # a row of the summary table
    assert repo_status() == before  # it wrote nothing into the repository

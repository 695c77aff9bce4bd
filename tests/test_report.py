"""Reports: the plots and report.html exist, the page references them; matplotlib stays lazy."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modeconnect.barrier_studies import Study, barrier_study
from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import Batch
from modeconnect.io.report import write_report
from modeconnect.models import mlp

PNG = b"\x89PNG\r\n\x1a\n"


def _data(seed: int) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(30, 6, generator=g), torch.randint(3, (30,), generator=g))]


@pytest.fixture(scope="module")
def study() -> Study:
    torch.manual_seed(0)
    model = mlp(6, [8], 3)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    b = {k: v.clone() for k, v in mlp(6, [8], 3).state_dict().items()}
    return barrier_study(
        model, a, b, test=_data(0), train=_data(1), steps=5, layerwise=True, bootstrap=20
    )


def test_report_files_exist_and_the_page_references_them(study: Study, tmp_path: Path) -> None:
    out = tmp_path / "report"
    files = write_report(study, out, command="modeconnect barrier a.pt b.pt --data t.pt")
    assert files.html == out / "report.html"
    assert set(files.plots) == {"curves", "layerwise"}
    page = files.html.read_text(encoding="utf-8")
    for name, png in files.plots.items():
        assert png.parent == out and png.read_bytes().startswith(PNG), name
        assert f'href="{png.name}"' in page
        assert base64.b64encode(png.read_bytes()).decode("ascii") in page  # self-contained
    assert "modeconnect barrier a.pt b.pt --data t.pt" in page
    assert "Layer-wise barriers, aligned" in page and "Bootstrap intervals" in page
    assert f"{study.naive.test.barriers['lerp'].loss:.4f}" in page


def test_report_needs_force_to_overwrite(study: Study, tmp_path: Path) -> None:
    write_report(study, tmp_path)
    with pytest.raises(ModeconnectError, match=r"report.html: already exists \(the report\)"):
        write_report(study, tmp_path)
    write_report(study, tmp_path, force=True)
    file = tmp_path / "file.txt"
    file.write_text("x")
    with pytest.raises(ModeconnectError, match="must name a folder, not a file"):
        write_report(study, file, force=True)


def test_report_without_layerwise_has_only_the_curves(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = mlp(6, [8], 3)
    sd = model.state_dict()
    plain = barrier_study(model, sd, sd, test=_data(2), align=None, steps=3)
    files = write_report(plain, tmp_path / "r")
    assert set(files.plots) == {"curves"} and not (tmp_path / "r" / "layerwise.png").exists()


def test_importing_modeconnect_does_not_import_matplotlib() -> None:
    code = (
        "import sys, modeconnect, modeconnect.io.report, modeconnect.barrier_studies; "
        "import modeconnect.progress; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'; "
        "assert 'rich' not in sys.modules, 'rich imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

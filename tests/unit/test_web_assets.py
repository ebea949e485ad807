"""The dashboard's files: every one the page loads is in the package, and in the wheel."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mailqueue import web

ROOT = Path(__file__).resolve().parents[2]


def referenced() -> set[str]:
    """Every asset the page names: in index.html, and in the modules' imports."""
    names = set(re.findall(r'"/static/([^"]+)"', web.read_asset("index.html")))
    for name in [n for n in web.asset_names() if n.endswith(".js")]:
        names |= set(re.findall(r'from "\./([^"]+)"', web.read_asset(name)))
    return names


def test_every_asset_the_page_loads_is_in_the_package() -> None:
    names = web.asset_names()
    assert {"index.html", "chart.js", "dashboard.js", "dashboard.css"} <= set(names)
    assert referenced() <= set(names)


def test_no_asset_loads_anything_from_elsewhere() -> None:
    for name in web.asset_names():
        text = web.read_asset(name)
        assert not re.search(r'(src|href)="(https?:)?//', text), name
        assert "import(" not in text and "http://" not in text.replace(
            "http://www.w3.org/2000/svg", ""), name


def test_the_wheel_carries_every_asset(tmp_path: Path) -> None:
    """setuptools' build_py gathers what the wheel holds (modules and package data), from
    a copy of the source, so the packaging config itself is what is checked."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "mailqueue", source / "mailqueue",
                    ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()",
                            "-q", "build_py", "--build-lib", str(tmp_path / "lib")],
                           cwd=source, capture_output=True, text=True, timeout=300,
                           check=False)
    assert built.returncode == 0, built.stderr
    static = tmp_path / "lib" / "mailqueue" / "web" / "static"
    assert sorted(p.name for p in static.iterdir()) == web.asset_names()
    assert (tmp_path / "lib" / "mailqueue" / "web" / "__init__.py").exists()


NODE_CHECK = """
import {LiveSeries, waiting} from "./series.js";
import {niceScale, storesOf} from "./chart.js";
const s = new LiveSeries(1000);
s.seed([{arrival_epoch: 1010, recipients: [{store: "a", state: "held"},
                                          {store: "b", state: "delivered"}]},
        {arrival_epoch: 1020, recipients: [{store: "a", state: "queued"}]}]);
const counts = (at, a, delivered, accepted) => ({at_epoch: at, delivered, accepted,
  stores: {a: {queued: a, active: 0, held: 0}}});
s.add(counts(1030, 2, 0, 2));
s.add(counts(1031, 2, 0, 2));
s.add(counts(1090, 0, 2, 2));
console.log(JSON.stringify({
  depths: s.points.map((p) => p.depth.a || 0), totals: s.totals.length,
  rate: s.rate("delivered"), bars: s.deliveredBars(1100),
  waiting: waiting({queued: 1, active: 2, held: 3, delivered: 9}),
  nice: [niceScale(0), niceScale(7), niceScale(1234)],
  stores: storesOf({stores: ["b"], points: [{depth: {a: 1, b: 2}}]}),
}));
"""


def test_live_series_and_scales_in_node(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("needs Node.js to run the page's modules outside a browser")
    for name in web.asset_names():
        if name.endswith(".js"):
            (tmp_path / name).write_text(web.read_asset(name))
    (tmp_path / "check.js").write_text(NODE_CHECK)
    result = subprocess.run([node, "--experimental-default-type=module", "check.js"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    # Seeded from the waiting mail (1010, 1020), then live points only where depth changes.
    assert found["depths"] == [0, 1, 2, 0]
    assert found["totals"] == 3
    assert found["rate"] == pytest.approx(2 / 60)
    assert found["bars"] == [5, [{"at": 1090, "count": 2}]]
    assert found["waiting"] == 6
    assert found["nice"] == [[1, 1], [2, 8], [500, 1500]]
    assert found["stores"] == ["b", "a"]

"""Run every notebook in nbs/ with nbdev's in-process runner: their asserts are tests.

Cells flagged `#| slow` or `#| gpu` are skipped (settings.ini `tst_flags`); set VTOM_TEST_FLAGS=slow to run them.
"""
import os
from pathlib import Path

import nbdev.test as nbtest  # imported as a module so pytest does not collect nbdev's `test_nb`
import pytest

from vtom.core import has_package

NBS = sorted((Path(__file__).resolve().parents[1] / "nbs").glob("[0-9]*.ipynb"))
FORCE = [f for f in os.environ.get("VTOM_TEST_FLAGS", "").split(",") if f]
# notebooks of an optional extra: skipped (with the reason) where it is not installed; `make install` installs them all
NEEDS = {"12_lmms": ("lmms_eval", "lmms-eval is not installed: pip install -e '.[lmms]' (`make install` does)")}


@pytest.mark.parametrize("notebook", NBS, ids=[p.stem for p in NBS])
def test_notebook(notebook: Path):
    package, reason = NEEDS.get(notebook.stem, (None, ""))
    if package and not has_package(package): pytest.skip(reason)
    import vtom.features  # noqa: F401  its builders register on first import: in the snapshot, not wiped by the restore
    from vtom.registry import TOWERS
    towers = dict(TOWERS)   # the notebook's export cells run in this process and re-register the tower builders they define
    try: ok, seconds = nbtest.test_nb(notebook, skip_flags=["slow", "gpu"], force_flags=FORCE, showerr=True)
    finally: TOWERS.clear(), TOWERS.update(towers)   # later tests see the package's builders, not the notebook's copies
    assert ok, f"{notebook.name} failed (the traceback is printed above); open it in Jupyter to debug"


@pytest.mark.parametrize("notebook", NBS, ids=[p.stem for p in NBS])
def test_parameters_cell_parses_for_papermill(notebook: Path, caplog):
    "papermill must read every parameter (name, type, default) of the `parameters` cell, or `-p` overrides go unchecked."
    import json
    from papermill.translators import PythonTranslator
    cells = [c for c in json.loads(notebook.read_text())["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) <= 1, f"{notebook.name} has {len(cells)} cells tagged `parameters`"
    if not cells: return
    with caplog.at_level("WARNING", logger="papermill"):
        params = PythonTranslator.inspect({"source": "".join(cells[0]["source"])})
    assert params and not caplog.records, f"{notebook.name}: {[r.getMessage() for r in caplog.records]}"

"""The README's Python API example runs as written (on the shipped model)."""
import re
from pathlib import Path

from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_api_example_runs(tmp_path, monkeypatch):
    section = README.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1 and len(blocks[0].strip().splitlines()) == 5
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(blocks[0], str(README), "exec"), scope)
    assert len(scope["images"]) == 4 and len(scope["edits"]) == 2
    saved = Image.open(tmp_path / "circle.png")
    assert saved.size == (scope["model"].resolution,) * 2
    kept = 8 * scope["model"].config.image_grid        # keep_rows=8: the edit starts from the saved image's codes
    assert all(e.image_tokens[:kept].equal(scope["edits"][0].image_tokens[:kept]) for e in scope["edits"])

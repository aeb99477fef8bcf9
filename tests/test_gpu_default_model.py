"""scripts/gpu_default_model.sh, the one prepared GPU run, at toy sizes on the CPU: every step runs,
each step's time is written, and the bundle it makes loads, draws, and has no file over 16 MiB."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


BIN = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"   # the dalle beside this python


@pytest.mark.skipif(shutil.which("dalle", path=BIN) is None, reason="needs the installed dalle command")
def test_the_gpu_script_builds_a_bundle_at_the_tiny_scale(tmp_path):
    env = {**os.environ, "SCALE": "tiny", "JOBS": "2", "PATH": BIN}
    run = subprocess.run(["bash", "scripts/gpu_default_model.sh", str(tmp_path / "out")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    steps = [line.split()[0] for line in (tmp_path / "out" / "times.txt").read_text().splitlines()]
    assert steps == ["data", "tokenizer", "codebook", "tokens", "transformer", "scorer", "bundle"]
    bundle = tmp_path / "out" / "candidate"
    assert all(f.stat().st_size <= 16 * 2 ** 20 for f in bundle.rglob("*") if f.is_file())
    from dalle import Dalle
    model = Dalle.from_pretrained(bundle, device="cpu")
    assert model.scorer is not None and model.meta["trained_on"] == "gpu"
    assert model.model.config.spell_pos == 16                 # within-word positions for the spelled words
    gens = model.generate(["a red circle"], n=1, seed=0, candidates=2)
    assert gens[0].image.size == (16, 16)

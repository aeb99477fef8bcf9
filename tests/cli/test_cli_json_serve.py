"""`dalle generate --json`, `dalle serve` start-up and `--logger` on the command line."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from PIL import Image

from cli.main import build_parser, load_preset_arg, main
from tests.bundles import save_tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return save_tiny_bundle(tmp_path_factory.mktemp("cli-model"))


def test_generate_json_prints_one_line_per_image(bundle, tmp_path, capsys):
    rc = main(["generate", "a red cube", "two green cats", "-n", "2", "--seed", "3", "--model", str(bundle),
               "--out", str(tmp_path), "--json", "-q", "--device", "cpu"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    rows = [json.loads(line) for line in lines]
    assert [r["prompt"] for r in rows] == ["a red cube"] * 2 + ["two green cats"] * 2
    for r in rows:
        assert r["seed"] == 3 and r["settings"]["n"] == 2 and isinstance(r["score"], float)
        meta = Image.open(r["path"]).text
        assert meta["prompt"] == r["prompt"] and meta["image_seed"] == str(r["image_seed"])
        assert r["grid"].endswith("grid.png")


def test_logger_flag_sets_the_stage_logger():
    parser = build_parser()
    a = parser.parse_args(["vqvae", "train", "x.tar", "--preset", "tiny", "--logger", "tensorboard"])
    assert load_preset_arg(a, "vqvae_train").vqvae_train.logger == "tensorboard"
    a = parser.parse_args(["train", "--tokens", "t", "--tokenizer", "tok.json", "--preset", "tiny"])
    assert load_preset_arg(a, "dalle_train").dalle_train.logger == "csv"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--tokenizer", "t", "--logger", "wandb"])


def test_serve_binds_localhost_says_so_and_refuses_a_busy_port(bundle):
    pytest.importorskip("uvicorn", reason="the serve extra is not installed")
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
        busy = subprocess.run([sys.executable, "-m", "cli.main", "serve", "--model", str(bundle), "--port",
                               str(port), "--device", "cpu"], capture_output=True, text=True, timeout=120)
        assert busy.returncode == 2 and "cannot listen on 127.0.0.1" in busy.stderr
        assert "Traceback" not in busy.stderr
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--model", str(bundle), "--port",
                             str(port), "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    try:
        banner = []
        while not any("open http" in line for line in banner) and len(banner) < 8:
            banner.append(proc.stdout.readline())
        line = banner[-1]
        assert f"http://127.0.0.1:{port}/" in line and "bound to 127.0.0.1: this machine only" in line, banner
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=5) as r:
                    info = json.loads(r.read())
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "server did not come up"
                time.sleep(0.2)
        assert info["image_grid"] == 4 and info["resolution"] == 16
    finally:
        proc.terminate()
        proc.wait(timeout=30)

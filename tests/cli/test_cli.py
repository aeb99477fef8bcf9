"""The dalle command: every subcommand listed, each error path one line + exit 2, generate/edit end to end."""
import json
import random
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

from cli.main import main
from dalle.bundle import save_bundle
from dalle.model import DalleTransformer
from tests.helpers import random_caption
from train.config import load_preset
from train.text_tokenizer import train_tokenizer
from vqvae.model import DiscreteVAE

COMMANDS = ["generate", "edit", "data", "tokenizer", "vqvae", "tokens", "train", "eval", "serve", "scorer"]


def make_bundle(root, *, seed=0, vocab=None):
    preset = load_preset("tiny", [f"vqvae.vocab_size={vocab}"] if vocab else [])
    rng = random.Random(seed)
    tok = train_tokenizer([random_caption(rng) for _ in range(100)], preset.dalle.text_vocab_size,
                          root / f"tok{seed}.json")
    torch.manual_seed(seed)
    return save_bundle(root / f"bundle{seed}", model=DalleTransformer(preset.dalle), vqvae=DiscreteVAE(preset.vqvae),
                       tokenizer_path=tok, meta={"test": True})


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("cli"))


def test_help_lists_every_command(capsys):
    out = subprocess.run([sys.executable, "-m", "cli.main", "-h"], capture_output=True, text=True, check=True).stdout
    listed = re.findall(r"^    ([a-z]+)  ", out, flags=re.M)
    assert sorted(listed) == sorted(COMMANDS)
    for name in COMMANDS:              # and each listed command answers -h on its own
        with pytest.raises(SystemExit) as done:
            main([name, "-h"])
        assert done.value.code == 0 and f"usage: dalle {name}" in capsys.readouterr().out


def test_generate_end_to_end_writes_pngs_with_metadata(bundle_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["generate", "a red circle", "two blue squares", "-n", "2", "--seed", "7", "--model", str(bundle_dir),
               "--out", str(out), "--top-k", "8", "--guidance", "2", "-q"])
    assert rc == 0
    printed = capsys.readouterr().out.split()
    pngs = sorted(out.glob("*_00[01].png"))
    assert len(pngs) == 4 and (out / "grid.png").exists()
    assert sorted(map(str, pngs)) == sorted(p for p in printed if not p.endswith("grid.png"))
    im = Image.open(pngs[0])
    assert im.size == (16, 16)
    settings = json.loads(im.text["settings"])
    assert settings["seed"] == 7 and settings["top_k"] == 8 and im.text["prompt"] in ("a red circle", "two blue squares")
    # the same seed reproduces the same file content whatever -n
    again = tmp_path / "again"
    assert main(["generate", "a red circle", "-n", "1", "--seed", "7", "--model", str(bundle_dir), "--out",
                 str(again), "--top-k", "8", "--guidance", "2", "-q"]) == 0
    a = Image.open(out / "a-red-circle_000.png").convert("RGB").tobytes()
    assert a == Image.open(again / "a-red-circle_000.png").convert("RGB").tobytes()


def test_edit_end_to_end(bundle_dir, tmp_path):
    src = tmp_path / "in.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(src)
    out = tmp_path / "edit"
    assert main(["edit", str(src), "a red square", "--keep-rows", "2", "-n", "2", "--model", str(bundle_dir),
                 "--out", str(out), "-q"]) == 0
    assert len(list(out.glob("a-red-square_*.png"))) == 2
    # neither --keep-rows nor --keep-fraction: the documented default keeps the top half
    half = tmp_path / "half"
    assert main(["edit", str(src), "a red square", "-n", "1", "--model", str(bundle_dir), "--out", str(half),
                 "-q"]) == 0
    settings = json.loads(Image.open(half / "a-red-square_000.png").text["settings"])
    assert settings["keep_fraction"] == 0.5 and settings["keep_rows"] is None


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args, message", [
    (["generate", ""], "empty prompt"),
    (["generate", "x", "--top-p", "1.5"], "--top-p"),
    (["generate", "x", "--temperature", "0"], "--temperature"),
    (["generate", "x", "-n", "0"], "-n"),
    (["generate", "x", "--top-k", "-3"], "--top-k"),
    (["generate", "x", "--seed", "abc"], "--seed"),
    (["generate", "x", "--model", "/nonexistent/model"], "model directory not found"),
    (["edit", "/nonexistent.png", "a cat"], "image not found"),
    (["edit", "IMG", "a cat", "--keep-fraction", "1.5"], "--keep-fraction"),
    (["data", "inspect", "/nonexistent/*.tar"], "error"),
    (["nonsense"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    args = [str(tmp_path / "x.png") if a == "IMG" else a for a in args]
    r = run_cli(*args)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_unreadable_image_and_bad_model_dirs(bundle_dir, tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not a picture")
    r = run_cli("edit", str(not_image), "a cat", "--model", str(bundle_dir))
    assert r.returncode == 2 and "cannot read" in r.stderr and "Traceback" not in r.stderr

    empty = tmp_path / "empty_model"
    empty.mkdir()
    r = run_cli("generate", "a cat", "--model", str(empty))
    assert r.returncode == 2 and "missing" in r.stderr

    # parts that do not belong together: another run's tokenizer, another codebook size
    other = make_bundle(tmp_path, seed=1, vocab=64)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in bundle_dir.iterdir():
        (mixed / f.name).write_bytes(f.read_bytes())
    (mixed / "tokenizer.json").write_bytes((other / "tokenizer.json").read_bytes())
    r = run_cli("generate", "a cat", "--model", str(mixed))
    assert r.returncode == 2 and "tokenizer" in r.stderr
    (mixed / "tokenizer.json").write_bytes((bundle_dir / "tokenizer.json").read_bytes())
    for name in ("vqvae.json", "vqvae.safetensors"):
        (mixed / name).write_bytes((other / name).read_bytes())
    r = run_cli("generate", "a cat", "--model", str(mixed))
    assert r.returncode == 2 and "do not belong together" in r.stderr


def test_long_prompt_is_truncated_with_a_warning(bundle_dir, tmp_path):
    r = run_cli("generate", "a red circle " * 20, "-n", "1", "--model", str(bundle_dir), "--out", str(tmp_path), "-q")
    assert r.returncode == 0, r.stderr
    assert "truncated" in r.stderr


def test_sampling_extremes_and_options_reach_the_sampler(bundle_dir, tmp_path):
    common = ["-n", "1", "--model", str(bundle_dir), "-q"]
    r = run_cli("generate", "a cat", "--temperature", "1e-45", "--out", str(tmp_path / "greedy"), *common)
    assert r.returncode == 0, r.stderr                                     # a tiny temperature is greedy
    greedy = Image.open(tmp_path / "greedy" / "a-cat_000.png").convert("RGB").tobytes()
    assert main(["generate", "a cat", "--top-k", "1", "--no-cache", "--out", str(tmp_path / "top1"), *common]) == 0
    assert Image.open(tmp_path / "top1" / "a-cat_000.png").convert("RGB").tobytes() == greedy
    settings = json.loads(Image.open(tmp_path / "top1" / "a-cat_000.png").text["settings"])
    assert settings["use_cache"] is False and settings["dtype"] == "auto" and settings["compile"] is None
    for args, message in ((["--guidance", "1e300"], "guidance 1e+300 overflows"), (["--dtype", "int8"], "dtype"),
                          (["--compile", "fast"], "compile"), (["--scorer", "nope"], "unknown scorer")):
        r = run_cli("generate", "a cat", "--out", str(tmp_path / "bad"), *common, *args)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr


def test_an_internal_error_is_not_reported_as_bad_input(bundle_dir, tmp_path, monkeypatch):
    import dalle.api

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(dalle.api.Dalle, "generate", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["generate", "a cat", "--model", str(bundle_dir), "--out", str(tmp_path), "-q"])


def test_eval_passes_its_sampling_options_through(monkeypatch, tmp_path):
    import evaluation.run

    seen = {}

    def fake_run_eval(bundle, out, **kwargs):
        seen.update(kwargs, bundle=bundle)
        return {"markdown_path": str(tmp_path / "results.md")}

    monkeypatch.setattr(evaluation.run, "run_eval", fake_run_eval)
    assert main(["eval", "--model", "m", "--out", str(tmp_path), "--top-k", "64", "--top-p", "0.9",
                 "--guidance", "1", "2", "--temperatures", "0.5"]) == 0
    assert (seen["bundle"], seen["top_k"], seen["top_p"], seen["guidance_values"], seen["temperatures"]) == \
        ("m", 64, 0.9, [1.0, 2.0], [0.5])
    assert main(["eval", "--out", str(tmp_path)]) == 0
    assert (seen["top_k"], seen["top_p"], seen["guidance_values"]) == (None, None, None)   # the model's own
    assert (seen["suite"], seen["kinds"]) == ("default", ["scene", "sign"])
    assert main(["eval", "--out", str(tmp_path), "--kinds", "sign", "--suite", "s.json"]) == 0
    assert (seen["suite"], seen["kinds"]) == ("s.json", ["sign"])
    with pytest.raises(SystemExit) as e:
        main(["eval", "--top-k", "-1"])
    assert e.value.code == 2


def test_eval_with_a_bad_suite_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "suite.json"
    bad.write_text("{not json")
    assert main(["eval", "--suite", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read prompt suite" in err[0]


def test_a_value_error_from_inside_a_library_is_a_bug_not_bad_input(monkeypatch, tmp_path):
    import evaluation.run
    from PIL import Image, ImageDraw

    def broken(*args, **kwargs):            # a library call failing on values this project computed
        ImageDraw.Draw(Image.new("RGB", (4, 4))).rectangle([3, 0, 1, 2])

    monkeypatch.setattr(evaluation.run, "run_eval", broken)
    with pytest.raises(ValueError, match="x1 must be greater"):
        main(["eval", "--out", str(tmp_path)])

    def bad_input(*args, **kwargs):         # this project's own check of a value the user gave
        from dalle.options import SamplingOptions
        SamplingOptions(temperature=-1.0)

    monkeypatch.setattr(evaluation.run, "run_eval", bad_input)
    assert main(["eval", "--out", str(tmp_path)]) == 2


def test_generate_takes_the_models_recommended_sampling_unless_told():
    from cli.main import build_parser, sampling_options
    from dalle.options import SamplingOptions

    parse = build_parser().parse_args
    rec = SamplingOptions(temperature=0.8, top_k=32, guidance=2.0)
    got = sampling_options(parse(["generate", "a red circle"]), rec)
    assert (got.temperature, got.top_k, got.top_p, got.guidance) == (0.8, 32, None, 2.0)
    got = sampling_options(parse(["generate", "x", "--top-k", "0", "--temperature", "1.1", "--top-p", "1"]), rec)
    assert (got.temperature, got.top_k, got.top_p, got.guidance) == (1.1, None, None, 2.0)
    got = sampling_options(parse(["generate", "x"]))                        # no model yet: the plain defaults
    assert (got.temperature, got.top_k, got.guidance) == (1.0, None, 1.0)

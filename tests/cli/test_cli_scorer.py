"""The scorer on the command line: --scorer clip / a scorer directory, --show-scores, the score in each PNG
and on the grid, `dalle scorer attach` / `eval`, and one line with exit 2 for bad input."""
import shutil

import pytest
import torch
from PIL import Image

from cli.main import main
from dalle.scorer import ImageTextScorer
from dalle.tokenizer import TextTokenizer
from tests.evaluation.test_run import tiny_bundle  # noqa: F401  (fixture)
from train.config import load_preset


@pytest.fixture
def scorers(tiny_bundle, tmp_path):  # noqa: F811
    preset = load_preset("tiny")
    tok = TextTokenizer(tiny_bundle / "tokenizer.json", preset.dalle.text_len, preset.dalle.text_vocab_size)
    torch.manual_seed(0)
    ImageTextScorer(preset.scorer, tokenizer_sha256=tok.sha256).save(tmp_path / "own")
    ImageTextScorer(preset.scorer, tokenizer_sha256="0" * 64).save(tmp_path / "foreign")
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    return bundle, tmp_path / "own", tmp_path / "foreign"


def _one_line_error(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err


def test_generate_reranks_by_the_scorer_and_shows_the_scores(scorers, tmp_path, capsys):
    bundle, own, foreign = scorers
    base = ["generate", "a red circle", "--model", str(bundle), "-n", "2", "--candidates", "3", "-q",
            "--device", "cpu"]
    _one_line_error(capsys, base + ["--scorer", "clip", "--out", str(tmp_path / "o")], "needs a model")
    assert main(base + ["--show-scores", "--out", str(tmp_path / "a")]) == 0      # auto: no scorer -> logprob
    assert capsys.readouterr().out.splitlines()[0].split("\t")[2].startswith("logprob ")
    assert main(base + ["--scorer", "pmi", "--show-scores", "--out", str(tmp_path / "m")]) == 0   # any model has it
    by_pmi = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()[:-1]]
    assert len(by_pmi) == 2 and all(s[2].startswith("pmi ") for s in by_pmi)
    assert Image.open(by_pmi[0][0]).text["scorer"] == "pmi"
    _one_line_error(capsys, ["scorer", "attach", str(foreign), "--model", str(bundle)], "does not belong")
    assert main(["scorer", "attach", str(own), "--model", str(bundle)]) == 0
    capsys.readouterr()
    assert main(base + ["--scorer", "clip", "--show-scores", "--out", str(tmp_path / "o")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    shown = [line.split("\t") for line in lines[:-1]]
    assert len(shown) == 2 and all(s[2].startswith("clip ") for s in shown)
    scores = [float(s[2].split()[1]) for s in shown]
    assert scores == sorted(scores, reverse=True)
    assert main(base + ["--show-scores", "--out", str(tmp_path / "b")]) == 0      # auto: the model's scorer
    assert capsys.readouterr().out.splitlines()[0].split("\t")[2].startswith("clip ")
    png = Image.open(shown[0][0])
    assert png.text["scorer"] == "clip" and float(png.text["score"]) == pytest.approx(scores[0], abs=1e-4)
    grid = Image.open(lines[-1])
    assert [round(v, 4) for v in __import__("json").loads(grid.text["scores"])] == pytest.approx(scores, abs=1e-4)
    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "in.png")
    assert main(["edit", str(tmp_path / "in.png"), "a red circle", "--model", str(bundle), "-n", "1",
                 "--candidates", "2", "--scorer", "clip", "-q", "--device", "cpu", "--out", str(tmp_path / "e")]) == 0
    edited = capsys.readouterr().out.strip().splitlines()[0]
    assert Image.open(edited).text["scorer"] == "clip"
    # a scorer directory works the same (identity-checked); a foreign one is refused in one line
    assert main(base + ["--scorer", str(own), "--out", str(tmp_path / "p")]) == 0
    _one_line_error(capsys, base + ["--scorer", str(foreign), "--out", str(tmp_path / "q")], "tokenizer sha256")


def test_scorer_commands_reject_bad_input_in_one_line(scorers, tmp_path, capsys):
    bundle, own, _ = scorers
    _one_line_error(capsys, ["scorer", "eval", str(tmp_path / "none"), "--scorer", str(tmp_path / "nope")],
                    "is not a scorer")
    _one_line_error(capsys, ["scorer", "eval", str(tmp_path), "--scorer", str(own)], "tokenizer")
    _one_line_error(capsys, ["scorer", "train", str(tmp_path / "none"), "--tokenizer", str(bundle / "tokenizer.json"),
                             "--out", str(tmp_path / "run"), "--preset", "tiny"], "shard source not found")
    from synth.scenes import build_scenes
    shards = build_scenes(tmp_path / "shards", 4, resolution=16, shard_size=4)
    _, _, foreign = scorers
    _one_line_error(capsys, ["scorer", "train", str(shards[0]), "--tokenizer", str(bundle / "tokenizer.json"),
                             "--out", str(tmp_path / "run2"), "--preset", "tiny", "--init-from", str(foreign)],
                    "tokenizer sha256")
    _one_line_error(capsys, ["scorer", "train", str(shards[0]), "--tokenizer", str(bundle / "tokenizer.json"),
                             "--out", str(tmp_path / "run3"), "--preset", "tiny", "--init-from", str(tmp_path)],
                    "is not a scorer")


def test_relation_scenes_for_the_scorer_from_the_command_line(tmp_path, capsys):
    import json
    import tarfile
    assert main(["data", "scenes", str(tmp_path / "rel"), "-n", "6", "--resolution", "16",
                 "--relation-share", "1"]) == 0
    with tarfile.open(tmp_path / "rel" / "00000.tar") as tar:
        claims = [json.loads(tar.extractfile(m).read())["claims"] for m in tar.getmembers() if m.name.endswith(".json")]
    assert len(claims) == 6 and all(c["relation"] for c in claims)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["data", "scenes", str(tmp_path / "bad"), "--relation-share", "1.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "--relation-share" in err[0]


def test_scorer_eval_reads_a_bundles_scorer_with_the_bundles_tokenizer(scorers, tmp_path, capsys):
    bundle, own, _ = scorers
    from synth.scenes import build_scenes
    build_scenes(tmp_path / "shards", 6, resolution=16, shard_size=6)
    assert main(["scorer", "attach", str(own), "--model", str(bundle)]) == 0
    assert not (bundle / "scorer" / "tokenizer.json").exists()        # a bundle's scorer has no copy of its own
    capsys.readouterr()
    for where in (bundle, bundle / "scorer"):
        assert main(["scorer", "eval", str(tmp_path / "shards"), "--scorer", str(where), "--device", "cpu",
                     "--out", str(tmp_path / "r")]) == 0
        table = capsys.readouterr().out
        assert "| shards | 6 |" in table

"""Shard sources and the atomic img2dataset-format writer."""
from __future__ import annotations

import io
import json
import tarfile

import pytest
import webdataset as wds

from common.shards import ShardWriter, count_samples, expand_sources


def read_samples(paths) -> list[dict]:
    return list(wds.tarfile_samples(iter([{"url": str(p)} for p in paths])))


def test_round_trip_and_split(tmp_path):
    written = {}
    with ShardWriter(tmp_path, max_samples=3) as w:
        for i in range(7):
            key = f"{i:09d}"
            written[key] = (bytes([i]) * (10 + i), f"caption {i}")
            w.write_sample(key, image=written[key][0], image_ext="png", caption=written[key][1],
                           meta={"width": i})
    assert [p.name for p in w.paths] == ["00000.tar", "00001.tar", "00002.tar"]
    samples = read_samples(w.paths)
    assert [s["__key__"] for s in samples] == sorted(written)
    for s in samples:
        image, caption = written[s["__key__"]]
        assert s["png"] == image and s["txt"].decode() == caption
        meta = json.loads(s["json"])
        assert meta["caption"] == caption and meta["key"] == s["__key__"] and meta["status"] == "success"
    stats = [json.loads((tmp_path / f"0000{i}_stats.json").read_text()) for i in range(3)]
    assert [s["successes"] for s in stats] == [3, 3, 1] and [s["count"] for s in stats] == [3, 3, 1]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []   # no temp files
    assert w.total == 7


def test_abort_keeps_finished_shards_only(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, max_samples=2) as w:
            for i in range(3):
                w.write(f"k{i}", {"txt": "x"})
            raise RuntimeError("builder failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.tar", "00000_stats.json"]
    assert len(read_samples([tmp_path / "00000.tar"])) == 2


def test_writer_rejects_bad_keys(tmp_path):
    with ShardWriter(tmp_path) as w:
        for bad in ["a.b", "a/b", ""]:
            with pytest.raises(ValueError):
                w.write(bad, {"txt": "x"})
        w.write("k", {"txt": "x"})
        with pytest.raises(ValueError, match="duplicate"):
            w.write("k", {"txt": "y"})


def test_expand_sources_forms(tmp_path, image_shards):
    paths = [str(p) for p in image_shards(8, per_shard=2)]       # 00000..00003.tar
    d = tmp_path / "shards"
    (d / "00000.parquet").write_bytes(b"PAR1")                    # img2dataset side files are ignored
    assert expand_sources(d) == paths
    assert expand_sources(str(d / "*.tar")) == paths
    assert expand_sources(str(d / "{00000..00003}.tar")) == paths
    assert expand_sources(str(d / "{00000..00009}.tar")) == paths   # gaps in a brace range are skipped
    assert expand_sources([paths[1], paths[0], paths[1]]) == [paths[1], paths[0]]
    assert expand_sources("pipe:cat x.tar") == ["pipe:cat x.tar"]
    with pytest.raises(ValueError, match="not found"):
        expand_sources(str(d / "missing.tar"))
    with pytest.raises(ValueError, match="no .tar"):
        expand_sources(str(d / "*.zip"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .tar"):
        expand_sources(tmp_path / "empty")


def test_pipe_source_reads(tmp_path, image_shards):
    path = image_shards(3)[0]
    samples = read_samples(expand_sources(f"pipe:cat {path}"))
    assert len(samples) == 3


def test_count_samples(tmp_path, image_shards):
    paths = image_shards(5, per_shard=3)
    assert [count_samples(str(p)) for p in paths] == [3, 2]
    (tmp_path / "shards" / "00000_stats.json").unlink()           # falls back to scanning the tar
    assert count_samples(str(paths[0])) == 3
    with pytest.raises(ValueError, match="epoch_samples"):
        count_samples("pipe:cat x.tar")


def test_reads_img2dataset_layout(tmp_path):
    """A directory laid out like img2dataset's output: tars + parquet + stats; plain tarfile members."""
    out = tmp_path / "img2dataset"
    out.mkdir()
    with tarfile.open(out / "00000.tar", "w") as tar:
        for key in ("000000000", "000000001"):
            for ext, data in (("jpg", b"\xff\xd8fake"), ("txt", b"a caption"), ("json", b"{}")):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (out / "00000.parquet").write_bytes(b"PAR1")
    (out / "00000_stats.json").write_text(json.dumps({"successes": 2, "count": 2}))
    urls = expand_sources(out)
    assert urls == [str(out / "00000.tar")]
    assert [s["__key__"] for s in read_samples(urls)] == ["000000000", "000000001"]
    assert count_samples(urls[0]) == 2

"""The web server's API on a real uvicorn with the tiny bundle: results, metadata, limits, the queue."""
from __future__ import annotations

import json
import re
import threading

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("uvicorn", reason="the serve extra is not installed (pip install -e '.[serve]')")

from serve.app import STATIC, LocalServer, create_app            # noqa: E402
from serve.jobs import Job, JobQueue, QueueFull                   # noqa: E402
from serve.requests import Limits                                 # noqa: E402
from tests.serve.helpers import png, png_file, post_form, post_json, request, wait_job   # noqa: E402

LIMITS = Limits(max_n=6, max_candidates=8, max_prompts=3, max_prompt_chars=80, max_upload_bytes=200_000,
                max_pixels=300 * 300, queue_size=1)


@pytest.fixture(scope="module")
def server(served_model):
    app = create_app(served_model, LIMITS)
    with LocalServer(app) as url:
        yield url, app


def test_generate_returns_the_images_the_api_draws_with_metadata(server, served_model):
    url, _ = server
    status, body, _ = post_json(url + "/api/generate", {"prompts": "a red cube\n\n two green cats ", "n": 3,
                                                        "seed": 11, "top_k": "8", "guidance": 2})
    assert status == 202, body
    job = wait_job(url, body["url"])
    assert job["state"] == "done", job
    cfg = served_model.dalle.config
    assert job["total"] == 2 * 3 * cfg.image_len and job["done"] == job["total"]   # progress reached the end
    assert [i["prompt"] for i in job["images"]] == ["a red cube"] * 3 + ["two green cats"] * 3
    direct = served_model.generate(["a red cube", "two green cats"], n=3, seed=11, top_k=8, guidance=2.0,
                                   progress=lambda *_: None)
    for item, g in zip(job["images"], direct):
        status, data, headers = request(url + item["url"])
        assert status == 200 and headers["content-type"] == "image/png"
        im = png(data)
        assert im.size == (16, 16)
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(g.image))   # same image as the API
        assert im.text["prompt"] == g.prompt and im.text["image_seed"] == str(g.seed) == item["seed"]
        assert json.loads(im.text["settings"])["seed"] == 11
        assert float(im.text["score"]) == pytest.approx(item["score"], abs=1e-3)
    status, data, _ = request(url + job["grid_url"])
    grid = png(data)
    assert grid.size == (3 * 16 + 4 * 2, 2 * 16 + 3 * 2)   # a row per prompt
    assert json.loads(grid.text["prompts"]) == ["a red cube", "two green cats"]


@pytest.mark.parametrize("payload, message", [
    ({"prompts": "   \n "}, "empty prompt"),
    ({"prompts": "a cat", "n": 0}, "n (images per prompt) must be at least 1"),
    ({"prompts": "a cat", "n": 7}, "at most 6"),
    ({"prompts": "a cat", "n": "two"}, "whole number"),
    ({"prompts": "a cat", "n": 4, "candidates": 2}, "candidates (2) must be at least n (4)"),
    ({"prompts": "a cat", "candidates": 9}, "at most 8"),
    ({"prompts": "a cat", "top_p": 1.5}, "top-p must be in (0, 1]"),
    ({"prompts": "a cat", "temperature": 0}, "temperature must be > 0"),
    ({"prompts": "a\nb\nc\nd"}, "at most 3 per request"),
    ({"prompts": "x" * 81}, "at most 80"),
])
def test_bad_generate_requests_get_a_4xx_and_one_clear_sentence(server, payload, message):
    url, _ = server
    status, body, _ = post_json(url + "/api/generate", payload)
    assert status == 400
    assert message in body["error"] and "Traceback" not in body["error"]


def test_non_json_and_unknown_routes_answer_json_errors(server):
    url, _ = server
    status, body, _ = request(url + "/api/generate", b"{nope", {"Content-Type": "application/json"})
    assert status == 400 and "JSON" in body["error"]
    status, body, _ = request(url + "/api/jobs/does-not-exist")
    assert status == 404 and "no such request" in body["error"]


def test_edit_keeps_the_top_rows_and_refuses_bad_uploads(server, served_model):
    url, _ = server
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))
    fields = {"prompt": "a red cube", "keep_mode": "rows", "keep_rows": "2", "n": "2", "seed": "5"}
    status, body, _ = post_form(url + "/api/edit", fields, {"image": ("p.png", png_file(picture))})
    assert status == 202, body
    job = wait_job(url, body["url"])
    assert job["state"] == "done", job
    grid = served_model.info.image_grid
    assert job["total"] == 2 * (grid * grid - 2 * grid)       # only the regenerated codes are sampled
    assert job["keep_rows"] == 2 and len(job["images"]) == 2
    _, data, _ = request(url + job["input_url"])
    seen = png(data)
    assert seen.size == (16, 16)
    kept = served_model.dalle.image_tokenizer.encode(torch.from_numpy(np.array(seen)).permute(2, 0, 1)[None] / 255.0)
    kept = kept.flatten()[:2 * grid]
    for item in job["images"]:
        _, data, _ = request(url + item["url"])
        assert png(data).text["prompt"] == "a red cube" and png(data).text["image_seed"] == item["seed"]
    direct = served_model.edit(seen, "a red cube", keep_rows=2, keep_fraction=None, n=2, seed=5,
                               progress=lambda *_: None)
    assert all(torch.equal(g.image_tokens[:2 * grid], kept) for g in direct)
    assert [i["seed"] for i in job["images"]] == [str(g.seed) for g in direct]

    cases = [
        ({"image": ("notes.txt", b"this is not an image")}, fields, 400, "not an image"),
        ({"image": ("empty.png", b"")}, fields, 400, "empty"),
        ({}, fields, 400, "no image"),
        ({"image": ("big.png", png_file(Image.new("RGB", (400, 400))))}, fields, 413, "too many pixels"),
        ({"image": ("huge.bin", bytes(250_000))}, fields, 413, "MiB"),
        ({"image": ("p.png", png_file(picture))}, {**fields, "keep_rows": "4"}, 400, "at most 3"),
        ({"image": ("p.png", png_file(picture))}, {**fields, "keep_mode": "fraction", "keep_fraction": "1"},
         400, "fraction to keep must be in [0, 1)"),
        ({"image": ("p.png", png_file(picture))}, {**fields, "prompt": " "}, 400, "empty prompt"),
    ]
    for files, form, code, message in cases:
        status, body, _ = post_form(url + "/api/edit", form, files)
        assert status == code and message in body["error"], (files.keys(), form, status, body)


def test_a_full_queue_answers_busy_instead_of_piling_up(server):
    url, app = server
    gate = threading.Event()
    started = threading.Event()

    def blocker(job):
        started.set()
        gate.wait(30)

    app.state.jobs.submit(Job("generate", blocker))   # occupies the worker
    assert started.wait(10)
    try:
        status, first, _ = post_json(url + "/api/generate", {"prompts": "a cat", "n": 1})
        assert status == 202                            # waits in the one queue slot
        status, body, headers = post_json(url + "/api/generate", {"prompts": "a cat", "n": 1})
        assert status == 503 and "busy" in body["error"] and "try again" in body["error"]
        assert headers.get("retry-after") == "5"
        _, queued, _ = request(url + first["url"])
        assert queued["state"] == "queued" and queued["ahead"] == 1
    finally:
        gate.set()
    assert wait_job(url, first["url"])["state"] == "done"


def test_job_queue_runs_in_order_and_reports_errors_as_one_line():
    q = JobQueue(size=3, keep=2)
    try:
        order = []
        a = q.submit(Job("generate", lambda j: order.append("a") or 1))
        b = q.submit(Job("generate", lambda j: (_ for _ in ()).throw(ValueError("n must be >= 1\nmore"))))
        c = q.submit(Job("generate", lambda j: order.append("c") or 3))
        for _ in range(200):
            if c.state == "done":
                break
            threading.Event().wait(0.01)
        assert order == ["a", "c"] and a.result == 1 and c.result == 3
        assert b.state == "error" and b.error == "n must be >= 1"
        assert q.get(a.id) is None            # only the last `keep` finished jobs are kept
    finally:
        q.close()


def test_queue_full_raises():
    gate = threading.Event()
    q = JobQueue(size=1, keep=4)
    try:
        q.submit(Job("generate", lambda j: gate.wait(10)))
        for _ in range(200):                  # wait until the worker took it
            if q._queue.empty():
                break
            threading.Event().wait(0.01)
        q.submit(Job("generate", lambda j: None))
        with pytest.raises(QueueFull, match="busy"):
            q.submit(Job("generate", lambda j: None))
    finally:
        gate.set()
        q.close()


def test_the_page_fetches_nothing_from_elsewhere():
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), f"{path.name} links outside"
        assert "@import" not in text and "url(http" not in text


def test_requests_take_the_models_recommended_sampling_when_they_leave_it_out():
    from serve.requests import sampling_options

    rec = {"temperature": 0.8, "top_k": 32, "top_p": None, "guidance": 2.0}
    got = sampling_options({}, Limits(), rec)
    assert (got["temperature"], got["top_k"], got["top_p"], got["guidance"]) == (0.8, 32, None, 2.0)
    got = sampling_options({"top_k": 4, "temperature": 1.2}, Limits(), rec)
    assert (got["temperature"], got["top_k"], got["guidance"]) == (1.2, 4, 2.0)
    got = sampling_options({}, Limits())
    assert (got["temperature"], got["top_k"], got["guidance"]) == (1.0, None, 1.0)

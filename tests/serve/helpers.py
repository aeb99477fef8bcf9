"""HTTP helpers for the server tests: JSON and multipart requests with urllib, PNG text chunks."""
from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request
import uuid

from PIL import Image


def request(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, dict | bytes, dict]:
    """(status, JSON body or bytes, headers) of a GET (data None) or POST."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, body, hdrs = r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        status, body, hdrs = e.code, e.read(), dict(e.headers)
    if hdrs.get("content-type", hdrs.get("Content-Type", "")).startswith("application/json"):
        body = json.loads(body)
    return status, body, hdrs


def post_json(url: str, payload) -> tuple[int, dict, dict]:
    return request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})


def post_form(url: str, fields: dict, files: dict[str, tuple[str, bytes]]) -> tuple[int, dict, dict]:
    """multipart/form-data POST; ``files`` maps field -> (file name, bytes)."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for key, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    for key, (name, data) in files.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"; filename="{name}"\r\n'
                  f'Content-Type: application/octet-stream\r\n\r\n'.encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return request(url, out.getvalue(), {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def wait_job(base: str, job_url: str, timeout: float = 60) -> dict:
    """Poll a job until it is done or failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, job, _ = request(base + job_url)
        assert status == 200, job
        if job["state"] in ("done", "error"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_url} did not finish in {timeout} s")


def png(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def png_file(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()

"""The images API in one process (FastAPI/uvicorn) over real HTTP: the openai client, and raw bad bodies."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
from difflux_ray.server import ImageService, ImageStore, Limits, LocalBackend, create_app
from difflux_ray.testing import MODEL, STEPS


@pytest.fixture(scope="module")
def server(text2img: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ImageService]]:
    """A real uvicorn server on a free port, over the session's pipeline; yields its base URL and service."""
    import uvicorn

    service = ImageService(MODEL, Limits(max_n=3, max_size=64, max_steps=10), pipe=text2img)
    store = ImageStore(tmp_path_factory.mktemp("images"), keep=2)
    config = uvicorn.Config(
        create_app(LocalBackend(service), MODEL, store), host="127.0.0.1", port=0, log_level="error"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = srv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", service
    finally:
        srv.should_exit = True
        thread.join(timeout=30)


def _pixels(png: bytes) -> Any:
    import PIL.Image

    return np.asarray(PIL.Image.open(io.BytesIO(png)).convert("RGB"))


def _direct(pipe: Any, prompts: list[str], seeds: list[int], **kwargs: Any) -> list[Any]:
    import torch

    generators = [torch.Generator().manual_seed(s) for s in seeds]
    images = pipe(prompts, generator=generators, num_inference_steps=STEPS, output_type="pil", **kwargs).images
    return [np.asarray(im) for im in images]


def test_the_openai_client_gets_the_images_a_direct_call_makes(server: tuple[str, Any], text2img: Any) -> None:
    openai = pytest.importorskip("openai")  # in requirements-test.txt; absent only in `nox -s plugin(plugin='ray')`

    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    answer = client.images.generate(
        model=MODEL, prompt="a handwritten 7", n=2, size="24x16", response_format="b64_json",
        extra_body={"steps": STEPS, "seed": 11, "guidance_scale": 6.0},
    )  # fmt: skip
    assert answer.created > 0 and len(answer.data) == 2
    assert [d.model_extra for d in answer.data] == [{"seed": 11}, {"seed": 12}]
    want = _direct(text2img, ["a handwritten 7"] * 2, [11, 12], height=16, width=24, guidance_scale=6.0)
    for item, expected in zip(answer.data, want, strict=True):
        assert item.b64_json is not None
        got = _pixels(base64.b64decode(item.b64_json))
        assert got.shape == (16, 24, 3)
        np.testing.assert_array_equal(got, expected)
    linked = client.images.generate(
        prompt="a handwritten 7", response_format="url", extra_body={"seed": 11, "steps": STEPS}
    )
    assert linked.data[0].url is not None and linked.data[0].url.startswith(f"{url}/v1/images/files/")
    png = requests.get(linked.data[0].url, timeout=60)
    assert png.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(_pixels(png.content), _direct(text2img, ["a handwritten 7"], [11])[0])
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(prompt="a handwritten 7", n=4)
    assert info.value.status_code == 400 and "n must be between 1 and 3, not 4" in str(info.value)
    assert client.models.list().data[0].id == MODEL


def test_a_scheduler_by_sampler_name_changes_only_that_request(server: tuple[str, Any], text2img: Any) -> None:
    url, _ = server
    body = {"prompt": "a handwritten 2", "seed": 5, "steps": STEPS}
    euler = requests.post(f"{url}/v1/images/generations", json={**body, "scheduler": "Euler a"}, timeout=60).json()
    plain = requests.post(f"{url}/v1/images/generations", json=body, timeout=60).json()
    np.testing.assert_array_equal(
        _pixels(base64.b64decode(plain["data"][0]["b64_json"])), _direct(text2img, ["a handwritten 2"], [5])[0]
    )
    assert not np.array_equal(
        _pixels(base64.b64decode(euler["data"][0]["b64_json"])), _pixels(base64.b64decode(plain["data"][0]["b64_json"]))
    )
    assert type(text2img.scheduler).__name__ == "DDIMScheduler"  # put back after the request


BAD_BODIES = [
    (b"{not json", "the body is not valid JSON", None),
    (b"[1, 2]", "the body must be a JSON object", None),
    (b"{}", "prompt is required", "prompt"),
    (b'{"prompt": 7}', "prompt: Input should be a valid string", "prompt"),
    (b'{"prompt": ""}', "prompt: String should have at least 1 character", "prompt"),
    (b'{"prompt": "x", "n": 0}', "n must be between 1 and 3, not 0", "n"),
    (b'{"prompt": "x", "n": 1000000}', "n must be between 1 and 3, not 1000000", "n"),
    (b'{"prompt": "x", "size": "big"}', "size must be 'WIDTHxHEIGHT' in pixels", "size"),
    (b'{"prompt": "x", "size": "20x16"}', "each side must be a multiple of 8 from 8 to 64", "size"),
    (b'{"prompt": "x", "size": "4096x4096"}', "each side must be a multiple of 8 from 8 to 64", "size"),
    (b'{"prompt": "x", "steps": 11}', "steps must be between 1 and 10, not 11", "steps"),
    (b'{"prompt": "x", "num_inference_steps": -1}', "steps must be between 1 and 10, not -1", "steps"),
    (b'{"prompt": "x", "seed": -3}', "seed: Input should be greater than or equal to 0", "seed"),
    (b'{"prompt": "x", "guidance_scale": "NaN"}', "guidance_scale: Input should be a finite number", "guidance_scale"),
    (b'{"prompt": "x", "response_format": "jpeg"}', "response_format: Input should be 'b64_json' or 'url'", None),
    (b'{"prompt": "x", "scheduler": "Eulr a"}', "scheduler 'Eulr a' is not a scheduler or sampler name", "scheduler"),
    (b'{"prompt": "x", "temperature": 1}', "unknown field 'temperature'", "temperature"),
]


@pytest.mark.parametrize(("body", "message", "param"), BAD_BODIES, ids=[b[1][:40] for b in BAD_BODIES])
def test_a_bad_body_gets_400_with_an_openai_error_and_no_traceback(
    server: tuple[str, Any], body: bytes, message: str, param: str | None
) -> None:
    url, _ = server
    answer = requests.post(
        f"{url}/v1/images/generations", data=body, headers={"content-type": "application/json"}, timeout=60
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert message in error["message"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    assert "Traceback" not in answer.text


def test_other_routes_and_a_failing_pipeline_answer_json_never_a_traceback(
    server: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, service = server
    missing = requests.get(f"{url}/v1/images/files/{'0' * 32}.png", timeout=60)
    assert missing.status_code == 404 and "no image" in missing.json()["error"]["message"]
    assert requests.get(f"{url}/v1/images/files/..%2Fsecret", timeout=60).status_code == 404
    assert requests.get(f"{url}/v1/images/generations", timeout=60).json()["error"]["message"] == "Method Not Allowed"
    assert requests.get(f"{url}/nowhere", timeout=60).status_code == 404

    def broken(kwargs: dict[str, Any], scheduler: str | None) -> list[Any]:
        raise RuntimeError("CUDA out of memory (pretend)")

    monkeypatch.setattr(service, "_run", broken)
    answer = requests.post(f"{url}/v1/images/generations", json={"prompt": "x"}, timeout=60)
    assert answer.status_code == 500
    assert answer.json()["error"]["type"] == "server_error"
    assert "Traceback" not in answer.text and "pretend" not in answer.text

"""ppe_agent end to end: frames in over HTTP and the hub, smoothed verdicts and alerts out.

The app runs with its real lifespan in the test's own event loop, the way the other agent
tests run it: Starlette's TestClient is deprecated with the httpx installed here, and the
warning is an error under our pytest settings. The frames are renders from the training
renderer, scored by the committed model under artifacts/.
"""

from __future__ import annotations

import base64
import io
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import numpy as np
import pytest
from PIL import Image

from factory_mas.agents.ppe.model import PpeModel
from factory_mas.errors import ArtifactError
from factory_mas.ml.inference import LiteRtModel
from factory_mas.settings import Settings, load_settings
from factory_mas.sim.ppe_images import render_empty, render_worker
from tests.support.app import TEST_ENV, running_app, without_off_delay
from tests.support.hub import collect, drain
from tests.support.paths import ARTIFACTS, REPO
from tests.support.ppe import (
    EQUIPPED,
    NO_HELMET,
    PPE,
    encode,
    frames,
    post_image,
    ppe_agent,
    render,
)

# --------------------------------------------------------------------------- helpers


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def ppe_settings(tmp_path: Path, ppe_toml: str = "", **env: str) -> Settings:
    """The defaults, with lines for [agents.ppe] and FACTORY_ overrides."""
    path = tmp_path / "settings.toml"
    path.write_text("[agents.ppe]\n" + ppe_toml, encoding="utf-8")
    return load_settings(
        path,
        env={
            "FACTORY_DATA_DIR": str(tmp_path / "data"),
            **TEST_ENV,
            **env,
        },
    )


# --------------------------------------------------------------------------- HTTP


async def test_an_equipped_worker_is_compliant_in_every_encoding(settings: Settings) -> None:
    shots = [render(EQUIPPED, seed) for seed in range(40, 45)]
    async with running_app(settings) as (_, client):
        answers = [
            await post_image(client, encode(shots[0]), "gate1"),
            await post_image(client, encode(shots[1], "JPEG"), "gate1", "jpeg"),
            await client.post(
                f"{PPE}/predict", json={"image": b64(encode(shots[2])), "camera_id": "gate1"}
            ),
            await client.post(
                f"{PPE}/predict",
                json={"image": "data:image/jpeg;base64," + b64(encode(shots[3], "JPEG"))},
                params={"camera_id": "gate1"},
            ),
            # A camera-sized, non-square frame is scaled to the model's input.
            await post_image(client, encode(shots[4], "JPEG", size=(640, 480)), "gate1", "jpeg"),
        ]
    for response in answers:
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["agent_id"] == "ppe_agent"
        assert body["camera_id"] == "gate1"
        assert body["machine_id"] is None
        assert body["level"] == "NORMAL"
        result = body["result"]
        assert result["compliant"] is True
        assert result["missing_items"] == [] and result["raw_missing"] == []
        assert set(result["probabilities"]) == {"helmet", "boots", "pants", "shirt"}
        assert min(result["probabilities"].values()) >= 0.5


async def test_a_worker_without_a_helmet_is_one_episode_and_one_alert(settings: Settings) -> None:
    # Frames posted in a burst carry no time of their own: no off-delay to wait out.
    settings = without_off_delay(settings, "ppe")
    good = frames(EQUIPPED, 12, first_seed=40)
    bare = frames(NO_HELMET, 6, first_seed=150)
    async with running_app(settings) as (components, client):
        alerts = components.hub.subscribe("alerts/ppe_agent", name="test")
        results, published = [], []
        for episode in (good[:3] + bare + good[3:8], bare[:3] + good[8:]):
            for data in episode:
                response = await post_image(client, data, "gate2")
                assert response.status_code == 200, response.text
                results.append(response.json())
            published.append(await drain(alerts))

    raw = [r["result"]["raw_missing"] for r in results]
    assert raw == [[]] * 3 + [["helmet"]] * 6 + [[]] * 5 + [["helmet"]] * 3 + [[]] * 4
    # Flagged once three frames of five agree; compliant again once four of five are good.
    first_episode = [True] * 5 + [False] * 4 + [False] * 3 + [True] * 2
    second_episode = [True] * 2 + [False] + [False] * 3 + [True]
    compliant = [r["result"]["compliant"] for r in results]
    assert compliant == first_episode + second_episode
    assert {r["level"] for r, ok in zip(results, compliant, strict=True) if not ok} == {"CRITICAL"}
    assert {r["level"] for r, ok in zip(results, compliant, strict=True) if ok} == {"NORMAL"}
    assert {tuple(r["result"]["missing_items"]) for r in results} == {(), ("helmet",)}

    # One alert per episode, however many frames it lasted, and a return to normal after.
    episode = [("PPE_VIOLATION", "CRITICAL"), ("RETURN_TO_NORMAL", "NORMAL")]
    assert [[(a.type, a.level) for a in alerts] for alerts in published] == [episode, episode]
    assert {a.camera_id for alerts in published for a in alerts} == {"gate2"}
    for alert in (published[0][0], published[1][0]):
        assert "gate2" in alert.details and "helmet" in alert.details
        assert alert.source == "ppe_agent" and alert.machine_id is None


async def test_an_empty_scene_is_no_violation_and_a_small_worker_is_still_seen(
    settings: Settings,
) -> None:
    settings = without_off_delay(settings, "ppe")
    rng = np.random.default_rng(70)
    empty = [encode(render_empty(rng)) for _ in range(6)]
    # A worker without a helmet at half the full height, as a camera sees one farther off.
    small = [
        encode(render_worker(np.random.default_rng(300 + i), NO_HELMET, scale=0.5))
        for i in range(6)
    ]
    async with running_app(settings) as (components, client):
        alerts = components.hub.subscribe("alerts/ppe_agent", name="test")
        nobody = [(await post_image(client, data, "gate3")).json() for data in empty]
        nobody_alerts = await drain(alerts)
        worker = [(await post_image(client, data, "gate4")).json() for data in small]
        worker_alerts = await drain(alerts)

    for r in nobody:
        assert r["level"] == "NORMAL" and r["result"]["compliant"], r
        assert not r["result"]["person_present"] and r["result"]["person_score"] < 0.5
        assert r["result"]["raw_missing"] == [] and r["result"]["missing_items"] == []
    assert nobody_alerts == []
    assert all(r["result"]["person_present"] for r in worker)
    assert "helmet" in worker[-1]["result"]["missing_items"]
    assert [a.type for a in worker_alerts] == ["PPE_VIOLATION"]


def bad_requests() -> list[tuple]:
    """(what, body, content type, status, error code, words the detail must hold, whether
    the frame is counted and published on sensors/factory/rejected; a request refused as a
    whole, before any frame is read from it, is not)."""
    png = encode(render(EQUIPPED, 400))
    gif = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 0, 0)).save(gif, "GIF")

    def frame(**fields: object) -> bytes:
        return msgspec.json.encode(fields)

    return [
        ("garbage", b"\x00\x01 not a picture", "image/jpeg", 422, "undecodable_image",
         ["JPEG, PNG or WebP"], True),
        ("truncated", png[: len(png) // 2], "image/png", 422, "undecodable_image",
         ["cannot be decoded"], True),
        ("gif", gif.getvalue(), "application/octet-stream", 422, "undecodable_image",
         ["JPEG, PNG or WebP", "GIF"], True),
        ("empty", b"", "image/png", 422, "missing_image", ["empty"], False),
        ("text", b"a helmet", "text/plain", 415, "unsupported_media_type", ["text/plain"], False),
        ("form-data", b"--x--", "multipart/form-data; boundary=x", 415, "unsupported_media_type",
         ["multipart/form-data"], False),
        ("bad-base64", frame(image="not base64 at all!"), "application/json", 422,
         "invalid_base64", ["image", "base64"], True),
        ("base64-garbage", frame(image=b64(b"GIF? no")), "application/json", 422,
         "undecodable_image", ["image", "JPEG, PNG or WebP"], True),
        ("no-image", frame(camera_id="gate3"), "application/json", 422, "missing_image",
         ["image"], True),
        ("image-not-text", frame(image=42), "application/json", 422, "invalid_image",
         ["image", "base64 string", "int"], True),
        ("bad-camera", frame(image=b64(png), camera_id="a/b"), "application/json", 422,
         "invalid_camera_id", ["camera_id", "a/b"], True),
        ("bad-timestamp", frame(image=b64(png), timestamp="yesterday"), "application/json", 422,
         "invalid_timestamp", ["timestamp", "yesterday"], True),
        ("broken-json", b'{"image": ', "application/json", 400, "invalid_json", ["JSON"], False),
        ("empty-list", b"[]", "application/json", 400, "empty_batch", ["no frames"], False),
    ]  # fmt: skip


async def test_bad_frames_get_a_clean_4xx_and_the_agent_keeps_serving(settings: Settings) -> None:
    cases = bad_requests()
    async with running_app(settings) as (components, client):
        rejected = components.hub.subscribe("sensors/factory/rejected", name="test")
        for what, body, content_type, status, code, words, _ in cases:
            response = await client.post(
                f"{PPE}/predict", content=body, headers={"content-type": content_type}
            )
            assert response.status_code == status, (what, response.text)
            answer = response.json()
            assert answer["error"] == code, (what, answer)
            missing = [w for w in words if w not in answer["detail"]]
            assert not missing, f"{what}: {answer['detail']!r} does not name {missing}"

        png = encode(render(EQUIPPED, 400))
        query = await post_image(client, png, "a/b")
        assert query.status_code == 400 and "camera_id" in query.json()["detail"]

        # Still serving, and the bad frames were counted and published with their reason.
        ok = await post_image(client, png, "gate3")
        assert ok.status_code == 200 and ok.json()["result"]["compliant"] is True
        assert (await client.get(f"{PPE}/health")).json()["status"] == "running"
        frames_rejected = sum(case[-1] for case in cases)
        published = await drain(rejected)
        assert len(published) == frames_rejected
        assert all(r.source == "http:ppe" and r.reason for r in published)
        assert ppe_agent(components).counters["rejected"] == frames_rejected


async def test_frames_over_the_limits_get_413(tmp_path: Path) -> None:
    settings = ppe_settings(
        tmp_path,
        FACTORY_AGENTS_PPE_MAX_IMAGE_BYTES="4096",
        FACTORY_AGENTS_PPE_MAX_IMAGE_PIXELS="10000",
    )
    noisy = encode(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    flat = encode(np.full((120, 120, 3), 90, np.uint8))
    small = encode(render(EQUIPPED, 401), "JPEG")
    assert len(noisy) > 4096 and len(flat) < 4096 and len(small) < 4096
    async with running_app(settings) as (_, client):
        raw = await post_image(client, noisy, "gate4")
        assert raw.status_code == 413
        assert raw.json()["error"] == "payload_too_large" and "4096" in raw.json()["detail"]

        in_json = await client.post(f"{PPE}/predict", json={"image": b64(noisy)})
        assert in_json.status_code == 413
        assert in_json.json()["error"] == "image_too_large"
        assert f"{len(noisy)} bytes" in in_json.json()["detail"]

        pixels = await post_image(client, flat, "gate4")
        assert pixels.status_code == 413
        assert pixels.json()["error"] == "image_too_large"
        assert "120x120" in pixels.json()["detail"] and "10000" in pixels.json()["detail"]

        assert (await post_image(client, small, "gate4", "jpeg")).status_code == 200


def with_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """A JPEG whose frame header (SOFn) claims another size than its data holds."""
    at = 2
    while True:
        marker = data[at + 1]
        # SOF0..SOF15, less DHT (C4), JPG (C8) and DAC (CC), which share the range.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9 :]
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")


async def test_an_array_over_max_frames_per_request_gets_413_before_decoding(
    tmp_path: Path,
) -> None:
    settings = ppe_settings(tmp_path, FACTORY_AGENTS_PPE_MAX_FRAMES_PER_REQUEST="3")
    good = b64(encode(render(EQUIPPED, 402)))
    async with running_app(settings) as (components, client):
        # Undecodable frames: had any been decoded, it would be counted as rejected.
        over = await client.post(f"{PPE}/predict", json=[{"image": "%%%"}] * 4)
        assert over.status_code == 413, over.text
        assert over.json()["error"] == "too_many_frames"
        detail = over.json()["detail"]
        assert "4 frames" in detail and "limit is 3" in detail
        assert "max_frames_per_request" in detail
        assert ppe_agent(components).counters["rejected"] == 0

        at_limit = await client.post(f"{PPE}/predict", json=[{"image": good}] * 3)
        assert at_limit.status_code == 200, at_limit.text
        assert len(at_limit.json()["predictions"]) == 3


async def test_a_jpeg_header_claiming_too_many_pixels_gets_413(settings: Settings) -> None:
    jpeg = encode(render(EQUIPPED, 403), "JPEG")
    # 400 million pixels trip Pillow's own guard (an error), 100 million its warning (an
    # error under our pytest settings), 25 million only ours (20 million by default).
    claims = {size: with_jpeg_size(jpeg, size, size) for size in (20_000, 10_000, 5_000)}
    async with running_app(settings) as (_, client):
        for size, data in claims.items():
            raw = await post_image(client, data, "gate4", "jpeg")
            assert raw.status_code == 413, (size, raw.text)
            assert raw.json()["error"] == "image_too_large"
            assert "20000000 pixels" in raw.json()["detail"]
            assert "max_image_pixels" in raw.json()["detail"]
        assert "5000x5000" in raw.json()["detail"]

        in_list = await client.post(
            f"{PPE}/predict", json=[{"image": b64(jpeg)}, {"image": b64(claims[20_000])}]
        )
        assert in_list.status_code == 200, in_list.text
        assert len(in_list.json()["predictions"]) == 1
        [refused] = in_list.json()["rejected"]
        assert refused["index"] == 1 and "20000000 pixels" in refused["reason"]


async def test_a_jpeg_whose_data_disagrees_with_its_header_gets_422(settings: Settings) -> None:
    jpeg = encode(render(EQUIPPED, 404), "JPEG")
    truncated = jpeg[: len(jpeg) // 2]
    # Tag 0x0119 (MaxSampleValue) is a number; given the text "cam" Pillow's EXIF writer,
    # run when the frame is turned upright, raised struct.error: a 500.
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "cam"
    buffer = io.BytesIO()
    Image.fromarray(render(EQUIPPED, 405)).save(buffer, "JPEG", exif=exif.tobytes())
    bad_exif = buffer.getvalue().replace(b"\x01\x0f\x00\x02", b"\x01\x19\x00\x02", 1)
    assert bad_exif != buffer.getvalue()
    async with running_app(settings) as (_, client):
        for what, data in (("truncated", truncated), ("bad-exif", bad_exif)):
            alone = await post_image(client, data, "gate4", "jpeg")
            assert alone.status_code == 422, (what, alone.text)
            assert alone.json()["error"] == "undecodable_image"
            assert "cannot be decoded" in alone.json()["detail"]

        both = await client.post(
            f"{PPE}/predict", json=[{"image": b64(truncated)}, {"image": b64(bad_exif)}]
        )
        assert both.status_code == 422, both.text
        assert both.json()["detail"].startswith("frame 0: image: the image cannot be decoded")
        assert "truncated" in both.json()["detail"]
        assert [e["index"] for e in both.json()["errors"]] == [0, 1]

        assert (await post_image(client, jpeg, "gate4", "jpeg")).status_code == 200


async def test_a_large_array_is_decoded_and_scored_max_batch_frames_at_a_time(
    tmp_path: Path,
) -> None:
    settings = ppe_settings(tmp_path, FACTORY_INFERENCE_MAX_BATCH="4")
    shots = [{"image": b64(f), "camera_id": "gate6"} for f in frames(EQUIPPED, 10, 406)]
    shots[6] = {"image": "%%%"}
    async with running_app(settings) as (components, client):
        # One message per model call: the predictions of one batch.
        published = components.hub.subscribe("predictions/ppe_agent", name="test")
        response = await client.post(f"{PPE}/predict", json=shots)
        assert response.status_code == 200, response.text
        batches = []
        while len(published):
            batches.append(len((await published.get()).payload))
    assert batches == [4, 3, 2]
    answer = response.json()
    assert len(answer["predictions"]) == 9
    assert [r["index"] for r in answer["rejected"]] == [6]


async def test_a_list_keeps_the_good_frames_and_lists_the_bad(settings: Settings) -> None:
    good = [b64(f) for f in frames(EQUIPPED, 2, first_seed=500)]
    body = [
        {"image": good[0], "camera_id": "gate5", "timestamp": "2025-05-01T08:00:00Z"},
        {"image": "%%%"},
        {"image": good[1], "camera_id": "gate5", "timestamp": "2025-05-01T08:00:01"},
    ]
    async with running_app(settings) as (_, client):
        response = await client.post(f"{PPE}/predict", json=body)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert [p["record_ts"] for p in answer["predictions"]] == [
            "2025-05-01T08:00:00Z",
            "2025-05-01T08:00:01Z",
        ]
        assert [(r["index"], r["field"]) for r in answer["rejected"]] == [(1, "image")]
        assert "base64" in answer["rejected"][0]["reason"]

        none_good = await client.post(f"{PPE}/predict", json=[{"image": "%%%"}, {}])
        assert none_good.status_code == 422
        assert none_good.json()["detail"].startswith("frame 0: image:")
        assert [e["index"] for e in none_good.json()["errors"]] == [0, 1]


async def test_a_batch_scores_like_frames_one_by_one(settings: Settings) -> None:
    combos = [EQUIPPED, NO_HELMET, (True, False, True, False), (True, True, False, True)]
    shots = [encode(render(worn, 600 + i)) for i, worn in enumerate(combos * 2)]
    async with running_app(settings) as (_, client):
        batch = await client.post(
            f"{PPE}/predict", json=[{"image": b64(s), "camera_id": "batch"} for s in shots]
        )
        singles = [(await post_image(client, s, "single")).json() for s in shots]
    batched = batch.json()["predictions"]
    assert len(batched) == len(singles) == 8
    for b, s in zip(batched, singles, strict=True):
        assert b["level"] == s["level"]
        for key in ("missing_items", "raw_missing", "compliant"):
            assert b["result"][key] == s["result"][key]
        assert b["result"]["probabilities"] == pytest.approx(s["result"]["probabilities"], abs=2e-4)

    model = PpeModel.load(ARTIFACTS)
    pixels = np.stack([render(worn, 600 + i) for i, worn in enumerate(combos * 2)])[:7]
    together = model.predict(pixels)  # 7 rows, padded to 8 inside
    alone = np.concatenate([model.predict(pixels[i : i + 1]) for i in range(7)])
    np.testing.assert_allclose(together, alone, atol=1e-5)


# --------------------------------------------------------------------------- the hub


async def test_frames_on_the_hub_are_scored_per_camera(tmp_path: Path) -> None:
    settings = ppe_settings(tmp_path, "camera_machines = { cam7 = 12 }\n")
    png, jpeg, other = (
        encode(render(EQUIPPED, 700)),
        encode(render(EQUIPPED, 701), "JPEG"),
        encode(render(EQUIPPED, 702)),
    )
    async with running_app(settings) as (components, client):
        hub = components.hub
        predictions = hub.subscribe("predictions/ppe_agent", name="test")
        rejected = hub.subscribe("sensors/factory/rejected", name="test-rejected")
        await hub.publish("sensors/factory/ppe/cam7", png, origin="mqtt")
        await hub.publish(
            "sensors/factory/ppe/cam7",
            b'{"image": "' + b64(jpeg).encode() + b'", "timestamp": "2025-05-01T08:00:00Z"}',
        )
        await hub.publish("sensors/factory/ppe/cam7", {"image": b64(other), "camera_id": "dock"})
        await hub.publish("sensors/factory/ppe/cam7", b"\xff\xd8 a broken jpeg", origin="mqtt")
        await hub.publish("sensors/factory/ppe/cam8", [{"image": b64(png)}, {"image": "%"}])
        scored = await collect(predictions, 4)
        refused = await collect(rejected, 2)
        agent = ppe_agent(components)
        assert agent.status == "running"
        by_camera = (await client.get(f"{PPE}/history", params={"camera_id": "cam7"})).json()
        by_machine = (await client.get(f"{PPE}/history", params={"machine_id": 12})).json()

    assert [(p.camera_id, p.machine_id) for p in scored] == [
        ("cam7", 12),
        ("cam7", 12),
        ("dock", None),
        ("cam8", None),
    ]
    assert [p["camera_id"] for p in by_camera["predictions"]] == ["cam7", "cam7"]
    assert by_machine["count"] == 2
    assert scored[1].record_ts.isoformat() == "2025-05-01T08:00:00+00:00"
    assert all(p.result["compliant"] for p in scored)
    assert [(r.source, r.field, r.index, r.input) for r in refused] == [
        ("mqtt", "image", 0, {"topic": "sensors/factory/ppe/cam7"}),
        ("hub", "image", 1, {"topic": "sensors/factory/ppe/cam8"}),
    ]
    assert refused[0].reason.startswith("not a JPEG, PNG or WebP image (16 bytes")
    assert "base64" in refused[1].reason
    assert agent.counters["rejected"] == 2


async def test_the_smoothing_window_survives_a_restart(settings: Settings) -> None:
    bare = frames(NO_HELMET, 3, first_seed=800)
    async with running_app(settings) as (_, client):
        first = [(await post_image(client, f, "gate9")).json() for f in bare[:2]]
    assert [r["result"]["compliant"] for r in first] == [True, True]
    async with running_app(settings) as (components, client):
        third = (await post_image(client, bare[2], "gate9")).json()
        assert len(ppe_agent(components).cameras["gate9"].frames) == 3
    assert third["result"]["missing_items"] == ["helmet"]
    assert third["level"] == "CRITICAL"


# --------------------------------------------------------------------------- user models


@pytest.fixture(scope="module")
def user_models(tmp_path_factory) -> Path:
    """Tiny .tflite models in a folder, built with Keras as an operator would.

    `colour.tflite` takes 48x40 images and has five outputs, each a different function of
    the mean colour; `flat.tflite` takes a vector, not an image.
    """
    import keras

    from factory_mas.training.common import to_tflite

    folder = tmp_path_factory.mktemp("user-models")
    inputs = keras.Input((48, 40, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    dense = keras.layers.Dense(5, activation="sigmoid")
    model = keras.Model(inputs, dense(x))
    kernel = np.array([[1, -1, 0.5, 2, -2], [0, 1, -1, 0.5, 1], [-1, 0.5, 1, -0.5, 0]], np.float32)
    dense.set_weights([kernel, np.array([-1, 0, 1, -0.5, 0.5], np.float32)])
    (folder / "colour.tflite").write_bytes(to_tflite(model))

    vector = keras.Input((10,))
    flat = keras.Model(vector, keras.layers.Dense(4, activation="sigmoid")(vector))
    (folder / "flat.tflite").write_bytes(to_tflite(flat))
    return folder


def write_labels(folder: Path, text: str, name: str = "labels.txt") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.integration
async def test_a_user_model_with_its_own_label_order(user_models: Path, tmp_path: Path) -> None:
    labels = write_labels(tmp_path, "SHIRT\nhelmet\n\nvest\npants\nboots\n")
    settings = ppe_settings(
        tmp_path,
        FACTORY_AGENTS_PPE_MODEL_PATH=str(user_models / "colour.tflite"),
        FACTORY_AGENTS_PPE_LABELS_PATH=str(labels),
    )
    # Already at the model's input size (40 wide, 48 high), so the pixels go in unchanged.
    pixels = render(EQUIPPED, 900)[8:56, 12:52]
    outputs = LiteRtModel(user_models / "colour.tflite", "").predict(pixels[None])[0]
    expected = {"shirt": outputs[0], "helmet": outputs[1], "pants": outputs[3], "boots": outputs[4]}
    assert len({round(float(v), 3) for v in expected.values()}) == 4

    async with running_app(settings) as (_, client):
        response = await post_image(client, encode(pixels), "gate10")
        larger = await post_image(client, encode(render(EQUIPPED, 901), "JPEG"), "gate10", "jpeg")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"].startswith("ppe-user-")
    assert body["result"]["probabilities"] == pytest.approx(expected, abs=1e-4)
    # No person output: every frame is taken to show a worker, as before.
    assert body["result"]["person_present"] and body["result"]["person_score"] is None
    assert larger.status_code == 200, larger.text


@pytest.mark.integration
@pytest.mark.parametrize(
    ("model", "labels", "words"),
    [
        ("colour.tflite", "helmet\npants\nshirt\nvest\ngloves\n", ["lacks", "boots"]),
        ("colour.tflite", "helmet\nboots\npants\nshirt\n", ["outputs", "5", "4 labels"]),
        ("colour.tflite", "helmet\nboots\npants\nshirt\nhelmet\n", ["more than once", "helmet"]),
        ("flat.tflite", "helmet\nboots\npants\nshirt\n", ["RGB images", "[-1, 10]"]),
        ("model.keras", "helmet\nboots\npants\nshirt\n", ["Keras", ".tflite"]),
        ("labels.txt", "helmet\nboots\npants\nshirt\n", ["not a LiteRT model"]),
        ("missing.tflite", "helmet\nboots\npants\nshirt\n", ["does not exist"]),
    ],
    ids=["no-boots", "count", "duplicate", "not-an-image", "keras", "not-tflite", "missing"],
)
def test_a_mismatched_user_model_is_refused(
    user_models: Path, tmp_path: Path, model: str, labels: str, words: list[str]
) -> None:
    label_file = write_labels(tmp_path, labels)
    model_path = label_file if model == "labels.txt" else user_models / model
    if model == "model.keras":
        model_path = tmp_path / model
        model_path.write_bytes(b"PK\x03\x04")
    with pytest.raises(ArtifactError) as info:
        PpeModel.load_file(model_path, label_file)
    missing = [w for w in words if w not in str(info.value)]
    assert not missing, f"{info.value} does not name {missing}"


@pytest.mark.integration
async def test_the_agent_reports_a_refused_model_and_the_rest_keeps_running(
    user_models: Path, tmp_path: Path
) -> None:
    labels = write_labels(tmp_path, "helmet\npants\nshirt\nvest\ngloves\n")
    settings = ppe_settings(
        tmp_path,
        FACTORY_AGENTS_PPE_MODEL_PATH=str(user_models / "colour.tflite"),
        FACTORY_AGENTS_PPE_LABELS_PATH=str(labels),
    )
    async with running_app(settings) as (_, client):
        health = await client.get(f"{PPE}/health")
        assert health.status_code == 503
        assert health.json()["status"] == "failed" and "boots" in health.json()["error"]
        refused = await post_image(client, encode(render(EQUIPPED, 1)), "gate11")
        assert refused.status_code == 503 and refused.json()["error"] == "agent_unavailable"
        assert (await client.get("/api/pm/health")).status_code == 200


# --------------------------------------------------------------------------- serving


@pytest.mark.integration
def test_serving_does_not_import_tensorflow(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import asyncio, io, sys
        import httpx
        from PIL import Image
        from factory_mas.app import build_app
        from factory_mas.settings import load_settings

        async def main():
            env = {"FACTORY_DATA_DIR": sys.argv[2], "FACTORY_REPLAY_ENABLED": "false",
                   "FACTORY_SCADA_ENABLED": "false", "FACTORY_AUTH_ENABLED": "false"}
            app = build_app(load_settings(sys.argv[1], env=env))
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                    frame = io.BytesIO()
                    Image.new("RGB", (64, 64), (90, 90, 90)).save(frame, "PNG")
                    r = await c.post("/api/ppe/predict", content=frame.getvalue(),
                                     headers={"content-type": "image/png"})
                    assert r.status_code == 200, r.text

        asyncio.run(main())
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(REPO / "settings.toml"), str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"

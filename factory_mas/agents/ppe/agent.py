"""ppe_agent: is the worker in front of each camera wearing helmet, boots, pants and shirt?

Frames arrive on the hub (sensors/factory/ppe/<camera_id>, from the MQTT bridge or any
publisher) or by POST /api/ppe/predict. Decoding runs on the inference pool like scoring;
a frame that cannot be decoded is answered (HTTP) or rejected with its reason on
sensors/factory/rejected (hub), and never stops the stream. The verdict is smoothed per
camera (logic.py), so one violation is one level change and therefore one alert.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from PIL import Image
from starlette.requests import Request
from starlette.responses import Response

from ... import topics
from ...http.api import ApiError, json_response, read_body
from ...hub import Message
from ...messages import Alert, Prediction, Rejection
from ...ml.images import to_model_input
from ...settings import AgentSettings, PpeSettings
from ..base import AgentContext, BaseAgent
from . import logic
from .frames import (
    DEFAULT_CAMERA,
    IMAGE_CONTENT_TYPES,
    Frame,
    FrameError,
    Limits,
    check_camera_id,
    frames_in_body,
    frames_of_objects,
    frames_of_payload,
    looks_like_json,
)
from .model import AGENT_ID, PpeModel
from .result import PpeResult

log = logging.getLogger(__name__)

ALERT_TYPE = "PPE_VIOLATION"
# `curl --data-binary @frame.jpg` labels the image as a form, and a client may send no type
# at all: for these the body itself tells JSON from an image.
_SNIFFED_CONTENT_TYPES = frozenset({"", "application/x-www-form-urlencoded"})


class _Camera:
    """What smoothing remembers of one camera: the items seen in each recent frame, and
    the items its last verdict had missing."""

    __slots__ = ("frames", "missing")

    def __init__(self, window_frames: int) -> None:
        self.frames: deque[frozenset[str]] = deque(maxlen=window_frames)
        self.missing: list[str] = []


class PpeAgent(BaseAgent):
    agent_id = AGENT_ID
    slug = "ppe"
    input_filter = topics.PPE_FRAMES_FILTER
    # The model is loaded once, at start and on reload.
    restart_only = BaseAgent.restart_only | {"model_path", "labels_path"}
    settings: PpeSettings

    model: PpeModel

    def __init__(self, settings: PpeSettings, ctx: AgentContext) -> None:
        super().__init__(settings, ctx)
        self.cameras: dict[str, _Camera] = {}

    def load(self) -> PpeModel:
        s = self.settings
        return PpeModel.load(self.ctx.models_dir, s.model_path, s.labels_path)

    @property
    def limits(self) -> Limits:
        s = self.settings
        return Limits(s.max_image_bytes, s.max_image_pixels, self.model.input_size)

    # -- scoring -----------------------------------------------------------------------

    def score(self, frames: Sequence[Frame]) -> list[Prediction]:
        size = self.model.input_size
        # A frame decoded just before a reload to a model with another input size.
        pixels = np.stack(
            [
                f.pixels
                if f.pixels.shape[:2] == size
                else to_model_input(Image.fromarray(f.pixels), size)
                for f in frames
            ]
        )
        probabilities, person = self.model.scores(pixels)
        t = self.settings
        now = datetime.now(UTC)
        out = []
        people = [None] * len(frames) if person is None else person.tolist()
        for frame, row, person_score in zip(frames, probabilities.tolist(), people, strict=True):
            present = person_score is None or person_score >= t.person_threshold
            # Nobody in the frame counts as a frame in which nothing is missing: a worker
            # who walks away clears the violation after clear_worn_frames such frames, and
            # one frame where the model misses the worker does not restart an episode.
            seen = (
                logic.worn_items(dict(zip(logic.ITEMS, row, strict=True)), t.threshold)
                if present
                else frozenset(logic.ITEMS)
            )
            camera = self.cameras.get(frame.camera_id)
            if camera is None:
                camera = self.cameras[frame.camera_id] = _Camera(t.window_frames)
            camera.frames.append(seen)
            missing = camera.missing = logic.smoothed_missing(camera.frames, camera.missing, t)
            out.append(
                Prediction(
                    agent_id=self.agent_id,
                    machine_id=t.camera_machines.get(frame.camera_id),
                    camera_id=frame.camera_id,
                    record_ts=frame.timestamp or now,
                    produced_at=now,
                    model_version=self.model_version,
                    level=logic.level_for(missing, t),
                    result=PpeResult(
                        probabilities={
                            item: round(p, 4) for item, p in zip(logic.ITEMS, row, strict=True)
                        },
                        missing_items=missing,
                        compliant=not missing,
                        raw_missing=logic.missing_of(seen),
                        person_present=present,
                        person_score=None if person_score is None else round(person_score, 4),
                    ).as_result(),
                )
            )
        return out

    def make_alert(self, prediction: Prediction) -> Alert:
        missing = prediction.result["missing_items"]
        return Alert(
            source=self.agent_id,
            type=ALERT_TYPE,
            level=prediction.level,
            machine_id=prediction.machine_id,
            camera_id=prediction.camera_id,
            value=float(len(missing)),
            details=logic.violation_details(
                prediction.camera_id or DEFAULT_CAMERA, prediction.machine_id, missing
            ),
        )

    def settings_changed(self, old: AgentSettings) -> None:
        # Each camera keeps its frames in a deque of window_frames: a wider window must
        # grow it, or frames beyond the old length would count as unseen (worn) forever.
        n = self.settings.window_frames
        for camera in self.cameras.values():
            if camera.frames.maxlen != n:
                camera.frames = deque(camera.frames, maxlen=n)

    def export_state(self) -> dict[str, dict[str, list[Any]]]:
        return {
            camera_id: {
                "frames": [sorted(seen) for seen in camera.frames],
                "missing": list(camera.missing),
            }
            for camera_id, camera in self.cameras.items()
        }

    def import_state(self, state: Any) -> None:
        n = self.settings.window_frames
        for camera_id, saved in state.items():
            camera = self.cameras[camera_id] = _Camera(n)
            camera.frames.extend(
                frozenset(i for i in seen if i in logic.ITEMS) for seen in saved["frames"]
            )
            camera.missing = [i for i in saved["missing"] if i in logic.ITEMS]

    # -- frames from the hub -----------------------------------------------------------

    async def items_of(self, messages: list[Message]) -> list[Any]:
        # A frame's camera is its topic's last level, and decoding belongs on the pool.
        try:
            parsed = await self.ctx.inference.run(self._frames_of_messages, messages)
        except Exception:
            self.counters["errors"] += len(messages)
            log.exception("%s: frames could not be read; the stream goes on", self.agent_id)
            return []
        rejections = [
            self._rejection(e, m.origin or "hub", i, {"topic": m.topic})
            for m, i, e in parsed
            if isinstance(e, FrameError)
        ]
        if rejections:
            await self._reject(rejections)
        return [f for _, _, f in parsed if isinstance(f, Frame)]

    def _frames_of_messages(
        self, messages: list[Message]
    ) -> list[tuple[Message, int, Frame | FrameError]]:
        """Each frame or error with its message and its position in that message."""
        limits = self.limits
        return [
            (m, i, item)
            for m in messages
            for i, item in enumerate(
                frames_of_payload(m.payload, m.topic.rsplit("/", 1)[-1], limits)
            )
        ]

    def _rejection(self, exc: FrameError, source: str, index: int, summary: Any) -> Rejection:
        return Rejection(
            source=source, reason=exc.reason, field=exc.field, index=index, input=summary
        )

    async def _reject(self, rejections: list[Rejection]) -> None:
        self.counters["rejected"] += len(rejections)
        await self.ctx.hub.publish(topics.REJECTED, rejections, origin=self.agent_id)

    # -- frames over HTTP --------------------------------------------------------------

    async def predict_route(self, request: Request) -> Response:
        """POST a JPEG, PNG or WebP body (camera from ?camera_id=), or JSON
        {"image": base64, "camera_id"?, "timestamp"?}, or a JSON array of at most
        max_frames_per_request of those."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        is_image = content_type in IMAGE_CONTENT_TYPES
        is_json = content_type == "application/json" or content_type.endswith("+json")
        if not (is_image or is_json or content_type in _SNIFFED_CONTENT_TYPES):
            raise ApiError(
                415,
                "unsupported_media_type",
                f"content type {content_type!r} is not accepted; send image/jpeg, image/png, "
                'image/webp, or application/json {"image": "<base64>"}',
            )
        limit = self.settings.max_image_bytes if is_image else self.ctx.max_body_bytes
        body = await read_body(request, limit)
        self._require_running()
        try:
            camera = check_camera_id(request.query_params.get("camera_id", DEFAULT_CAMERA))
        except FrameError as exc:
            raise ApiError(400, "bad_query", str(exc)) from None
        if not body.strip():
            raise ApiError(
                422,
                "missing_image",
                'the request body is empty; send an image, or JSON {"image": "<base64>"}',
            )
        as_json = is_json or (not is_image and looks_like_json(body))
        try:
            single, items = await self.ctx.inference.run(
                frames_in_body, body, as_json, self.settings.max_frames_per_request
            )
        except FrameError as exc:
            raise ApiError(exc.status, exc.code, str(exc)) from None
        del body  # the items hold what is left to decode

        # Decoded and scored one batch at a time: decoding all of a 10,000-frame request
        # first, then scoring it in one model call, grew the process by 3 GB and the
        # interpreter kept its tensors at that size.
        predictions: list[Prediction] = []
        rejections: list[Rejection] = []
        first_error: FrameError | None = None
        step = self.ctx.max_batch
        for start in range(0, len(items), step):
            parsed = await self.ctx.inference.run(
                frames_of_objects, items[start : start + step], camera, self.limits
            )
            errors = [(start + i, e) for i, e in enumerate(parsed) if isinstance(e, FrameError)]
            if errors:
                first_error = first_error or errors[0][1]
                bad = [
                    self._rejection(e, f"http:{self.slug}", i, {"camera_id": camera})
                    for i, e in errors
                ]
                await self._reject(bad)
                rejections.extend(bad)
            frames = [f for f in parsed if isinstance(f, Frame)]
            if frames:
                scored = await self.process(frames)
                if not scored:
                    raise ApiError(
                        500,
                        "scoring_failed",
                        f"{self.agent_id} could not score the request; see the log",
                    )
                predictions.extend(scored)
        if not predictions:
            assert first_error is not None  # every frame was refused
            detail = str(first_error) if single else f"frame {rejections[0].index}: {first_error}"
            extra = {} if single else {"errors": rejections}
            raise ApiError(
                first_error.status, first_error.code, detail, field=first_error.field, **extra
            )
        if single:
            return json_response(predictions[0])
        return json_response({"predictions": predictions, "rejected": rejections})

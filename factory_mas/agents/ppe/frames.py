"""Camera frames in: image bytes or JSON with base64, judged and decoded into model input.

Everything here is blocking (base64 and image decoding take milliseconds for a large frame),
so the agent calls it on the inference pool. Each problem becomes a FrameError carrying the
HTTP status and error code to answer with; the hub path turns the same errors into
rejections. Pixels are scaled to the model's input by ml.images.to_model_input, as
training renders are.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ...errors import RecordError
from ...http.api import ApiError, decode_json
from ...ml.images import to_model_input

# Camera formats only: Pillow opens dozens of formats, and every extra parser is attack
# surface for bytes that come from the network.
FORMATS = ("JPEG", "PNG", "WEBP")
IMAGE_CONTENT_TYPES = frozenset(
    {"image/jpeg", "image/jpg", "image/png", "image/webp", "application/octet-stream"}
)
DEFAULT_CAMERA = "default"
# A camera id becomes a topic level (sensors/factory/ppe/<camera_id>), so it may not hold
# the MQTT separators or wildcards.
_CAMERA_ID = re.compile(r"[^/+#\x00-\x1f\x7f]{1,64}")
_DATA_URL = re.compile(r"data:[\w/+.-]*;base64,")
# What Pillow raises on corrupt or truncated data, depending on the format and the stage;
# struct.error comes from a corrupt EXIF block, met when the frame is turned upright.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error)
# Pillow's own guard against decompression bombs, from the header: it warns above 89
# million pixels and raises above twice that, before our smaller limit is looked at. Under
# `-W error` the warning is raised too.
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)


class FrameError(RecordError):
    """A frame that cannot be scored, with the HTTP answer it deserves."""

    def __init__(self, reason: str, code: str, status: int = 422, field: str | None = None):
        super().__init__(reason, field)
        self.code = code
        self.status = status


@dataclass(frozen=True, slots=True)
class Frame:
    camera_id: str
    # RGB, uint8, already at the model's input height and width.
    pixels: np.ndarray
    timestamp: datetime | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int
    max_pixels: int
    # The model's input (height, width).
    size: tuple[int, int]


def check_camera_id(value: Any) -> str:
    if not isinstance(value, str) or not _CAMERA_ID.fullmatch(value):
        raise FrameError(
            f"expected 1 to 64 characters without '/', '+', '#' or control characters, "
            f"got {value!r:.80}",
            "invalid_camera_id",
            field="camera_id",
        )
    return value


def decode_image(data: bytes, limits: Limits) -> np.ndarray:
    if not data:
        raise FrameError("the image is empty", "missing_image", field="image")
    if len(data) > limits.max_bytes:
        raise FrameError(
            f"the image is {len(data)} bytes, the limit is {limits.max_bytes}",
            "image_too_large",
            413,
            field="image",
        )
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise FrameError(
            f"not a JPEG, PNG or WebP image ({len(data)} bytes starting {data[:8]!r})",
            "undecodable_image",
            field="image",
        ) from None
    except _BOMB_ERRORS as exc:
        raise _too_many_pixels(f"its header claims more ({exc})", limits) from None
    except _DECODE_ERRORS as exc:
        raise _undecodable(exc) from None
    with image:
        width, height = image.size
        if width * height > limits.max_pixels:
            raise _too_many_pixels(f"its header says {width}x{height}", limits)
        side = max(limits.size)
        try:
            # JPEG can decode at 1/2, 1/4 or 1/8 scale directly: a 4K frame bound for a
            # 64x64 input then costs a fraction of the full decode.
            image.draft("RGB", (side, side))
            return to_model_input(ImageOps.exif_transpose(image), limits.size)
        except _DECODE_ERRORS as exc:
            raise _undecodable(exc) from None


def _too_many_pixels(claim: str, limits: Limits) -> FrameError:
    return FrameError(
        f"the image is too large: {claim}, the limit is {limits.max_pixels} pixels "
        "(agents.ppe.max_image_pixels)",
        "image_too_large",
        413,
        field="image",
    )


def _undecodable(exc: BaseException) -> FrameError:
    return FrameError(f"the image cannot be decoded: {exc}", "undecodable_image", field="image")


def _image_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if not isinstance(value, str):
        raise FrameError(
            f"expected a base64 string, got {type(value).__name__}", "invalid_image", field="image"
        )
    text = _DATA_URL.sub("", "".join(value.split()), count=1)
    if not text:
        raise FrameError("the image is empty", "missing_image", field="image")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FrameError(f"not valid base64: {exc}", "invalid_base64", field="image") from None


def _timestamp(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise FrameError(
            f"expected an ISO 8601 timestamp, got {value!r:.80}",
            "invalid_timestamp",
            field="timestamp",
        ) from None
    # As for telemetry: a timestamp without a zone is UTC.
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def frame_of_object(obj: Any, camera_id: str, limits: Limits) -> Frame:
    """{"image": base64, "camera_id"?: str, "timestamp"?: ISO 8601} as one frame.

    A camera id in the object wins over `camera_id` (the topic's or the query's).
    """
    if not isinstance(obj, dict):
        raise FrameError(
            f'expected an object like {{"image": "<base64>"}}, got {type(obj).__name__}',
            "invalid_frame",
        )
    if obj.get("image") is None:
        raise FrameError(
            "missing; send a base64-encoded JPEG, PNG or WebP image",
            "missing_image",
            field="image",
        )
    camera = check_camera_id(obj["camera_id"]) if "camera_id" in obj else camera_id
    ts = _timestamp(obj.get("timestamp"))
    return Frame(camera, decode_image(_image_bytes(obj["image"]), limits), ts)


def parse_json(body: bytes) -> Any:
    try:
        return decode_json(body)
    except ApiError as exc:  # not JSON, too deep, too big: whatever the bytes
        raise FrameError(exc.detail, exc.code, 400) from None


def frames_of_objects(
    objects: Sequence[Any], camera_id: str, limits: Limits
) -> list[Frame | FrameError]:
    """One Frame or FrameError per object (a JSON frame, or the bytes of an image), in
    order, so errors keep their index."""
    out: list[Frame | FrameError] = []
    for obj in objects:
        try:
            if isinstance(obj, bytes):
                out.append(Frame(camera_id, decode_image(obj, limits)))
            else:
                out.append(frame_of_object(obj, camera_id, limits))
        except FrameError as exc:
            out.append(exc)
    return out


def looks_like_json(body: bytes) -> bool:
    return body.lstrip()[:1] in (b"{", b"[")


def frames_of_payload(payload: Any, camera_id: str, limits: Limits) -> list[Frame | FrameError]:
    """A hub message on sensors/factory/ppe/<camera_id>: image bytes, JSON text, an object
    or a list of objects. Returns Frames and FrameErrors, in order."""
    try:
        check_camera_id(camera_id)
        if isinstance(payload, str):
            payload = payload.encode()
        if isinstance(payload, bytes | bytearray | memoryview):
            payload = bytes(payload)
            if not looks_like_json(payload):
                return [Frame(camera_id, decode_image(payload, limits))]
            payload = parse_json(payload)
    except FrameError as exc:
        return [exc]
    return frames_of_objects(payload if isinstance(payload, list) else [payload], camera_id, limits)


def frames_in_body(body: bytes, as_json: bool, max_frames: int) -> tuple[bool, list[Any]]:
    """An HTTP request body split into its frames, none decoded yet (frames_of_objects
    takes them): whether it held a single frame, and each frame's JSON object, or the
    body itself when it is an image.

    Raises FrameError for a body that is unusable as a whole: invalid JSON, an empty
    array, or more than `max_frames` frames (413, before any image is decoded).
    """
    if not as_json:
        return True, [body]
    obj = parse_json(body)
    if not isinstance(obj, list):
        return True, [obj]
    if not obj:
        raise FrameError("the array holds no frames", "empty_batch", 400)
    if len(obj) > max_frames:
        raise FrameError(
            f"the array holds {len(obj)} frames, the limit is {max_frames} "
            "(agents.ppe.max_frames_per_request); send them in smaller requests",
            "too_many_frames",
            413,
        )
    return False, obj

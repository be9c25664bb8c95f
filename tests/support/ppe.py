"""PPE frames rendered, encoded and posted to the PPE agent."""

from __future__ import annotations

import io
from collections.abc import Sequence

import httpx
import numpy as np
from PIL import Image

from factory_mas.agents.ppe.agent import PpeAgent
from factory_mas.app import Components
from factory_mas.sim.ppe_images import render_worker

PPE = "/api/ppe"


EQUIPPED = (True, True, True, True)


NO_HELMET = (False, True, True, True)


def render(worn: Sequence[bool], seed: int) -> np.ndarray:
    return render_worker(np.random.default_rng(seed), worn)


def encode(pixels: np.ndarray, fmt: str = "PNG", size: tuple[int, int] | None = None) -> bytes:
    image = Image.fromarray(pixels)
    if size is not None:
        image = image.resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def ppe_agent(components: Components) -> PpeAgent:
    return next(a for a in components.agents if isinstance(a, PpeAgent))


async def post_image(client: httpx.AsyncClient, data: bytes, camera: str, fmt: str = "png"):
    return await client.post(
        f"{PPE}/predict",
        params={"camera_id": camera},
        content=data,
        headers={"content-type": f"image/{fmt}"},
    )

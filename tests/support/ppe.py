"""PPE frames rendered, encoded and posted to the PPE agent."""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence

import httpx
import numpy as np
from PIL import Image

from factory_mas.agents.ppe.agent import PpeAgent
from factory_mas.agents.ppe.model import PpeModel
from factory_mas.app import Components
from factory_mas.sim.ppe_images import render_worker
from tests.support.paths import ARTIFACTS

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


@functools.cache
def committed_model() -> PpeModel:
    return PpeModel.load(ARTIFACTS)


def frames(worn: Sequence[bool], n: int, first_seed: int = 100) -> list[bytes]:
    """n PNG renders, from first_seed on, that the committed model alone judges as `worn`
    with a worker present: the model is right on about 9 frames in 10, and these tests are
    about what the agent makes of its verdicts (smoothing, episodes, alerts)."""
    out: list[bytes] = []
    seed = first_seed
    while len(out) < n:
        pixels = render(worn, seed)
        seed += 1
        items, person = committed_model().scores(pixels[None])
        if (items[0] >= 0.5).tolist() == list(worn) and (person is None or person[0] >= 0.5):
            out.append(encode(pixels))
    return out

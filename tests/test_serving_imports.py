"""Serving needs numpy only for the forests: no scikit-learn, SciPy, joblib or TensorFlow.

They cost seconds of start-up and about 100 MB of memory, and a deployment may leave the
`train` extra out. The check runs in a fresh interpreter, since this test process has
imported them for other tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.app import TEST_ENV
from tests.support.paths import REPO
from tests.support.records import record

# Serving runs in a fresh interpreter, a child process.
pytestmark = pytest.mark.integration

TRAINING_ONLY = ("sklearn", "scipy", "joblib", "tensorflow")

SCRIPT = """
import asyncio, json, sys

import httpx

from factory_mas.app import build_app
from factory_mas.settings import load_settings


async def main(settings_path, env, record):
    settings = load_settings(path=settings_path, env=env)
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            scored = {
                agent: (await client.post(f"/api/{agent}/predict", json=record)).status_code
                for agent in ("pm", "safety", "cyber", "energy")
            }
        status = {a.agent_id: a.status for a in app.state.components.agents}
    return status, scored


status, scored = asyncio.run(main(sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])))
print(json.dumps({
    "status": status,
    "scored": scored,
    "imported": [name for name in json.loads(sys.argv[4]) if name in sys.modules],
}))
"""


def test_the_app_starts_and_scores_without_the_training_libraries(tmp_path: Path):
    env = {**TEST_ENV, "FACTORY_DATA_DIR": str(tmp_path / "data"), "MQTT_BROKER": ""}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            str(REPO / "settings.toml"),
            json.dumps(env),
            json.dumps(record()),
            json.dumps(TRAINING_ONLY),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,  # hang guard only
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    # The forests were loaded and evaluated, so their absence below means something.
    assert set(answer["status"].values()) == {"running"}, answer["status"]
    assert set(answer["scored"].values()) == {200}, answer["scored"]
    assert answer["imported"] == []

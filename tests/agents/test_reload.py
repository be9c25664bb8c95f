"""Hot model reload: a new artifact is swapped in without losing records; a bad one is refused."""

from __future__ import annotations

import shutil
import signal
import threading

import pytest

from factory_mas.training.pm import train_pm
from tests.support.paths import ARTIFACTS
from tests.support.records import record
from tests.support.waiting import wait_until

# A real server process swaps models while it serves.
pytestmark = pytest.mark.integration


def _models_copy(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(ARTIFACTS, models)
    return models


def test_reload_swaps_the_model_without_dropping_records(server_factory, tmp_path):
    models = _models_copy(tmp_path)
    server = server_factory({"FACTORY_MODELS_DIR": str(models)})
    before = server.get("/api/pm/health").json()["model_version"]

    sent = []
    stop = threading.Event()

    def keep_posting():
        while not stop.is_set():
            batch = [record(m % 50 + 1) for m in range(len(sent), len(sent) + 20)]
            assert server.post("/api/ingest", batch).status_code == 202
            sent.extend(batch)

    poster = threading.Thread(target=keep_posting)
    poster.start()
    try:
        wait_until(lambda: len(sent) >= 200, what="records flowing")
        train_pm(models, seed=99, ticks=600, max_train_rows=8000)
        answer = server.post("/api/pm/reload")
        assert answer.status_code == 200, answer.text
        wait_until(lambda: len(sent) >= 600, what="records flowing after the reload")
    finally:
        stop.set()
        poster.join(timeout=30)

    after = answer.json()["model_version"]
    assert after != before
    assert server.get("/api/pm/health").json()["model_version"] == after
    wait_until(
        lambda: server.get("/api/pm/status").json()["counters"]["predictions"] == len(sent),
        what="every accepted record scored",
    )
    status = server.get("/api/pm/status").json()
    assert status["counters"]["reloads"] == 1
    history = server.get("/api/pm/history?limit=10000").json()["predictions"]
    versions = {p["model_version"] for p in history}
    assert versions == {before, after}


def test_a_broken_artifact_is_refused_and_the_old_model_kept(server_factory, tmp_path):
    models = _models_copy(tmp_path)
    server = server_factory({"FACTORY_MODELS_DIR": str(models)})
    before = server.get("/api/pm/health").json()["model_version"]
    classifier = models / "pm_classifier.npz"
    classifier.write_bytes(classifier.read_bytes()[:-100] + b"\0" * 100)

    answer = server.post("/api/pm/reload")
    assert answer.status_code == 422
    assert "pm_classifier.npz" in answer.json()["detail"] and "sha256" in answer.json()["detail"]
    assert before in answer.json()["detail"]
    scored = server.post("/api/pm/predict", record(3))
    assert scored.status_code == 200 and scored.json()["model_version"] == before


def test_sighup_reloads_every_model(server_factory, tmp_path):
    models = _models_copy(tmp_path)
    server = server_factory({"FACTORY_MODELS_DIR": str(models)})
    before = server.get("/api/pm/health").json()["model_version"]
    train_pm(models, seed=5, ticks=600, max_train_rows=8000)
    server.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: server.get("/api/pm/health").json()["model_version"] != before,
        what="the new model after SIGHUP",
    )
    assert server.post("/api/pm/predict", record(3)).status_code == 200

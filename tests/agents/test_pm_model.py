"""The committed pm models: they load, they are good on fresh data, and they refuse to serve
when the files or the manifest do not match the code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgspec
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from factory_mas.agents.base import AgentContext
from factory_mas.agents.pm.agent import PmAgent
from factory_mas.agents.pm.model import AGENT_ID, FEATURES, RUL_CAP_HOURS, PmModel, features
from factory_mas.errors import ArtifactError
from factory_mas.ml.artifacts import MANIFEST, sha256_file
from factory_mas.sim.synthetic import FactorySimulator
from tests.support.app import agent_context
from tests.support.paths import ARTIFACTS


def manifest_of(models_dir: Path) -> dict:
    return json.loads((models_dir / MANIFEST).read_text(encoding="utf-8"))


def write_manifest(models_dir: Path, manifest: dict) -> None:
    (models_dir / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A private copy of the committed artifacts, free to break."""
    return Path(shutil.copytree(ARTIFACTS, tmp_path / "artifacts"))


@pytest.fixture(scope="module")
def fresh() -> dict[str, np.ndarray]:
    """Plant history the model never saw (another seed), machines in service only."""
    cols = FactorySimulator(seed=99, machines=50, step_minutes=5).run(1200).columns
    keep = cols["operation_mode"] != "Maintenance"
    probability, rul = PmModel.load(ARTIFACTS).predict(features(cols)[keep])
    return {"true_rul": cols["rul_hours"][keep], "probability": probability, "rul": rul}


def test_the_committed_model_loads():
    model = PmModel.load(ARTIFACTS)
    entry = manifest_of(ARTIFACTS)["models"][AGENT_ID]
    assert model.version == entry["version"]
    assert model.version.startswith("pm-")
    assert entry["features"] == list(FEATURES)


def test_predictions_have_the_right_shape_and_range(fresh):
    assert fresh["probability"].shape == fresh["rul"].shape == fresh["true_rul"].shape
    assert ((fresh["probability"] >= 0) & (fresh["probability"] <= 1)).all()
    assert ((fresh["rul"] >= 0) & (fresh["rul"] <= RUL_CAP_HOURS)).all()


def test_machines_near_failure_get_a_much_higher_failure_probability(fresh):
    near = fresh["true_rul"] <= 24
    far = fresh["true_rul"] > 200
    assert near.sum() > 500 and far.sum() > 5000, "the simulated history should hold both"
    p_near = fresh["probability"][near].mean()
    p_far = fresh["probability"][far].mean()
    assert p_near > 0.25
    assert p_near > 10 * p_far


def test_machines_near_failure_get_a_much_lower_rul(fresh):
    near = fresh["true_rul"] <= 24
    far = fresh["true_rul"] > 200
    rul_near = fresh["rul"][near].mean()
    rul_far = fresh["rul"][far].mean()
    assert rul_near < 100
    assert rul_near < rul_far / 2


def test_failure_within_a_day_is_ranked_well_on_fresh_data(fresh):
    fails = fresh["true_rul"] <= 24
    assert roc_auc_score(fails, fresh["probability"]) > 0.9


# ------------------------------------------------------------------ refusals


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def rehash(models_dir: Path, role: str, name: str | None = None) -> None:
    """Point the manifest at the file as it is now, as a matching stale file would be."""
    manifest = manifest_of(models_dir)
    files = manifest["models"][AGENT_ID]["files"]
    files[role]["path"] = name or files[role]["path"]
    files[role]["sha256"] = sha256_file(models_dir / files[role]["path"])
    write_manifest(models_dir, manifest)


def rewrite_npz(path: Path, **changes: object) -> None:
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    np.savez(path, **{**arrays, **changes})


def test_a_flipped_byte_in_the_classifier_is_refused(models):
    flip_a_byte(models / "pm_classifier.npz")
    with pytest.raises(ArtifactError) as err:
        PmModel.load(models)
    assert "sha256" in str(err.value)
    assert "pm_classifier.npz" in str(err.value)


def test_a_missing_model_file_is_refused(models):
    (models / "pm_regressor.npz").unlink()
    with pytest.raises(ArtifactError) as err:
        PmModel.load(models)
    assert "pm_regressor.npz" in str(err.value)
    assert "missing" in str(err.value)


def test_a_corrupt_forest_with_a_matching_hash_is_refused(models):
    (models / "pm_regressor.npz").write_bytes(b"PK\x03\x04 not really a zip")
    rehash(models, "regressor")
    with pytest.raises(ArtifactError) as err:
        PmModel.load(models)
    assert AGENT_ID in str(err.value)
    assert "cannot read" in str(err.value) and "pm_regressor.npz" in str(err.value)


def test_a_forest_in_another_format_is_refused(models):
    rewrite_npz(models / "pm_classifier.npz", format=np.asarray(99))
    rehash(models, "classifier")
    with pytest.raises(ArtifactError) as err:
        PmModel.load(models)
    assert "pm_classifier.npz" in str(err.value)
    assert "format 99" in str(err.value)


def test_the_forests_swapped_are_refused(models):
    manifest = manifest_of(models)
    files = manifest["models"][AGENT_ID]["files"]
    files["classifier"], files["regressor"] = files["regressor"], files["classifier"]
    write_manifest(models, manifest)
    with pytest.raises(ArtifactError) as err:
        PmModel.load(models)
    assert "pm_regressor.npz holds a regressor forest, expected a classifier" in str(err.value)


def test_a_classifier_of_other_classes_is_refused(models):
    rewrite_npz(models / "pm_classifier.npz", classes=np.asarray(["ok", "broken"]))
    rehash(models, "classifier")
    with pytest.raises(ArtifactError) as err:
        PmModel.load(models)
    assert "classes" in str(err.value) and "'broken'" in str(err.value)


def test_a_pickle_left_from_an_older_release_is_refused_with_the_way_out(models):
    (models / "pm_classifier.joblib").write_bytes(b"a scikit-learn pickle")
    rehash(models, "classifier", "pm_classifier.joblib")
    with pytest.raises(ArtifactError) as err:
        PmModel.load(models)
    assert "pm_classifier.joblib" in str(err.value)
    assert "python -m factory_mas.training.upgrade" in str(err.value)


def test_different_features_are_refused(models):
    manifest = manifest_of(models)
    manifest["models"][AGENT_ID]["features"] = [*FEATURES[:-1], "mode_maintenance"]
    write_manifest(models, manifest)
    with pytest.raises(ArtifactError) as err:
        PmModel.load(models)
    assert "features" in str(err.value)
    assert "mode_maintenance" in str(err.value)


def test_the_forests_are_served_whatever_scikit_learn_wrote_them(models):
    """The .npz holds numpy arrays only: the scikit-learn version that fitted the forests
    is a record, and even a stale manifest demanding another one is served."""
    manifest = manifest_of(models)
    entry = manifest["models"][AGENT_ID]
    assert "libraries" not in entry
    assert entry["training"]["scikit-learn"].startswith("1.")
    entry["libraries"] = {"scikit-learn": "1.2.2"}
    write_manifest(models, manifest)
    assert PmModel.load(models).version == entry["version"]


def test_a_missing_manifest_is_refused(models):
    (models / MANIFEST).unlink()
    with pytest.raises(ArtifactError) as err:
        PmModel.load(models)
    assert MANIFEST in str(err.value)
    assert "missing" in str(err.value)


def test_a_manifest_that_is_not_json_is_refused(models):
    (models / MANIFEST).write_text('{"models": {', encoding="utf-8")
    with pytest.raises(ArtifactError) as err:
        PmModel.load(models)
    assert "not valid JSON" in str(err.value)


def test_a_missing_entry_is_refused(models):
    manifest = manifest_of(models)
    del manifest["models"][AGENT_ID]
    write_manifest(models, manifest)
    with pytest.raises(ArtifactError) as err:
        PmModel.load(models)
    assert AGENT_ID in str(err.value)
    assert "no entry" in str(err.value)


def test_an_entry_without_the_classifier_is_refused(models):
    manifest = manifest_of(models)
    del manifest["models"][AGENT_ID]["files"]["classifier"]
    write_manifest(models, manifest)
    with pytest.raises(ArtifactError) as err:
        PmModel.load(models)
    assert "classifier" in str(err.value)


@pytest.mark.parametrize("breakage", ["flipped-byte", "no-manifest"])
async def test_the_agent_with_broken_models_reports_failed(settings, models, breakage):
    if breakage == "flipped-byte":
        flip_a_byte(models / "pm_classifier.npz")
        expected = "sha256"
    else:
        (models / MANIFEST).unlink()
        expected = MANIFEST
    async with agent_context(settings) as ctx:
        broken = AgentContext(
            hub=ctx.hub, store=ctx.store, inference=ctx.inference, models_dir=models
        )
        agent = PmAgent(settings.agents.pm, broken)
        async with agent:  # starting does not raise: the rest of the process keeps serving
            health = agent.health()
            assert agent.status == "failed"
            assert health["status"] == "failed"
            assert health["healthy"] is False
            assert expected in health["error"]
            assert agent.stats()["error"] == health["error"]
            # It does not consume telemetry it cannot score.
            assert await ctx.hub.publish("sensors/factory/data", []) == 0
        assert agent.status == "failed"


async def test_the_agent_on_the_committed_models_reports_their_version(settings):
    async with agent_context(settings) as ctx, PmAgent(settings.agents.pm, ctx) as agent:
        assert agent.status == "running"
        assert (
            agent.health()["model_version"] == manifest_of(ARTIFACTS)["models"][AGENT_ID]["version"]
        )
        assert msgspec.to_builtins(agent.stats())["error"] is None

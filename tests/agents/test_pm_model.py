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
from factory_mas.agents.pm.model import AGENT_ID, CHANNELS, FEATURES, RUL_CAP_HOURS, PmModel
from factory_mas.errors import ArtifactError
from factory_mas.ml.artifacts import MANIFEST, sha256_file
from factory_mas.sim.synthetic import FactorySimulator
from tests.support.agent_contract import validated
from tests.support.app import agent_context
from tests.support.paths import ARTIFACTS
from tests.support.records import record


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
    """Plant history the model never saw (another seed), machines in service only, judged
    after 200 h in service: the machines are new to the model and join at any point of
    their lives, so until a repair starts a fresh life, one first seen worn takes that
    for its normal (docs/models.md)."""
    cols = FactorySimulator(seed=99, machines=50, step_minutes=5).run(3600).columns
    model = PmModel.load(ARTIFACTS)
    # Served as a plant would: every machine's normal learnt from its records as they come.
    probability, rul, _ = model.assess(cols, model.fresh_normals())
    keep = (cols["operation_mode"] != "Maintenance") & (np.arange(len(probability)) >= 2400 * 50)
    return {"true_rul": cols["rul_hours"][keep], "probability": probability[keep], "rul": rul[keep]}


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


def steady(machine: int, base: dict[str, float], n: int, seed: int) -> dict[str, np.ndarray]:
    """`n` records of a healthy Active machine at its own levels, plus the same noise."""
    noise = np.random.default_rng(seed).standard_normal((n, len(CHANNELS)))
    spread = np.asarray([3.0, 0.4, 0.25, 0.8, 0.6, 20.0])
    x = np.asarray([base[c] for c in CHANNELS]) + noise * spread
    return {
        "machine_id": np.full(n, machine),
        "operation_mode": np.full(n, "Active", dtype=object),
        **{c: x[:, j] for j, c in enumerate(CHANNELS)},
    }


COOL = {
    "temperature_c": 55.0,
    "vibration_hz": 1.2,
    "power_consumption_kw": 5.5,
    "error_rate_pct": 2.0,
    "defect_rate_pct": 2.0,
    "production_speed": 300.0,
}
HOT = {**COOL, "temperature_c": 78.0, "power_consumption_kw": 30.0}


def test_a_hot_big_machine_is_served_like_a_normal_one_once_its_normal_is_learnt():
    model = PmModel.load(ARTIFACTS)
    normals = model.fresh_normals()
    p_cool, rul_cool, _ = model.assess(steady(1, COOL, 300, seed=3), normals)
    p_hot, rul_hot, _ = model.assess(steady(2, HOT, 300, seed=3), normals)
    settled = slice(100, None)
    assert abs(p_hot[settled].mean() - p_cool[settled].mean()) < 0.02
    assert abs(rul_hot[settled].mean() - rul_cool[settled].mean()) < 20
    assert p_hot[settled].mean() < 0.1 and rul_hot[settled].mean() > 150


def test_a_batch_scores_as_its_records_one_by_one():
    model = PmModel.load(ARTIFACTS)
    cols = FactorySimulator(seed=7, machines=4, step_minutes=5).run(80).columns
    together = model.assess(cols, model.fresh_normals())
    normals = model.fresh_normals()
    alone = [
        model.assess({k: np.asarray(v)[i : i + 1] for k, v in cols.items()}, normals)
        for i in range(len(cols["machine_id"]))
    ]
    for j in range(3):
        np.testing.assert_allclose(together[j], np.concatenate([a[j] for a in alone]))


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


async def test_the_agent_keeps_each_machines_normal_across_a_restart_and_a_reload(settings):
    hot = [
        record(7, timestamp=f"2025-01-01T00:{i:02d}:00Z", temperature_c=78.0 + i % 3)
        for i in range(40)
    ]
    async with agent_context(settings) as ctx:
        async with PmAgent(settings.agents.pm, ctx) as agent:
            await agent.process(validated(hot))
            learnt = agent.live_normals().known[(7, 0)]
            assert learnt.n == 30, "learnt from its warm-up, then held"
            assert 78.0 <= learnt.loc[0] <= 80.0
            state = agent.export_state()
            # A reload: the new model's normals come first, the served ones fill the rest.
            model = agent.model
            agent.model = PmModel(model.classifier, model.regressor, model.normal_arrays, "new")
            assert agent.live_normals().known[(7, 0)] == learnt
        async with PmAgent(settings.agents.pm, ctx) as again:
            again.import_state(state)
            assert again.live_normals().known[(7, 0)] == learnt
            again.import_state({"not": "normals"})
            assert (7, 0) not in again.live_normals().known

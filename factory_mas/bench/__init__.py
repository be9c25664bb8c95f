"""`python -m factory_mas bench`: how fast each agent scores, alone and batched
(`--inference`), how fast telemetry goes from an MQTT broker to predictions (`--mqtt`),
and what the SCADA servers cost the pipeline (`--scada`).

Every figure comes from this run on this machine, and the targets are ratios or floors
measured beside their baselines in the same run, because shared machines are noisy. The
scoring measured is each agent's real `score()` (features, model, rules, per-machine state)
on records that are already validated: no hub, no HTTP, no store.
"""

from .inference import report, run_inference_bench, write_json
from .mqtt import mqtt_report, run_mqtt_bench

__all__ = ["mqtt_report", "report", "run_inference_bench", "run_mqtt_bench", "write_json"]

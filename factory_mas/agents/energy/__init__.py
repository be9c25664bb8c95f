"""energy_agent: forecast, baseline, anomaly and efficiency of every machine's power draw."""

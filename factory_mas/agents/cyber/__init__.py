"""cyber_agent: network anomalies per machine, escalating with their persistence."""

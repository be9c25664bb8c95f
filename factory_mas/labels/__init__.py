"""What people know about the plant that telemetry does not say: maintenance, failures,
incidents and their verdicts on alarms. Models learn from them; `model` is the shape."""

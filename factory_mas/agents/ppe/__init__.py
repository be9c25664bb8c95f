"""ppe_agent: helmet, boots, pants and shirt on camera frames, smoothed per camera."""

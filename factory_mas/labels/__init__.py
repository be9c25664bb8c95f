"""What people know about the plant that telemetry does not say: maintenance, failures,
incidents and their verdicts on alarms. Models learn from them.

`model` is the shape and its checks, `store` the SQL (the `labels` table), `csv` the file
format of `labels import` / `export`, `routes` POST and GET /api/labels. Verdicts on alarms
are written by the orchestrator, with the alarm change they belong to."""

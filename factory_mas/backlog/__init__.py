"""The backlog agent: a written summary of every shift, from computed facts."""

"""safety_agent: fire, mechanical and electrical hazards per record."""

"""Local model servers: backends, the agent that runs them, and how the web asks it."""

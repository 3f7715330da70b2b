"""sregraph's entry points: CLI, configuration, engine, worker, HTTP API, SDK and the demo environment."""

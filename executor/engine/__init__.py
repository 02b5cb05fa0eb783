"""The engine: shard pools that run steps, and replays that drive workflow code."""

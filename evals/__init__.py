"""Benchmarks, the recorded-incident replay suite, dataset converters and the ranker's tuning."""

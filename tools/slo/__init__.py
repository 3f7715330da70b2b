"""Service level objectives: the SLO file, SLIs from telemetry, error budgets, burn rates, the release gate.

`durations` (Prometheus durations), `budget` (burn-rate and budget maths, alert pairs, forecast), `spec` (the
SLO file's models), `openslo` + `loading` (reading the file), `sli` (events from the telemetry store), `gate`
(one SLO's gate state), `evaluation` (SLO status and the service's gate decision), `rules` (Prometheus rules).
Definitions, formulas and thresholds are written up in docs/slo.md.
"""

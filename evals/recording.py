"""Split into modules of one concern each; this re-export keeps `evals.recording` importable one release.

`evals.case` (the case schema), `evals.calls` (recorded calls and their replay keys),
`evals.telemetry_tables` (telemetry.json), `evals.recorder` (record mode), `evals.case_files` (a case folder
on disk), `evals.live_cases` (cases from live incidents).
"""

from evals.calls import (
    ACTION_CALLS,
    MUTATING,
    TOOLS,
    bind_args,
    call_text,
    caller_name,
    canonical,
    identity,
    protocol_methods,
    result_adapter,
    to_jsonable,
)
from evals.case import FORMAT_VERSION, Case, Injected, Kind, Outcome, Truth, outcome_of
from evals.case_files import (
    case_folders,
    case_settings,
    read_calls,
    read_case,
    write_calls,
    write_case,
    write_telemetry,
)
from evals.live_cases import (
    FAULT_TRUTH,
    TruthFn,
    attach_recorder,
    new_case,
    record_demo_incident,
    truth_of_fault,
)
from evals.recorder import (
    Recorder,
    Recording,
    RecordingClock,
    RecordingProxy,
    RecordingTelemetry,
    latest_actions,
)
from evals.telemetry_tables import (
    TelemetryLog,
    TelemetryTables,
    covered,
    expand,
    merge_intervals,
    ranges,
    stream_of,
    tables_from_json,
)

__all__ = [
    "ACTION_CALLS",
    "FAULT_TRUTH",
    "FORMAT_VERSION",
    "MUTATING",
    "TOOLS",
    "Case",
    "Injected",
    "Kind",
    "Outcome",
    "Recorder",
    "Recording",
    "RecordingClock",
    "RecordingProxy",
    "RecordingTelemetry",
    "TelemetryLog",
    "TelemetryTables",
    "Truth",
    "TruthFn",
    "attach_recorder",
    "bind_args",
    "call_text",
    "caller_name",
    "canonical",
    "case_folders",
    "case_settings",
    "covered",
    "expand",
    "identity",
    "latest_actions",
    "merge_intervals",
    "new_case",
    "outcome_of",
    "protocol_methods",
    "ranges",
    "read_calls",
    "read_case",
    "record_demo_incident",
    "result_adapter",
    "stream_of",
    "tables_from_json",
    "to_jsonable",
    "truth_of_fault",
    "write_calls",
    "write_case",
    "write_telemetry",
]

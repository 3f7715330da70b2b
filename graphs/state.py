"""The incident state and the agents' outputs, under their old module name: they live in `tools.domain`.

Kept because the SQLite checkpointer stores each model with the module it was defined in: checkpoints written
before the move name `graphs.state`, and a worker must still resume them.
"""

from tools.domain import (  # noqa: F401 - re-exported for checkpoints written before the move
    FaultType,
    ActionKind,
    Status,
    Trigger,
    Signal,
    Observation,
    Evidence,
    Hypothesis,
    SimilarIncident,
    Diagnosis,
    Action,
    ActionPlan,
    ApprovalDecision,
    ActionResult,
    Verification,
    TimelineEntry,
    PostMortem,
    IncidentState,
    RunInput,
)

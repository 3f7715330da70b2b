"""The incident state and the agents' outputs, under their old module name: they live in `tools.domain`.

Kept because the SQLite checkpointer stores each model with the module it was defined in: checkpoints written
before the move name `graphs.state`, and a worker must still resume them.
"""

from tools.domain import (  # noqa: F401 - re-exported for checkpoints written before the move
    Action,
    ActionKind,
    ActionPlan,
    ActionResult,
    ApprovalDecision,
    Diagnosis,
    Evidence,
    FaultType,
    Hypothesis,
    IncidentState,
    Observation,
    PostMortem,
    RunInput,
    Signal,
    SimilarIncident,
    Status,
    TimelineEntry,
    Trigger,
    Verification,
)

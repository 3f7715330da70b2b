"""The graph's shape is reviewed: any changed node or edge shows up as a snapshot diff."""

from __future__ import annotations

import json
import os
from pathlib import Path

from graphs.graph import graph

SNAPSHOT = Path(__file__).parent / "snapshots" / "graph.mmd"


def test_topology_matches_snapshot() -> None:
    drawn = graph.get_graph().draw_mermaid()
    if os.environ.get("SREGRAPH_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(drawn)
    assert SNAPSHOT.exists(), (
        f"missing {SNAPSHOT}; create it with SREGRAPH_UPDATE_SNAPSHOTS=1 pytest {__file__}"
    )
    assert drawn == SNAPSHOT.read_text(), (
        "graph topology changed; review and update with SREGRAPH_UPDATE_SNAPSHOTS=1"
    )


def test_langgraph_json_points_at_the_compiled_graph() -> None:
    spec = json.loads((Path(__file__).parents[1] / "langgraph.json").read_text())
    assert spec["graphs"]["incident"] == "./graphs/graph.py:graph"
    nodes = set(graph.get_graph().nodes)
    assert {
        "observe",
        "open_incident",
        "analyze",
        "plan",
        "approval",
        "act",
        "verify",
        "escalate",
        "document",
    } <= nodes

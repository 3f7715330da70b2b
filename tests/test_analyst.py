"""The deterministic analyst and engineer planning on synthetic telemetry written to the real local store."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import cast

import pytest

from agents.analyst import Analyst, AnalystConfig, ServiceEvidence, calibrated, confidence, ranking_features
from agents.engineer import Engineer, EngineerConfig
from agents.observer import ObserverConfig
from agents.policy import Policy, ServicePolicy, load_policy
from agents.rca_confidence import ARTEFACT, ConfidenceModel
from tests.fixtures.telemetry import (
    FAULT_AT,
    NORMAL,
    NOW,
    T0,
    TOPOLOGY,
    analyst,
    error_traces,
    local_store,
    make_toolbox,
    observe,
    write_series,
)
from tests.support import FakeHealth, FakeRuntime, ManualClock
from tools.base import ConfigError, LogRecord, ServiceStatus, Span
from tools.domain import Action, ActionResult
from tools.gitops import LocalGitOps
from tools.telemetry import LocalTelemetryStore
from tools.toolbox import Toolbox


def test_cascade_blames_the_dependency_not_the_loud_caller(tmp_path: Path) -> None:
    """payments fails a little; checkout and frontend fail loudly because they call it."""
    tb = make_toolbox(tmp_path, FakeRuntime.up(TOPOLOGY), FakeHealth())
    write_series(tb.telemetry, "payments", {"error_ratio": 0.3})
    write_series(tb.telemetry, "checkout", {"error_ratio": 0.6})
    write_series(tb.telemetry, "frontend", {"error_ratio": 0.9})
    error_traces(tb.telemetry, "payments")
    local_store(tb.telemetry).write_logs(
        [
            LogRecord(
                ts=FAULT_AT + 2 + i * 0.1,
                service="checkout",
                level="error",
                message="upstream payments returned 500",
            )
            for i in range(10)
        ]
    )
    obs = observe(tb)
    assert not obs.healthy
    diagnosis = analyst(tb).diagnose(obs)
    assert diagnosis.top is not None
    assert diagnosis.top.service == "payments"
    assert diagnosis.top.fault_type == "error_spike"
    kinds = {e.kind for e in diagnosis.top.evidence}
    assert {"metric", "trace", "log"} <= kinds
    frontend = next(h for h in diagnosis.hypotheses if h.service == "frontend")
    assert any(e.kind == "topology" and e.weight < 0 for e in frontend.evidence)
    assert 0 < diagnosis.confidence <= 1


def test_crash_with_unrelated_deploy_elsewhere(tmp_path: Path) -> None:
    """A deploy to a quiet service is a red herring; the dead process is the cause."""
    tb = make_toolbox(tmp_path, FakeRuntime.up(TOPOLOGY, down={"payments"}), FakeHealth(failing={"payments"}))
    assert isinstance(tb.gitops, LocalGitOps)
    tb.gitops.commit_config(
        "inventory" if False else "frontend", {"version": "1.4.1"}, "frontend 1.4.1", kind="deploy"
    )
    write_series(tb.telemetry, "payments", stop_at=FAULT_AT)
    write_series(tb.telemetry, "checkout", {"error_ratio": 1.0})
    write_series(tb.telemetry, "frontend", {"error_ratio": 1.0})
    diagnosis = analyst(tb).diagnose(observe(tb))
    assert diagnosis.top is not None and diagnosis.top.service == "payments"
    assert diagnosis.top.fault_type == "crash"
    frontend = next(h for h in diagnosis.hypotheses if h.service == "frontend")
    # the frontend deploy may be listed but must not outweigh the crash
    assert frontend.score < diagnosis.top.score
    assert diagnosis.confidence > 0.5


def test_bad_deploy_is_named_and_planned_as_rollback(tmp_path: Path) -> None:
    tb = make_toolbox(tmp_path, FakeRuntime.up(TOPOLOGY), FakeHealth())
    assert isinstance(tb.clock, ManualClock)
    tb.clock.t = FAULT_AT - 20
    assert isinstance(tb.gitops, LocalGitOps)
    tb.gitops.commit_config("payments", {"version": "2.0.0-rc1"}, "payments 2.0.0-rc1", kind="deploy")
    tb.clock.t = NOW
    write_series(tb.telemetry, "payments", {"error_ratio": 0.6})
    write_series(tb.telemetry, "checkout", {"error_ratio": 0.6})
    write_series(tb.telemetry, "frontend", {"error_ratio": 0.6})
    error_traces(tb.telemetry, "payments")
    diagnosis = analyst(tb).diagnose(observe(tb))
    assert diagnosis.top is not None
    assert (diagnosis.top.service, diagnosis.top.fault_type) == ("payments", "bad_deploy")
    engineer = Engineer(tb, load_policy(), EngineerConfig(), AnalystConfig(), ObserverConfig())
    plan = engineer.plan(diagnosis, attempts=0, previous=[])
    assert plan.decision == "act"
    assert plan.actions[0].kind == "rollback"
    assert plan.actions[0].params["config"]["version"] == "1.4.0"


def test_a_service_down_after_its_deploy_is_restarted_once_then_rolled_back(tmp_path: Path) -> None:
    """Caught mid-redeploy (health failing), a bad release reads as a crash; once a restart did not help, the
    deploy just before it is the fault, and the plan is a rollback."""
    tb = make_toolbox(tmp_path, FakeRuntime.up(TOPOLOGY), FakeHealth(failing={"payments"}))
    assert isinstance(tb.clock, ManualClock)
    tb.clock.t = FAULT_AT - 5
    assert isinstance(tb.gitops, LocalGitOps)
    tb.gitops.commit_config("payments", {"version": "2.0.0-rc1"}, "payments 2.0.0-rc1", kind="deploy")
    tb.clock.t = NOW
    write_series(tb.telemetry, "payments", {"error_ratio": 0.6})
    write_series(tb.telemetry, "checkout", {"error_ratio": 0.6})
    error_traces(tb.telemetry, "payments")
    obs = observe(tb)
    first = analyst(tb).diagnose(obs)
    assert first.top is not None and (first.top.service, first.top.fault_type) == ("payments", "crash")
    restart = ActionResult(
        action=Action(kind="restart", service="payments"),
        key="inc/attempt-1/restart/payments",
        status="done",
        started_at=NOW - 20,
        finished_at=NOW - 19,
    )
    second = analyst(tb).diagnose(obs, previous=[restart])
    assert second.top is not None and (second.top.service, second.top.fault_type) == (
        "payments",
        "bad_deploy",
    )
    engineer = Engineer(tb, load_policy(), EngineerConfig(), AnalystConfig(), ObserverConfig())
    plan = engineer.plan(second, attempts=1, previous=[restart])
    assert plan.decision == "act" and plan.actions[0].kind == "rollback"


def test_memory_leak_is_recognised(tmp_path: Path) -> None:
    tb = make_toolbox(tmp_path, FakeRuntime.up(TOPOLOGY), FakeHealth())
    write_series(tb.telemetry, "checkout", leak_mb_s=40)
    write_series(tb.telemetry, "payments")
    write_series(tb.telemetry, "frontend")
    diagnosis = analyst(tb).diagnose(observe(tb))
    assert diagnosis.top is not None
    assert (diagnosis.top.service, diagnosis.top.fault_type) == ("checkout", "memory_leak")


def test_healthy_system_has_no_signals(tmp_path: Path) -> None:
    tb = make_toolbox(tmp_path, FakeRuntime.up(TOPOLOGY), FakeHealth())
    for s in TOPOLOGY:
        write_series(tb.telemetry, s)
    obs = observe(tb)
    assert obs.healthy and obs.signals == []
    diagnosis = analyst(tb).diagnose(obs)
    assert diagnosis.hypotheses == [] and diagnosis.confidence == 0.0


def test_confidence_follows_separation(tmp_path: Path) -> None:
    """Two equally broken independent services get a lower confidence than one broken service alone; both are
    the calibrated model's probability for their ranking."""
    tb = make_toolbox(tmp_path, FakeRuntime.up(TOPOLOGY), FakeHealth())
    write_series(tb.telemetry, "payments", {"latency_p95_ms": 400})
    write_series(tb.telemetry, "checkout")
    write_series(tb.telemetry, "frontend")
    alone = analyst(tb).diagnose(observe(tb)).confidence
    tb2 = make_toolbox(tmp_path / "two", FakeRuntime.up(TOPOLOGY), FakeHealth())
    topo: dict[str, list[str]] = {"frontend": [], "checkout": [], "payments": []}
    tb2.topology = topo
    write_series(tb2.telemetry, "payments", {"latency_p95_ms": 400})
    write_series(tb2.telemetry, "checkout", {"latency_p95_ms": 400})
    write_series(tb2.telemetry, "frontend")
    two = analyst(tb2).diagnose(observe(tb2))
    assert two.confidence < alone
    model = ConfidenceModel.load()
    assert model is not None
    scores = {h.service: h.score for h in two.hypotheses}
    scores.update({s: 0.0 for s in TOPOLOGY if s not in scores})
    assert two.confidence == pytest.approx(model.probability(ranking_features(scores)), abs=2e-3)


def _logistic(features: dict[str, float]) -> float:
    """The logistic formula with the shipped artefact's weights, read from the JSON itself."""
    data = json.loads(ARTEFACT.read_text())
    z = data["bias"] + sum(data["weights"][name] * features[name] for name in ("margin", "ratio"))
    return 1.0 / (1.0 + math.exp(-z))


def test_confidence_is_the_models_probability_for_a_ranking() -> None:
    """A hand-built ranking: scores normalised so the top is 1, margins as agents.rca.features defines them."""
    model = ConfidenceModel.load()
    assert model is not None
    scores = {"payments": 4.0, "checkout": 3.0, "frontend": 1.0, "cart": -2.0}
    x = ranking_features(scores)
    assert (x["margin"], x["ratio"]) == pytest.approx((0.25, 0.75))
    expected = _logistic({"margin": 0.25, "ratio": 0.75})
    probabilities = calibrated(scores, model)
    assert probabilities["payments"] == pytest.approx(expected, abs=1e-3)
    # The others share what is left in proportion to their scores; no evidence, no belief.
    assert probabilities["checkout"] == pytest.approx((1 - expected) * 3 / 4, abs=1e-3)
    assert probabilities["frontend"] == pytest.approx((1 - expected) * 1 / 4, abs=1e-3)
    assert probabilities["cart"] == 0.0
    assert calibrated({"payments": 0.0, "cart": -1.0}, model) == {"payments": 0.0, "cart": 0.0}


def test_without_the_artefact_the_analyst_says_so_and_uses_the_formula(tmp_path: Path) -> None:
    tb = make_toolbox(tmp_path, FakeRuntime.up(TOPOLOGY, down={"payments"}), FakeHealth(failing={"payments"}))
    write_series(tb.telemetry, "payments", stop_at=FAULT_AT)
    write_series(tb.telemetry, "checkout", {"error_ratio": 1.0})
    write_series(tb.telemetry, "frontend", {"error_ratio": 1.0})
    bare = Analyst(
        tb,
        AnalystConfig(),
        ObserverConfig(window_s=6, baseline_s=30),
        confidence_artefact=tmp_path / "none.json",
    )
    assert bare.confidence_model is None
    diagnosis = bare.diagnose(observe(tb))
    assert any("CONFIDENCE NOT CALIBRATED" in n and "none.json" in n for n in diagnosis.notes)
    top = diagnosis.top
    assert top is not None and top.service == "payments"
    total = sum(h.score for h in diagnosis.hypotheses if h.score > 0)
    assert diagnosis.confidence == pytest.approx(
        confidence(ServiceEvidence("payments", evidence=top.evidence), total), abs=2e-3
    )
    calibrated_one = analyst(tb).diagnose(observe(tb))
    assert not any("CONFIDENCE" in n for n in calibrated_one.notes)


def test_policy_refuses_and_limits(tmp_path: Path) -> None:
    policy = Policy(
        defaults=ServicePolicy(
            allowed=["restart"], max_attempts=2, cooldown_s=60, require_approval=["restart"]
        )
    )
    services = list(TOPOLOGY)
    ok = policy.check(
        Action(kind="restart", service="payments"),
        attempts_so_far=0,
        last_same_action_at=None,
        now=100,
        known_services=services,
    )
    assert ok.allowed and ok.needs_approval
    assert not policy.check(
        Action(kind="rollback", service="payments"),
        attempts_so_far=0,
        last_same_action_at=None,
        now=100,
        known_services=services,
    ).allowed
    assert not policy.check(
        Action(kind="restart", service="payments"),
        attempts_so_far=2,
        last_same_action_at=None,
        now=100,
        known_services=services,
    ).allowed
    cooling = policy.check(
        Action(kind="restart", service="payments"),
        attempts_so_far=0,
        last_same_action_at=80,
        now=100,
        known_services=services,
    )
    assert not cooling.allowed and "cooling down" in cooling.reasons[0]
    assert not policy.check(
        Action(kind="restart", service="db"),
        attempts_so_far=0,
        last_same_action_at=None,
        now=100,
        known_services=services,
    ).allowed


def test_bad_policy_file_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("defaults:\n  allowed: [restart, delete_everything]\n")
    with pytest.raises(ConfigError, match="defaults.allowed"):
        load_policy(bad)


def test_dry_run_changes_nothing_and_refusals_are_recorded(tmp_path: Path) -> None:
    from tools.domain import ActionPlan, Diagnosis, Evidence, Hypothesis

    class CountingRuntime(FakeRuntime):
        restarted = 0

        def restart(self, service: str) -> ServiceStatus:
            self.restarted += 1
            return self.status(service)

    runtime = CountingRuntime.up(TOPOLOGY)
    tb = make_toolbox(tmp_path, runtime, FakeHealth())
    engineer = Engineer(
        tb,
        Policy(defaults=ServicePolicy(allowed=["restart"], dry_run=True)),
        EngineerConfig(),
        AnalystConfig(),
        ObserverConfig(),
    )
    plan = ActionPlan(decision="act", actions=[Action(kind="restart", service="payments")], dry_run=True)
    [result] = engineer.act("inc-1", plan, attempt=1)
    assert result.status == "dry_run" and runtime.restarted == 0
    assert [e.status for e in tb.ledger.all()] == ["dry_run"]

    strict = Engineer(
        tb,
        Policy(defaults=ServicePolicy(allowed=["rollback"])),
        EngineerConfig(),
        AnalystConfig(),
        ObserverConfig(),
    )
    hypothesis = Hypothesis(
        service="payments",
        fault_type="crash",
        confidence=0.9,
        evidence=[Evidence(kind="health", service="payments", summary="down", weight=3)],
    )
    refused = strict.plan(
        Diagnosis(hypotheses=[hypothesis], confidence=0.9, incident_id="inc-2"), attempts=0, previous=[]
    )
    assert refused.decision == "escalate" and "not allowed" in refused.escalation_reason
    assert runtime.restarted == 0
    [entry] = [e for e in tb.ledger.all() if e.incident_id == "inc-2"]
    assert (entry.kind, entry.status) == ("restart", "refused") and "not allowed" in entry.detail


@pytest.mark.parametrize(
    ("deployed_at", "expected"),
    [(FAULT_AT - 20, "bad_deploy"), (FAULT_AT - 200, "error_spike"), (FAULT_AT + 5, "error_spike")],
)
def test_only_changes_shortly_before_the_incident_name_the_fault(
    tmp_path: Path, deployed_at: float, expected: str
) -> None:
    """A change the service ran normally after for minutes, or one made after the trouble began
    (a remediation commit), does not make an error spike a bad deploy."""
    tb = make_toolbox(tmp_path, FakeRuntime.up(TOPOLOGY), FakeHealth())
    assert isinstance(tb.clock, ManualClock)
    tb.clock.t = deployed_at
    assert isinstance(tb.gitops, LocalGitOps)
    tb.gitops.commit_config("payments", {"version": "1.4.1"}, "payments 1.4.1", kind="deploy")
    tb.clock.t = NOW
    for service in TOPOLOGY:
        write_series(tb.telemetry, service, {"error_ratio": 0.5})
    error_traces(tb.telemetry, "payments")
    diagnosis = analyst(tb).diagnose(observe(tb))
    assert diagnosis.top is not None and diagnosis.top.service == "payments"
    assert diagnosis.top.fault_type == expected
    changes = [e for e in diagnosis.top.evidence if e.kind == "change"]
    assert bool(changes) == (deployed_at < FAULT_AT)


def test_a_rollback_is_never_reverted(tmp_path: Path) -> None:
    """An error spike shortly after sregraph's own revert must not be 'fixed' by reverting the revert."""
    tb = make_toolbox(tmp_path, FakeRuntime.up(TOPOLOGY), FakeHealth())
    assert isinstance(tb.clock, ManualClock)
    tb.clock.t = FAULT_AT - 40
    assert isinstance(tb.gitops, LocalGitOps)
    tb.gitops.commit_config(
        "payments", {"version": "1.4.0", "capture": False}, "disable capture", kind="config", author="ops"
    )
    tb.clock.t = FAULT_AT - 20
    pr = tb.gitops.propose("payments", {"version": "1.4.0"}, "revert", "revert capture", key="k1")
    tb.gitops.merge(pr.id)
    tb.clock.t = NOW
    for service in TOPOLOGY:
        write_series(tb.telemetry, service, {"error_ratio": 0.5})
    error_traces(tb.telemetry, "payments")
    diagnosis = analyst(tb).diagnose(observe(tb))
    assert diagnosis.top is not None and diagnosis.top.service == "payments"
    shas = {e.ref for e in diagnosis.top.evidence if e.kind == "change"}
    revert = tb.gitops.history(service="payments")[0]
    assert revert.sha not in shas  # the revert is not a suspect; the 40 s old human change still is


def test_a_suspect_change_already_reverted_falls_back_to_a_checked_restart(tmp_path: Path) -> None:
    from tools.domain import ActionPlan

    class CountingRuntime(FakeRuntime):
        restarted = 0

        def restart(self, service: str) -> ServiceStatus:
            self.restarted += 1
            return self.status(service)

    runtime = CountingRuntime.up(TOPOLOGY)
    tb = make_toolbox(tmp_path, runtime, FakeHealth())
    current = tb.gitops.config("payments")
    rollback = Action(kind="config_change", service="payments", params={"config": current, "revert": "abc"})
    allowed = Engineer(
        tb,
        Policy(defaults=ServicePolicy(allowed=["restart", "config_change"], cooldown_s=0)),
        EngineerConfig(),
        AnalystConfig(),
        ObserverConfig(),
    )
    [result] = allowed.act("inc-r", ActionPlan(decision="act", actions=[rollback]), attempt=1)
    assert result.status == "done" and "already reverted" in result.detail and runtime.restarted == 1
    strict = Engineer(
        tb,
        Policy(defaults=ServicePolicy(allowed=["config_change"])),
        EngineerConfig(),
        AnalystConfig(),
        ObserverConfig(),
    )
    [refused] = strict.act("inc-s", ActionPlan(decision="act", actions=[rollback]), attempt=1)
    assert refused.status == "failed" and "restart is refused" in refused.detail and runtime.restarted == 1


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("OSError: [Errno 28] No space left on device: '/var/lib/payments/ledger.wal'", "disk_full"),
        ("internal error: request handler failed", "error_spike"),
    ],
)
def test_a_full_disk_is_named_from_its_error_lines_and_never_restarted(
    tmp_path: Path, message: str, expected: str
) -> None:
    tb = make_toolbox(tmp_path, FakeRuntime.up(TOPOLOGY), FakeHealth())
    write_series(tb.telemetry, "payments", {"error_ratio": 0.5})
    for s in ("checkout", "frontend"):
        write_series(tb.telemetry, s)
    local_store(tb.telemetry).write_logs(
        LogRecord(ts=FAULT_AT + 1 + i * 0.5, service="payments", level="error", message=message, attrs={})
        for i in range(10)
    )
    diagnosis = analyst(tb).diagnose(observe(tb))
    assert diagnosis.top is not None and (diagnosis.top.service, diagnosis.top.fault_type) == (
        "payments",
        expected,
    )
    plan = Engineer(tb, load_policy(None), EngineerConfig(), AnalystConfig(), ObserverConfig()).plan(
        diagnosis, 0, []
    )
    if expected == "disk_full":
        assert (plan.decision, plan.actions) == ("escalate", []), "no restart frees a disk"
    else:
        assert (plan.decision, [a.kind for a in plan.actions]) == ("act", ["restart"])


def test_the_live_analyst_reads_the_same_ranker_as_the_benchmark(tmp_path: Path) -> None:
    """The root-cause ranker (agents/rca.py) runs on the analyst's own reads and its view is evidence."""
    from agents.detection.window import Windows
    from agents.rca import rank
    from agents.rca_live import live_input

    tb = make_toolbox(tmp_path, FakeRuntime.up(TOPOLOGY), FakeHealth())
    write_series(tb.telemetry, "payments", {"cpu_percent": 95.0})
    write_series(tb.telemetry, "checkout")
    write_series(tb.telemetry, "frontend")
    obs = observe(tb)
    diagnosis = analyst(tb).diagnose(obs)
    assert diagnosis.top is not None and diagnosis.top.service == "payments"
    ranker = [e for e in diagnosis.top.evidence if e.ref == "ranker"]
    assert len(ranker) == 1 and ranker[0].weight > 0 and "metrics" in ranker[0].summary
    windows = Windows.ending_at(NOW, 6, 30, baseline_end=obs.baseline_end)
    result = rank(live_input(tb.telemetry, tb.services, tb.topology, windows, windows))
    assert result.services[0] == "payments" and result.fault_type == "cpu"
    # No service of a healthy system gets the ranker's evidence, although the ranker still orders their noise.
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    tb2 = make_toolbox(quiet, FakeRuntime.up(TOPOLOGY), FakeHealth())
    for s in TOPOLOGY:
        write_series(tb2.telemetry, s)
    healthy = analyst(tb2).diagnose(observe(tb2))
    assert all(e.ref != "ranker" for h in healthy.hypotheses for e in h.evidence)


def test_what_each_fault_type_needs_in_the_evidence() -> None:
    from agents.analyst import ServiceEvidence, unsupported
    from tools.domain import Signal

    class _Toolbox:
        def downstream_of(self, service: str) -> set[str]:
            return {"payments"} if service == "checkout" else set()

    toolbox = cast(Toolbox, _Toolbox())  # a stand-in: `unsupported` reads only downstream_of
    quiet = ServiceEvidence("checkout")
    table = {"checkout": quiet, "payments": ServiceEvidence("payments")}
    assert unsupported("memory_leak", quiet, table, toolbox) == "its memory did not deviate"
    assert unsupported("bad_deploy", quiet, table, toolbox) == "it had no deploy in the lookback"
    assert unsupported("dependency_down", quiet, table, toolbox) == "none of its dependencies is down"
    assert unsupported("unknown", quiet, table, toolbox) == ""
    leaking = ServiceEvidence(
        "checkout",
        signals=[
            Signal(
                service="checkout",
                name="memory_rss_mb",
                value=900.0,
                baseline=100.0,
                score=12.0,
                detail="rss up",
            )
        ],
    )
    assert unsupported("memory_leak", leaking, table, toolbox) == ""
    table["payments"].signals.append(
        Signal(service="payments", name="health", value=0.0, baseline=1.0, score=10.0, detail="down")
    )
    assert unsupported("dependency_down", quiet, table, toolbox) == ""


def _redeploy_telemetry(tb: Toolbox, peer_attr: bool) -> None:
    """A bad deploy of payments as a container redeploy recorded it: payments is unreachable for 2 s (no
    telemetry, checkout's calls to it refused), then serves the bad release; checkout's errors begin first."""
    store = local_store(tb.telemetry)
    began = NOW - 3.5  # the analyst reads it early, as the worker does, 3.5 s after the redeploy began
    gap = (began, began + 2.0)
    rng = random.Random(7)
    batch = []
    t = T0
    while t <= NOW:
        for name, normal in NORMAL.items():
            for service in TOPOLOGY:
                value = normal * (1 + rng.uniform(-0.05, 0.05)) if normal else 0.0
                if service == "payments" and gap[0] <= t < gap[1]:
                    continue  # down: it writes nothing
                if name == "error_ratio" and t >= began + (0.5 if service == "frontend" else 0.0):
                    value = {"payments": 0.6, "checkout": 0.9, "frontend": 0.9}[service]
                batch.append((name, {"service": service}, value, t))
        t += 0.5
    store.write_metrics(batch)
    spans = []
    for i in range(24):
        start = began + i * 0.1
        refused = start < gap[1]
        ids = [f"r{i}-frontend", f"r{i}-checkout", f"r{i}-call", f"r{i}-payments"]
        spans += [
            Span(
                trace_id=f"r{i}",
                span_id=ids[0],
                service="frontend",
                name="GET /buy",
                start=start,
                duration_ms=8,
                status="error",
            ),
            Span(
                trace_id=f"r{i}",
                span_id=ids[1],
                parent_id=ids[0],
                service="checkout",
                name="GET /checkout",
                start=start,
                duration_ms=6,
                status="error",
            ),
            Span(
                trace_id=f"r{i}",
                span_id=ids[2],
                parent_id=ids[1],
                service="checkout",
                name="call payments",
                start=start,
                duration_ms=2,
                status="error",
                attrs={"peer.service": "payments"} if peer_attr else {},
            ),
        ]
        if not refused:  # the call reached payments, whose bad release failed it
            spans.append(
                Span(
                    trace_id=f"r{i}",
                    span_id=ids[3],
                    parent_id=ids[2],
                    service="payments",
                    name="GET /pay",
                    start=start,
                    duration_ms=1,
                    status="error",
                )
            )
    store.write_spans(spans)


@pytest.mark.parametrize("peer_attr", [True, False])
def test_a_redeploy_gap_is_blamed_on_the_redeployed_service_not_its_caller(
    tmp_path: Path, peer_attr: bool
) -> None:
    """While a redeployed dependency restarts, its callers fail first and are the deepest error spans.

    Calls that never reached payments name it (`peer.service`) and date its trouble; without that attribute (the
    services before it was added) checkout looked like the origin that deviated first, and was restarted.
    """
    tb = make_toolbox(tmp_path, FakeRuntime.up(TOPOLOGY), FakeHealth())
    assert isinstance(tb.clock, ManualClock)
    tb.clock.t = NOW - 4  # committed, then applied: the restart begins half a second later
    assert isinstance(tb.gitops, LocalGitOps)
    tb.gitops.commit_config("payments", {"version": "2.0.0-rc1"}, "Deploy payments 2.0.0-rc1", kind="deploy")
    tb.clock.t = NOW
    _redeploy_telemetry(tb, peer_attr)
    diagnosis = analyst(tb).diagnose(observe(tb))
    assert diagnosis.top is not None
    if not peer_attr:
        assert diagnosis.top.service == "checkout", "the scenario no longer reproduces the old misattribution"
        return
    assert (diagnosis.top.service, diagnosis.top.fault_type) == ("payments", "bad_deploy")
    checkout = next(h for h in diagnosis.hypotheses if h.service == "checkout")
    assert any(e.kind == "topology" and e.weight < 0 and e.ref == "payments" for e in checkout.evidence)
    assert not any(e.ref == "onset" for e in checkout.evidence), (
        "payments' trouble began when its calls were refused"
    )


def test_unreached_calls_are_the_callees_failures(tmp_path: Path) -> None:
    """`trace_origins` gives a failed call that left no callee span to the callee, dated by the call."""
    from agents.detection.window import Windows, trace_origins

    store = LocalTelemetryStore(tmp_path / "t.db")
    store.write_spans(
        [
            Span(
                trace_id="a",
                span_id="a1",
                service="checkout",
                name="GET /checkout",
                start=FAULT_AT + 2,
                duration_ms=3,
                status="error",
            ),
            Span(
                trace_id="a",
                span_id="a2",
                parent_id="a1",
                service="checkout",
                name="call payments",
                start=FAULT_AT + 2,
                duration_ms=1,
                status="error",
                attrs={"peer.service": "payments"},
            ),
            Span(
                trace_id="b",
                span_id="b1",
                service="checkout",
                name="GET /checkout",
                start=FAULT_AT + 1,
                duration_ms=3,
                status="error",
            ),
            Span(
                trace_id="b",
                span_id="b2",
                parent_id="b1",
                service="checkout",
                name="call payments",
                start=FAULT_AT + 1,
                duration_ms=1,
                status="error",
                attrs={"peer.service": "payments"},
            ),
            # Reached, and failed by checkout's own handler after payments answered: checkout's error.
            Span(
                trace_id="c",
                span_id="c1",
                service="checkout",
                name="GET /checkout",
                start=FAULT_AT + 3,
                duration_ms=3,
                status="error",
            ),
            Span(
                trace_id="c",
                span_id="c2",
                parent_id="c1",
                service="checkout",
                name="call payments",
                start=FAULT_AT + 3,
                duration_ms=1,
                status="ok",
                attrs={"peer.service": "payments"},
            ),
            Span(
                trace_id="c",
                span_id="c3",
                parent_id="c2",
                service="payments",
                name="GET /pay",
                start=FAULT_AT + 3,
                duration_ms=1,
                status="ok",
            ),
        ]
    )
    found = trace_origins(store, Windows(T0, FAULT_AT, FAULT_AT, NOW))
    assert found.origins == {"payments": 2, "checkout": 1}
    assert found.unreached == {"payments": FAULT_AT + 1}
    assert "payments" in found.edges["checkout"]


def test_a_wobble_on_a_flat_quiet_service_is_not_ranker_evidence(tmp_path: Path) -> None:
    """checkout leaks; payments' latency is flat at 5.14 ms but reads 8.3 ms once and its CPU moves 1.7 → 2.2 %.

    Without the metrics' floors the ranker read that as z ≈ 12 on payments, whose evidence then made the leaking
    checkout "a symptom" of it (a demo run on containers escalated `unknown on payments`).
    """
    tb = make_toolbox(tmp_path, FakeRuntime.up(TOPOLOGY), FakeHealth())
    write_series(tb.telemetry, "checkout", leak_mb_s=40)
    write_series(tb.telemetry, "frontend")
    batch = []
    t = T0
    while t <= NOW:
        late = t >= NOW - 5
        batch += [
            ("request_rate", {"service": "payments"}, 15.0, t),
            ("error_ratio", {"service": "payments"}, 0.0, t),
            ("latency_p95_ms", {"service": "payments"}, 8.3 if abs(t - (NOW - 3)) < 0.01 else 5.14, t),
            ("memory_rss_mb", {"service": "payments"}, 45.2, t),
            ("cpu_percent", {"service": "payments"}, 2.2 if late else 1.7, t),
        ]
        t += 0.5
    local_store(tb.telemetry).write_metrics(batch)
    diagnosis = analyst(tb).diagnose(observe(tb))
    assert diagnosis.top is not None
    assert (diagnosis.top.service, diagnosis.top.fault_type) == ("checkout", "memory_leak")
    payments = [h for h in diagnosis.hypotheses if h.service == "payments"]
    assert not payments or not any(e.ref == "ranker" for e in payments[0].evidence)

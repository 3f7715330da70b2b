"""`sregraph dataset convert` on tiny synthetic Nezha and PetShop folders, and on the shared real data."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evals.rca_convert import convert_nezha, convert_petshop, petshop_fault_type
from sregraph.dataset_cli import dataset
from tests.data import SHARED_DATA
from tests.fixtures.nezha import write_day
from tools.base import ConfigError

SHARED = SHARED_DATA
INPUTS = (
    "case.json",
    "metrics.csv",
    "normal.csv",
    "metrics_meta.csv",
    "topology.csv",
    "spans.csv",
    "logs.csv",
)


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def inputs_of(case: Path) -> dict[str, bytes]:
    """Every file of a case except label.json, by name."""
    return {p.name: p.read_bytes() for p in sorted(case.iterdir()) if p.name != "label.json"}


# ----------------------------------------------------------------------------- a TrainTicket-like Nezha day

DAY = "2023-01-29"
T0 = 1674979200  # 2023-01-29 08:00:00 UTC
PODS = {
    "ts-ui-dashboard": "ts-ui-dashboard-5477b965f-2chkr",
    "ts-gateway-service": "ts-gateway-service-6f6cfc45b-h5m2n",
    "ts-contacts-service": "ts-contacts-service-866bd68c97-xcqfx",
}
POD_COLUMNS = [
    "Time", "TimeStamp", "PodName", "CpuUsageRate(%)", "MemoryUsage(Mi)", "PodServerLatencyP90(s)",
    "PodServerLatencyP95(s)", "PodServerLatencyP99(s)", "PodWorkload(Ops)", "PodSuccessRate(%)",
    "NodeCpuUsageRate(%)", "SyscallRead", "Mystery(x)",
]  # fmt: skip
FAULT_1, FAULT_2 = T0 + 20 * 60 + 30, T0 + 30 * 60 + 30  # 08:20:30 return, 08:30:30 cpu_contention


def go_time(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + ".043078357 +0000 UTC m=+0.119240217"


def latency(minute: int) -> str:
    return f"0.{100 + minute}"


def write_tt_day(root: Path) -> Path:
    """Two hours of three pods, the entry view (equal to ts-ui-dashboard's latency), spans and logs."""
    day = root / "rca_data" / DAY
    metric = day / "metric"
    metric.mkdir(parents=True)
    for service, pod in PODS.items():
        with (metric / f"{pod}_metric.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(POD_COLUMNS)
            for m in range(120):
                ts = T0 + m * 60 + 10
                lat = latency(m) if service == "ts-ui-dashboard" else "0.05"
                cpu = "" if (service, m) == ("ts-gateway-service", 15) else f"{m}.5"
                mem = "NaN" if (service, m) == ("ts-gateway-service", 16) else "300"
                # a wrong TimeStamp is ignored
                stamp = ts + 28_800 if service == "ts-contacts-service" else ts
                w.writerow([go_time(ts), stamp, pod, cpu, mem, lat, lat, lat, "2", "0", "40", "7", "1"])
    with (metric / "front_service.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "Time",
                "TimeStamp",
                "ServiceName",
                "SuccessRate(%)",
                "LatencyP50(s)",
                "LatencyP90(s)",
                "LatencyP95(s)",
                "LatencyP99(s)",
            ]
        )
        for m in range(120):
            w.writerow(
                [
                    go_time(T0 + m * 60 + 9),
                    T0 + m * 60 + 9,
                    "Frontend",
                    "0",
                    "0.01",
                    latency(m),
                    latency(m),
                    latency(m),
                ]
            )
    contacts, early = PODS["ts-contacts-service"], str(FAULT_1 - 28_800)
    faults = {
        "08": [  # the first inject_timestamp is 8 hours early, as on the real day; inject_time counts
            {"inject_time": f"{DAY} 08:20:30", "inject_timestamp": early, "inject_pod": contacts,
             "inject_type": "return"},
            {"inject_time": f"{DAY} 08:30:30", "inject_timestamp": str(FAULT_2), "inject_pod": contacts,
             "inject_type": "cpu_contention"},
        ]
    }  # fmt: skip
    (day / f"{DAY}-fault_list.json").write_text(json.dumps(faults))
    trace_header = (
        "TraceID,SpanID,ParentID,PodName,OperationName,StartTimeUnixNano,EndTimeUnixNano,Duration\n"
    )
    s1 = (T0 + 21 * 60) * 10**9
    root_span = f"t1,a,root,{PODS['ts-gateway-service']},/*,{s1},{s1 + 9_000_000},9000\n"
    child_span = f"t1,b,a,{PODS['ts-contacts-service']},GET /contacts,{s1 + 2000},{s1 + 5_002_000},5000\n"
    late = (T0 + 33 * 60) * 10**9  # 08:33:00: in the second case's window only
    (day / "trace").mkdir()
    (day / "trace" / "08_21_trace.csv").write_text(trace_header + root_span + child_span)
    (day / "trace" / "08_22_trace.csv").write_text(trace_header + child_span)  # the files overlap
    (day / "trace" / "08_33_trace.csv").write_text(
        trace_header + f"t2,c,root,{PODS['ts-gateway-service']},/*,{late},{late + 1_000_000},1000\n"
    )
    (day / "log").mkdir()
    for name, lines in {
        "08_21_log.csv": [
            (
                s1 + 3_123_456_789,
                "ts-contacts-service",
                "16:21:03.123 ERROR c.ContactsController - contact not found",
            )
        ],
        "08_22_log.csv": [
            (
                s1 + 3_123_456_789,
                "ts-contacts-service",
                "16:21:03.123 ERROR c.ContactsController - contact not found",
            ),
            (s1 + 4_000_000_000, "ts-gateway-service", "16:21:04.000  WARN g.Filter - slow upstream"),
        ],
    }.items():
        with (day / "log" / name).open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(
                ["Timestamp", "TimeUnixNano", "Node", "PodName", "Container", "TraceID", "SpanID", "Log"]
            )
            for ns, service, text in lines:
                envelope = json.dumps({"log": text + "\n", "stream": "stdout", "time": "x"})
                w.writerow(["x", ns, "33.33.33.1", PODS[service], "server", "t1", "b", envelope])
    return day


NORMAL_NS = (T0 + 5 * 60) * 10**9  # 08:05:00, before either fault


def write_construct_minute(root: Path) -> Path:
    """The authors' fault-free reference beside rca_data: one minute of traces and logs, a repeated span and line."""
    ref = root / "construct_data" / DAY
    (ref / "trace").mkdir(parents=True)
    (ref / "log").mkdir()
    header = "TraceID,SpanID,ParentID,PodName,OperationName,StartTimeUnixNano,EndTimeUnixNano,Duration\n"
    spans = (
        f"n1,r,root,{PODS['ts-gateway-service']},/*,{NORMAL_NS},{NORMAL_NS + 4_000_000},4000\n"
        f"n1,c,r,{PODS['ts-contacts-service']},GET /contacts,{NORMAL_NS + 1000},{NORMAL_NS + 2_001_000},2000\n"
    )
    (ref / "trace" / "08_05_trace.csv").write_text(header + spans + spans.splitlines(keepends=True)[1])
    with (ref / "log" / "08_05_log.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Timestamp", "TimeUnixNano", "Node", "PodName", "Container", "TraceID", "SpanID", "Log"])
        line = {
            "log": "16:05:00.500 INFO c.ContactsController - contact found\n",
            "stream": "stdout",
            "time": "x",
        }
        for _ in range(2):
            w.writerow(["x", NORMAL_NS + 500_000_000, "33.33.33.1", PODS["ts-contacts-service"], "server", "n1", "c",
                        json.dumps(line)])  # fmt: skip
        other = {
            "log": "16:05:01.000 ERROR b.BasicService - station missing\n",
            "stream": "stdout",
            "time": "x",
        }
        w.writerow(["x", NORMAL_NS + 1_000_000_000, "33.33.33.1", "ts-basic-service-5c9b6d7f4-abcde", "server", "n1",
                    "c", json.dumps(other)])  # fmt: skip
    return ref


@pytest.fixture
def tt_day(tmp_path: Path) -> Path:
    return write_tt_day(tmp_path / "src")


def test_nezha_day_becomes_cases_with_exact_files(tt_day: Path, tmp_path: Path) -> None:
    [result] = convert_nezha(tmp_path / "src", tmp_path / "out")
    assert (result.name, result.cases) == (f"nezha-tt {DAY}", 2)
    assert result.bytes == sum(p.stat().st_size for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "nezha-tt-2023-01-29-082030",
        "nezha-tt-2023-01-29-083030",
    ]
    case = tmp_path / "out" / "nezha-tt-2023-01-29-082030"
    assert sorted(p.name for p in case.iterdir()) == sorted([*INPUTS, "label.json"])
    assert json.loads((case / "case.json").read_text()) == {
        "id": case.name,
        "system": "nezha-tt",
        "anomaly_start": float(FAULT_1),
    }
    assert json.loads((case / "label.json").read_text()) == {
        "root_cause": "ts-contacts-service",
        "fault_type": "error",
    }
    second = json.loads((tmp_path / "out" / "nezha-tt-2023-01-29-083030" / "label.json").read_text())
    assert second == {"root_cause": "ts-contacts-service", "fault_type": "cpu"}

    metrics = rows(case / "metrics.csv")
    # Rows stamped by Time (second 10 of each minute) inside [start - 600, start + 180]: minutes 11 to 23.
    stamps = sorted({int(r["timestamp"]) for r in metrics})
    assert stamps[0] == T0 + 11 * 60 + 9 and stamps[-1] == T0 + 23 * 60 + 10
    assert {int(r["timestamp"]) for r in metrics if r["service"] == "ts-contacts-service"} == {
        T0 + m * 60 + 10 for m in range(11, 24)
    }
    # 10 metric columns (constant and unknown ones included) x 3 pods x 13 minutes, less one empty and one NaN
    # cell; the entry view's 5 columns x 13 minutes go to ts-ui-dashboard, without an instance.
    assert len(metrics) == 10 * 3 * 13 - 2 + 5 * 13
    assert {r["service"] for r in metrics} == set(PODS)
    pods = {(r["service"], r["instance"]) for r in metrics}
    assert pods == {*PODS.items(), ("ts-ui-dashboard", "")}
    row = next(
        r
        for r in metrics
        if r["service"] == "ts-contacts-service"
        and r["metric"] == "CpuUsageRate(%)"
        and r["timestamp"] == str(T0 + 21 * 60 + 10)
    )
    assert row == {
        "timestamp": str(T0 + 21 * 60 + 10),
        "service": "ts-contacts-service",
        "metric": "CpuUsageRate(%)",
        "value": "21.5",
        "instance": PODS["ts-contacts-service"],
    }
    entry = [r for r in metrics if r["instance"] == ""]
    assert {r["metric"] for r in entry} == {
        "SuccessRate(%)",
        "LatencyP50(s)",
        "LatencyP90(s)",
        "LatencyP95(s)",
        "LatencyP99(s)",
    }
    assert not any(
        r["timestamp"] == str(T0 + 15 * 60 + 10)
        and r["metric"] == "CpuUsageRate(%)"
        and r["service"] == "ts-gateway-service"
        for r in metrics
    )

    # normal.csv: the faults ban (08:10:30, 08:43:30); the stretch after it starts with the entry view's
    # 08:44:09 row and is capped an hour later, at 09:44:09: 61 entry rows, 60 rows per pod (08:44:10 to
    # 09:43:10).
    normal = rows(case / "normal.csv")
    normal_stamps = sorted({int(r["timestamp"]) for r in normal})
    assert normal_stamps[0] == T0 + 44 * 60 + 9 and normal_stamps[-1] == T0 + 104 * 60 + 9
    assert len(normal) == 10 * 3 * 60 + 5 * 61
    assert (case / "normal.csv").read_bytes() == (
        tmp_path / "out" / "nezha-tt-2023-01-29-083030" / "normal.csv"
    ).read_bytes()

    meta = {r["metric"]: (r["kind"], r["direction"]) for r in rows(case / "metrics_meta.csv")}
    # Mystery(x) is not a known column: no kind is made up for it
    assert meta == {
        "CpuUsageRate(%)": ("cpu", "up"),
        "MemoryUsage(Mi)": ("memory", "up"),
        "PodServerLatencyP90(s)": ("latency", "up"),
        "PodServerLatencyP95(s)": ("latency", "up"),
        "PodServerLatencyP99(s)": ("latency", "up"),
        "PodWorkload(Ops)": ("traffic", "both"),
        "PodSuccessRate(%)": ("errors", "down"),
        "NodeCpuUsageRate(%)": ("saturation", "up"),
        "SyscallRead": ("other", "both"),
        "SuccessRate(%)": ("errors", "down"),
        "LatencyP50(s)": ("latency", "up"),
        "LatencyP90(s)": ("latency", "up"),
        "LatencyP95(s)": ("latency", "up"),
        "LatencyP99(s)": ("latency", "up"),
    }

    # Spans in the window, the repeated one once; 08:33:00 is past this case's end (08:23:30).
    s1 = (T0 + 21 * 60) * 10**6
    assert [tuple(r.values()) for r in rows(case / "spans.csv")] == [
        ("t1", "a", "", "ts-gateway-service", "/*", str(s1), "9000", ""),
        ("t1", "b", "a", "ts-contacts-service", "GET /contacts", str(s1 + 2), "5000", ""),
    ]
    assert rows(case / "topology.csv") == [{"caller": "ts-gateway-service", "callee": "ts-contacts-service"}]
    assert [tuple(r.values()) for r in rows(case / "logs.csv")] == [
        (
            f"{T0 + 21 * 60 + 3}.123456",
            "ts-contacts-service",
            "error",
            "16:21:03.123 ERROR c.ContactsController - contact not found",
        ),
        (
            f"{T0 + 21 * 60 + 4}.000000",
            "ts-gateway-service",
            "warn",
            "16:21:04.000  WARN g.Filter - slow upstream",
        ),
    ]
    later = tmp_path / "out" / "nezha-tt-2023-01-29-083030"
    assert [r["trace_id"] for r in rows(later / "spans.csv")] == ["t1", "t1", "t2"]


@pytest.mark.parametrize("from_day", [False, True])
def test_nezha_construct_data_becomes_normal_logs_and_spans(
    tt_day: Path, tmp_path: Path, from_day: bool
) -> None:
    """construct_data/<day>/{trace,log} go into every case of the day, parsed as the case's own spans and logs."""
    convert_nezha(tt_day, tmp_path / "plain")  # before the reference is there
    write_construct_minute(tmp_path / "src")
    convert_nezha(tt_day if from_day else tmp_path / "src", tmp_path / "out")
    cases = sorted((tmp_path / "out").iterdir())
    assert len(cases) == 2
    first = cases[0]
    assert sorted(p.name for p in first.iterdir()) == sorted(
        [*INPUTS, "label.json", "normal_spans.csv", "normal_logs.csv"]
    )
    n = NORMAL_NS // 1000
    # the repeated span once, "root" as no parent, the pod as its service
    assert [tuple(r.values()) for r in rows(first / "normal_spans.csv")] == [
        ("n1", "r", "", "ts-gateway-service", "/*", str(n), "4000", ""),
        ("n1", "c", "r", "ts-contacts-service", "GET /contacts", str(n + 1), "2000", ""),
    ]
    # the repeated line once, level and text out of Docker's envelope
    assert [tuple(r.values()) for r in rows(first / "normal_logs.csv")] == [
        (
            f"{T0 + 5 * 60}.500000",
            "ts-contacts-service",
            "info",
            "16:05:00.500 INFO c.ContactsController - contact found",
        ),
        (
            f"{T0 + 5 * 60 + 1}.000000",
            "ts-basic-service",
            "error",
            "16:05:01.000 ERROR b.BasicService - station missing",
        ),
    ]
    for name in ("normal_spans.csv", "normal_logs.csv"):
        assert (first / name).read_bytes() == (cases[1] / name).read_bytes()
    # The window's own spans and logs are what they were without the reference.
    plain = tmp_path / "plain" / first.name
    for name in INPUTS:
        assert (first / name).read_bytes() == (plain / name).read_bytes()
    assert not (plain / "normal_spans.csv").exists() and not (plain / "normal_logs.csv").exists()

    from evals.rca_case import load_case

    inp = load_case(first).input
    assert [(s.service, s.start, s.duration) for s in inp.normal_spans] == [
        ("ts-gateway-service", n / 1e6, 0.004),
        ("ts-contacts-service", (n + 1) / 1e6, 0.002),
    ]
    assert [(r.service, r.level) for r in inp.normal_logs] == [
        ("ts-contacts-service", "info"),
        ("ts-basic-service", "error"),
    ]
    assert "ts-basic-service" not in inp.services  # the reference names no candidates
    assert load_case(plain).input.normal_logs == [] and load_case(plain).input.normal_spans == []


def test_nezha_labels_never_reach_the_inputs(tt_day: Path, tmp_path: Path) -> None:
    """Another root cause and fault type in the fault list change label.json and nothing else."""
    convert_nezha(tt_day, tmp_path / "honest")
    path = tt_day / f"{DAY}-fault_list.json"
    faults = json.loads(path.read_text())
    for fault in faults["08"]:
        fault.update(inject_pod=PODS["ts-gateway-service"], inject_type="network_delay")
    path.write_text(json.dumps(faults))
    convert_nezha(tt_day, tmp_path / "relabelled")
    for case in sorted((tmp_path / "honest").iterdir()):
        other = tmp_path / "relabelled" / case.name
        assert inputs_of(case) == inputs_of(other)
        assert json.loads((other / "label.json").read_text()) == {
            "root_cause": "ts-gateway-service",
            "fault_type": "latency",
        }
        for name, data in inputs_of(case).items():
            assert b"cpu_contention" not in data and b"inject" not in data, name
        assert set(json.loads((case / "case.json").read_text())) == {"id", "system", "anomaly_start"}


def test_onlineboutique_day_entry_topology_and_no_normal(tmp_path: Path) -> None:
    """tests/test_nezha's day: frontend is the entry, dependency.csv loses IPs and loadgenerator."""
    write_day(tmp_path / "ob", traces=True)
    [result] = convert_nezha(tmp_path / "ob" / "rca_data", tmp_path / "out", meta=False)
    assert result.cases == 4 and any("-> frontend" in n for n in result.notes)
    case = tmp_path / "out" / "nezha-ob-2022-08-22-102030"
    # Four faults ten minutes apart leave no fault-free 10 minutes in the hour: no normal.csv; --no-meta.
    assert sorted(p.name for p in case.iterdir()) == [
        "case.json",
        "edge_metrics.csv",
        "label.json",
        "logs.csv",
        "metrics.csv",
        "spans.csv",
        "topology.csv",
    ]
    # source_50.csv is the client side of each call edge; an empty cell (a minute with no call) is no point.
    edge_rows = rows(case / "edge_metrics.csv")
    assert {(r["caller"], r["callee"], r["side"], r["metric"]) for r in edge_rows} == {
        ("frontend", "checkoutservice", "client", "latency_p50"),
        ("checkoutservice", "paymentservice", "client", "latency_p50"),
        ("frontend", "adservice", "client", "latency_p50"),
    }
    assert all(r["value"] for r in edge_rows)
    assert json.loads((case / "label.json").read_text()) == {
        "root_cause": "checkoutservice",
        "fault_type": "latency",
    }
    edges = {(r["caller"], r["callee"]) for r in rows(case / "topology.csv")}
    assert edges == {
        ("frontend", "checkoutservice"),
        ("checkoutservice", "paymentservice"),
        ("frontend", "adservice"),
    }
    metrics = rows(case / "metrics.csv")
    assert {r["service"] for r in metrics} == {"frontend", "checkoutservice", "paymentservice", "adservice"}
    start = 1661162400 + 20 * 60 + 30
    # adservice's TimeStamp column is 200,000,000 s off; its rows are still inside the window.
    assert all(start - 600 <= int(r["timestamp"]) <= start + 180 for r in metrics)
    assert len({r["timestamp"] for r in metrics if r["service"] == "adservice"}) == 13
    labels = {json.loads((c / "label.json").read_text())["fault_type"] for c in (tmp_path / "out").iterdir()}
    assert labels == {"cpu", "latency", "error"}


def test_existing_cases_are_replaced_whole(tt_day: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    stale = out / "nezha-tt-2023-01-29-082030"
    stale.mkdir(parents=True)
    (stale / "old.txt").write_text("from an earlier run")
    (out / "unrelated").mkdir()
    convert_nezha(tt_day, out)
    assert not (stale / "old.txt").exists() and (stale / "case.json").exists()
    assert (out / "unrelated").is_dir()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporary folder left


def test_nezha_bad_input_fails_before_writing(tt_day: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no Nezha day folder"):
        convert_nezha(tt_day / "metric", tmp_path / "a")
    with pytest.raises(ConfigError, match="not a folder"):
        convert_nezha(tmp_path / "missing", tmp_path / "b")
    (tt_day / f"{DAY}-fault_list.json").write_text("{}")
    with pytest.raises(ConfigError, match="no faults"):
        convert_nezha(tt_day, tmp_path / "c")
    assert not any((tmp_path / n).exists() for n in "abc")


# ----------------------------------------------------------------------------- PetShop

NODES = ["PetSite", "PetSearch_AWS::ECS::Fargate", "petInfo_AWS::DynamoDB::Table"]
ISSUE_T0 = 1681857120
COMMANDS = {
    ("test", "issue_0"): "aws ssm put-parameter --name '/petstore/searchdelay' --value '1000' --overwrite",
    ("test", "issue_1"): "python -m issue_dynamo_db_requests -num_iterations=800",
    ("train", "issue_0"): "aws ssm put-parameter --name '/petstore/errormode1' --value 'true' --overwrite",
}
ROOTS = {("test", "issue_0"): NODES[1], ("test", "issue_1"): NODES[2], ("train", "issue_0"): NODES[1]}


def write_petshop_metrics(path: Path, t0: int, steps: int, scale: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = [
        (n, m, s)
        for m, s in (
            ("latency", "Average"),
            ("latency", "p90"),
            ("requests", "Sum"),
            ("availability", "Average"),
        )
        for n in NODES
    ]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["microservice", *[c[0] for c in columns]])
        w.writerow(["metric", *[c[1] for c in columns]])
        w.writerow(["statistic", *[c[2] for c in columns]])
        w.writerow(["unix_timestamp", *[""] * len(columns)])
        for k in range(steps):
            cells = [f"{scale * (i + 1) + k}" for i in range(len(columns))]
            cells[0] = "" if k == 1 else cells[0]  # PetSite latency_Average missing once
            w.writerow([f"{t0 + 300 * k}.0", *cells])


def write_petshop(root: Path) -> Path:
    traffic = root / "dataset" / "low_traffic"
    traffic.mkdir(parents=True)
    calls = {("PetSite", NODES[1]), (NODES[1], NODES[2])}  # row = caller, column = callee
    matrix = [["", *NODES]] + [[a, *["1.0" if (a, b) in calls else "0.0" for b in NODES]] for a in NODES]
    with (traffic / "graph.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(matrix)
    write_petshop_metrics(traffic / "noissue" / "metrics.csv", 1692608400, 4, 0.5)
    for (split, issue), command in COMMANDS.items():
        write_petshop_metrics(traffic / split / issue / "metrics.csv", ISSUE_T0, 5, 1.0)
        target = {
            "target": {"node": "PetSite", "metric": "latency", "agg": "Average", "timestamp": ISSUE_T0 + 485},
            "root_cause": {"node": ROOTS[(split, issue)], "metric": None},
            "metadata": {"reproducibility": {"command": command}},
        }
        (traffic / split / issue / "target.json").write_text(json.dumps(target))
    return root


@pytest.fixture
def petshop(tmp_path: Path) -> Path:
    return write_petshop(tmp_path / "petshop")


def test_petshop_issues_become_cases(petshop: Path, tmp_path: Path) -> None:
    [result] = convert_petshop(petshop, tmp_path / "out")
    assert (result.name, result.cases) == ("petshop low_traffic", 3)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [
        "petshop-low_traffic-test-issue_0",
        "petshop-low_traffic-test-issue_1",
        "petshop-low_traffic-train-issue_0",
    ]
    case = tmp_path / "out" / "petshop-low_traffic-test-issue_0"
    assert sorted(p.name for p in case.iterdir()) == [
        "case.json",
        "label.json",
        "metrics.csv",
        "metrics_meta.csv",
        "normal.csv",
        "topology.csv",
    ]
    assert json.loads((case / "case.json").read_text()) == {
        "id": "petshop-low_traffic-test-issue_0",
        "system": "petshop",
        "subset": "low_traffic/test",
        "anomaly_start": float(ISSUE_T0 + 485),
        "symptom": {"service": "PetSite", "metric": "latency_Average"},
    }
    assert json.loads((case / "label.json").read_text()) == {"root_cause": NODES[1], "fault_type": "latency"}
    fault_types = [json.loads((tmp_path / "out" / n / "label.json").read_text())["fault_type"] for n in names]
    assert fault_types == ["latency", "other", "error"]

    metrics = rows(case / "metrics.csv")
    assert len(metrics) == 5 * 12 - 1  # every cell of 5 rows x 12 columns but the empty one
    assert metrics[0] == {
        "timestamp": str(ISSUE_T0),
        "service": "PetSite",
        "metric": "latency_Average",
        "value": "1.0",
        "instance": "",
    }
    assert {
        (r["service"], r["metric"], r["value"]) for r in metrics if r["timestamp"] == str(ISSUE_T0 + 600)
    } >= {
        ("petInfo_AWS::DynamoDB::Table", "availability_Average", "14.0"),
        (NODES[1], "requests_Sum", "10.0"),
    }
    assert not any(
        r["timestamp"] == str(ISSUE_T0 + 300)
        and r["service"] == "PetSite"
        and r["metric"] == "latency_Average"
        for r in metrics
    )
    normal = rows(case / "normal.csv")
    assert (
        len(normal) == 4 * 12 - 1 and normal[0]["timestamp"] == "1692608400" and normal[0]["value"] == "0.5"
    )
    assert normal[-1] == {
        "timestamp": str(1692608400 + 900),
        "service": NODES[2],
        "metric": "availability_Average",
        "value": "9.0",
        "instance": "",
    }
    meta = [tuple(r.values()) for r in rows(case / "metrics_meta.csv")]
    assert meta == [
        ("availability_Average", "errors", "down"),
        ("latency_Average", "latency", "up"),
        ("latency_p90", "latency", "up"),
        ("requests_Sum", "traffic", "both"),
    ]


def test_petshop_graph_rows_call_columns(petshop: Path, tmp_path: Path) -> None:
    """graph.csv's row is the caller: PetSite, the entry, calls and is never called."""
    convert_petshop(petshop / "dataset" / "low_traffic", tmp_path / "out")
    edges = [
        tuple(r.values())
        for r in rows(tmp_path / "out" / "petshop-low_traffic-test-issue_1" / "topology.csv")
    ]
    assert edges == [
        ("PetSearch_AWS::ECS::Fargate", "petInfo_AWS::DynamoDB::Table"),
        ("PetSite", "PetSearch_AWS::ECS::Fargate"),
    ]


def test_petshop_label_never_reaches_the_inputs(petshop: Path, tmp_path: Path) -> None:
    convert_petshop(petshop, tmp_path / "honest")
    for split, issue in COMMANDS:
        path = petshop / "dataset" / "low_traffic" / split / issue / "target.json"
        target = json.loads(path.read_text())
        target["root_cause"]["node"] = "PetSite"
        target["metadata"]["reproducibility"]["command"] = "stress --cpu 8 # cpu hog"
        path.write_text(json.dumps(target))
    convert_petshop(petshop, tmp_path / "relabelled")
    for case in sorted((tmp_path / "honest").iterdir()):
        other = tmp_path / "relabelled" / case.name
        assert inputs_of(case) == inputs_of(other)
        assert json.loads((other / "label.json").read_text()) == {
            "root_cause": "PetSite",
            "fault_type": "cpu",
        }
        for name, data in inputs_of(case).items():
            for word in (b"ssm", b"searchdelay", b"errormode", b"issue_dynamo", b"root_cause", b"command"):
                assert word not in data, (name, word)


def test_petshop_fault_type_from_the_command() -> None:
    assert petshop_fault_type("python cpu_hog.py --cores 2") == "cpu"
    assert petshop_fault_type("python -m memory_leak --mb 50") == "memory"
    assert (
        petshop_fault_type("aws ssm put-parameter --name '/petstore/delaymode1' --value '250'") == "latency"
    )
    assert (
        petshop_fault_type("sed -E -i 's/sleep\\(([0-9]+)/sleep(500/g' index.js && cdk deploy") == "latency"
    )
    assert (
        petshop_fault_type("aws ssm put-parameter --name '/petstore/petlisterrorpercent' --value '5'")
        == "error"
    )
    assert petshop_fault_type("sed -E -i 's/inject = false/inject = true/g' index.js") == "error"
    assert petshop_fault_type("python -m issue_dynamo_db_requests -num_iterations=800") == "other"
    assert petshop_fault_type("") == "other"


def test_petshop_bad_layout_writes_nothing(petshop: Path, tmp_path: Path) -> None:
    (petshop / "dataset" / "low_traffic" / "train" / "issue_0" / "metrics.csv").unlink()
    with pytest.raises(ConfigError, match="no metrics.csv"):
        convert_petshop(petshop, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="no PetShop traffic folder"):
        convert_petshop(tmp_path, tmp_path / "out")


def test_cli_convert_and_errors(petshop: Path, tt_day: Path, tmp_path: Path) -> None:
    from sregraph.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["dataset", "convert", "petshop", str(petshop), str(tmp_path / "ps")])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("petshop low_traffic: 3 cases, ") and " bytes (" in out.output
    out = runner.invoke(
        dataset, ["convert", "nezha", str(tt_day), str(tmp_path / "nz"), "--no-meta", "--notes"]
    )
    assert out.exit_code == 0, out.output
    assert "nezha-tt 2023-01-29: 2 cases" in out.output and "-> ts-ui-dashboard" in out.output
    assert not list((tmp_path / "nz").rglob("metrics_meta.csv")) and list(
        (tmp_path / "ps").rglob("metrics_meta.csv")
    )
    for args in (["nezha", str(petshop)], ["petshop", str(tmp_path / "missing")], ["oracle", str(petshop)]):
        bad = runner.invoke(dataset, ["convert", *args, str(tmp_path / "bad")])
        assert bad.exit_code == 2 and "error:" in bad.output, args
    assert not (tmp_path / "bad").exists()


# ----------------------------------------------------------------------------- the shared real data


@pytest.mark.skipif(
    not (SHARED / "nezha-ob").is_dir() or not (SHARED / "petshop").is_dir(),
    reason=f"the shared datasets are not at {SHARED} (set SREGRAPH_SHARED_DATA)",
)
def test_real_nezha_ob_and_petshop(tmp_path: Path) -> None:
    [ob] = convert_nezha(SHARED / "nezha-ob", tmp_path / "ob")
    assert (ob.name, ob.cases) == ("nezha-ob 2022-08-22", 24)
    services = set()
    for case in sorted((tmp_path / "ob").iterdir()):
        metrics = rows(case / "metrics.csv")
        services |= {r["service"] for r in metrics}
        label = json.loads((case / "label.json").read_text())
        assert label["root_cause"] in services and label["fault_type"] in {"cpu", "latency", "error"}
        assert (case / "normal.csv").is_file() and (case / "topology.csv").is_file()
    assert len(services) == 10 and "Frontend" not in services and "loadgenerator" not in services

    levels = convert_petshop(SHARED / "petshop", tmp_path / "ps")
    # The README says 26 test + 8 train issues per level; the folders hold 18 + 8 per level.
    assert [(r.name, r.cases) for r in levels] == [("petshop high_traffic", 26), ("petshop low_traffic", 26)]
    for case in sorted((tmp_path / "ps").iterdir()):
        info = json.loads((case / "case.json").read_text())
        assert info["symptom"]["service"] == "PetSite" and info["subset"].split("/")[1] in ("train", "test")
        label = json.loads((case / "label.json").read_text())
        assert label["root_cause"] in {r["service"] for r in rows(case / "metrics.csv")}
        callees = {r["callee"] for r in rows(case / "topology.csv")}
        assert "PetSite" not in callees

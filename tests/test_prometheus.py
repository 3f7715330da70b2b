"""PrometheusTelemetry against a scripted Prometheus API (httpx.MockTransport): PromQL, parsing, errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.support import ManualClock
from tools.base import Telemetry, ToolError, TransientError
from tools.prometheus import MAPPINGS, PrometheusTelemetry, matchers

BASE = "http://prom.test:9090"


class StillClock(ManualClock):
    """Time stands at 0: sleeps are recorded but move nothing, so no breaker timeout or retry window passes."""

    def __init__(self) -> None:
        super().__init__(0.0)

    def sleep(self, seconds: float) -> None:
        """Record the sleep; time does not move."""
        self.slept.append(seconds)


def api(
    handler: Callable[[httpx.Request], httpx.Response],
) -> tuple[PrometheusTelemetry, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    prom = PrometheusTelemetry(BASE, timeout_s=2, transport=httpx.MockTransport(record), clock=StillClock())
    return prom, seen


def ok(data: Any) -> httpx.Response:
    return httpx.Response(200, json={"status": "success", "data": data})


def matrix(*series: tuple[dict[str, str], list[tuple[float, str]]]) -> httpx.Response:
    return ok(
        {
            "resultType": "matrix",
            "result": [{"metric": m, "values": [[t, v] for t, v in pts]} for m, pts in series],
        }
    )


def test_is_a_telemetry_backend() -> None:
    prom, _ = api(lambda r: ok([]))
    assert isinstance(prom, Telemetry)
    assert prom.search_logs("payments", 0, 10) == []
    assert prom.spans(None, 0, 10) == []


def test_range_query_maps_the_name_and_parses_a_matrix() -> None:
    prom, seen = api(
        lambda r: matrix(
            ({"service": "payments"}, [(100.0, "0"), (101.0, "0.5"), (102.0, "NaN"), (103.0, "+Inf")]),
        )
    )
    series = prom.query_range("error_ratio", {"service": "payments"}, 100.0, 160.0)
    assert len(series) == 1
    assert series[0].name == "error_ratio"
    assert series[0].labels == {"service": "payments"}
    assert series[0].points == [(100.0, 0.0), (101.0, 0.5)]  # NaN (0/0) and Inf are dropped
    request = seen[0]
    assert request.url.path == "/api/v1/query_range"
    params = dict(request.url.params)
    assert params["start"] == "100.000" and params["end"] == "160.000" and params["step"] == "1.000"
    assert params["timeout"] == "2s"
    assert params["query"] == (
        '(sum by (service) (rate(http_requests_total{code=~"5..",service="payments"}[30s])) or '
        'sum by (service) (rate(http_requests_total{service="payments"}[30s])) * 0) / '
        'sum by (service) (rate(http_requests_total{service="payments"}[30s]))'
    )


def test_every_mapping_names_its_metrics_and_filters_them() -> None:
    prom = PrometheusTelemetry(BASE, rate_window="10s")
    expected = {
        "request_rate": 'sum by (service) (rate(http_requests_total{service="checkout"}[10s]))',
        "latency_p95_ms": "histogram_quantile(0.95, sum by (service, le) "
        '(rate(http_request_duration_seconds_bucket{service="checkout"}[10s]))) * 1000',
        "conversion_ratio": '(sum by (service) (rate(shop_purchases_total{service="checkout"}[10s])) or sum '
        'by (service) (rate(http_requests_total{handler="/buy",service="checkout"}[10s])) * 0) / sum by '
        '(service) (rate(http_requests_total{handler="/buy",service="checkout"}[10s]))',
        "memory_rss_mb": 'sum by (service) (process_resident_memory_bytes{service="checkout"}) / 1048576',
        "cpu_percent": 'sum by (service) (rate(process_cpu_seconds_total{service="checkout"}[10s])) * 100',
        "purchases_rate": 'sum by (service) (rate(shop_purchases_total{service="checkout"}[10s]))',
    }
    for name, promql in expected.items():
        assert prom.promql(name, {"service": "checkout"}) == (promql, False)
    assert set(expected) | {"error_ratio"} == set(MAPPINGS)
    assert prom.promql("request_rate", None)[0] == "sum by (service) (rate(http_requests_total[10s]))"


def test_raw_names_and_promql_pass_through() -> None:
    prom = PrometheusTelemetry(BASE)
    assert prom.promql("up", {"job": "app"}) == ('up{job="app"}', False)
    assert prom.promql("http_requests_total", None) == ("http_requests_total", False)
    expr = "sum by (service) (rate(http_requests_total[1m]))"
    assert prom.promql(expr, {"service": "x"}) == (expr, True)
    assert prom.promql(expr, None) == (expr, False)


def test_promql_expression_is_filtered_client_side() -> None:
    prom, _ = api(
        lambda r: matrix(
            ({"service": "a"}, [(10.0, "1")]), ({"service": "b"}, [(10.0, "2")]), ({"service": "c"}, [])
        )
    )
    series = prom.query_range("sum by (service) (up)", {"service": "b"}, 0.0, 100.0)
    assert [(s.labels, s.points) for s in series] == [({"service": "b"}, [(10.0, 2.0)])]
    everything = prom.query_range("sum by (service) (up)", None, 0.0, 100.0)
    assert [s.labels["service"] for s in everything] == ["a", "b"]  # empty series are left out


def test_label_values_are_escaped_and_names_checked() -> None:
    assert matchers({"service": 'a"b\\c\nd'}) == '{service="a\\"b\\\\c\\nd"}'
    assert matchers(None) == ""
    with pytest.raises(ToolError, match="not a valid Prometheus label name"):
        matchers({"bad-name": "x"})


def test_step_is_automatic_or_fixed_and_short_ranges_use_an_instant_query() -> None:
    prom, seen = api(
        lambda r: ok(
            {
                "resultType": "vector",
                "result": [{"metric": {"service": "p", "__name__": "up"}, "value": [50.0, "1"]}],
            }
        )
    )
    series = prom.query_range("up", None, 49.5, 50.0)
    assert seen[-1].url.path == "/api/v1/query"
    assert dict(seen[-1].url.params)["time"] == "50.000"
    assert series[0].labels == {"service": "p"} and series[0].points == [(50.0, 1.0)]
    assert prom.step_for(0, 10_000) == 20.0
    assert prom.step_for(0, 30) == 1.0
    assert PrometheusTelemetry(BASE, step_s=0.5).step_for(0, 10_000) == 0.5
    assert prom.query_range("up", None, 10.0, 5.0) == []


def test_instant_scalar_answer() -> None:
    prom, _ = api(lambda r: ok({"resultType": "scalar", "result": [12.0, "3"]}))
    assert prom.query("1 + 2")[0].points == [(12.0, 3.0)]


def test_bad_promql_is_a_tool_error_with_prometheus_message() -> None:
    body = {
        "status": "error",
        "errorType": "bad_data",
        "error": 'invalid parameter "query": 1:5: parse error: unexpected',
    }
    prom, seen = api(lambda r: httpx.Response(400, json=body))
    with pytest.raises(ToolError, match='bad_data: invalid parameter "query": 1:5: parse error') as info:
        prom.query_range("rate(", None, 0, 60)
    assert not isinstance(info.value, TransientError)
    assert len(seen) == 1  # a bad query is not retried


def test_execution_error_422_is_a_tool_error() -> None:
    body = {"status": "error", "errorType": "execution", "error": "many-to-many matching not allowed"}
    prom, _ = api(lambda r: httpx.Response(422, json=body))
    with pytest.raises(ToolError, match="execution: many-to-many matching not allowed \\(HTTP 422\\)"):
        prom.query("a / b")


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(503, json={"status": "error", "errorType": "unavailable", "error": "TSDB not ready"}),
        httpx.Response(503, text="Service Unavailable"),
        httpx.Response(
            200,
            json={
                "status": "error",
                "errorType": "timeout",
                "error": "query timed out in expression evaluation",
            },
        ),
    ],
)
def test_server_trouble_is_transient_and_retried(response: httpx.Response) -> None:
    prom, seen = api(lambda r: response)
    with pytest.raises(TransientError):
        prom.query("up")
    assert len(seen) == 2  # one retry
    assert isinstance(prom.clock, StillClock)
    assert prom.clock.slept == [0.2]


def test_retry_recovers() -> None:
    answers = [httpx.Response(503, text="starting"), ok({"resultType": "vector", "result": []})]
    prom, seen = api(lambda r: answers.pop(0))
    assert prom.query("up") == []
    assert len(seen) == 2


def test_timeouts_and_refused_connections_are_transient() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    prom, _ = api(timeout)
    with pytest.raises(TransientError, match="timed out after 2s"):
        prom.query("up")

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    prom, _ = api(refused)
    with pytest.raises(TransientError, match="ConnectError: \\[Errno 111\\] Connection refused"):
        prom.query_range("request_rate", None, 0, 60)


def test_unreadable_answers_are_tool_errors() -> None:
    prom, _ = api(lambda r: httpx.Response(200, text="<html>proxy login</html>"))
    with pytest.raises(ToolError, match="not a Prometheus API answer"):
        prom.query("up")
    prom, _ = api(lambda r: ok({"resultType": "string", "result": [1, "x"]}))
    with pytest.raises(ToolError, match="string results are not series"):
        prom.query('"x"')
    prom, _ = api(lambda r: ok({"resultType": "matrix", "result": [{"metric": {}, "values": [[1]]}]}))
    with pytest.raises(ToolError, match="unreadable matrix answer"):
        prom.query_range("up", None, 0, 60)


def test_metric_names_adds_the_mapped_names() -> None:
    prom, seen = api(lambda r: ok(["http_requests_total", "up", "request_rate"]))
    names = prom.metric_names()
    assert seen[0].url.path == "/api/v1/label/__name__/values"
    assert names == sorted(set(MAPPINGS) | {"http_requests_total", "up"})


def test_warnings_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    prom, _ = api(
        lambda r: httpx.Response(
            200,
            json={
                "status": "success",
                "data": {"resultType": "vector", "result": []},
                "warnings": ["PromQL info: metric might not be a counter"],
            },
        )
    )
    assert prom.query("rate(up[1m])") == []
    assert "might not be a counter" in caplog.text


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="rate_window"):
        PrometheusTelemetry(BASE, rate_window="30 seconds")
    with pytest.raises(ValueError, match="timeout_s"):
        PrometheusTelemetry(BASE, timeout_s=0)
    with pytest.raises(ValueError, match="step_s"):
        PrometheusTelemetry(BASE, step_s=-1)


def test_client_has_a_timeout_and_closes() -> None:
    prom = PrometheusTelemetry(BASE, timeout_s=3, transport=httpx.MockTransport(lambda r: ok([])))
    with prom:
        prom.metric_names()
        assert prom._client is not None and prom._client.timeout.read == 3
    assert prom._client is None
    assert json.dumps(sorted(MAPPINGS))  # the names are plain strings (used in tool schemas)

"""What stands between a request and its answer: the primary rate limit and the scripted faults."""

from __future__ import annotations

from tests.fakes.github.model import DOCS, Fault, Json, User
from tests.fakes.github.state import RepoState


class Limits(RepoState):
    """Quota headers, spending a quota, and queueing faults (5xx bursts, secondary limits, slow or lost answers)."""

    def inject(
        self,
        status: int,
        *,
        method: str | None = None,
        path: str | None = None,
        times: int = 1,
        retry_after: float | None = None,
        after: bool = False,
        delay: float = 0.0,
        body: Json | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Fault:
        """Queue a fault; the first matching fault answers the next matching request."""
        hdrs = dict(headers or {})
        if retry_after is not None:
            hdrs["Retry-After"] = str(int(retry_after))
        if body is None:
            body = default_fault_body(status)
        fault = Fault(
            status=status,
            method=method,
            path=path,
            times=times,
            headers=hdrs,
            body=body,
            after=after,
            delay=delay,
        )
        with self.lock:
            self.faults.append(fault)
        return fault

    def secondary_rate_limit(
        self,
        *,
        status: int = 403,
        retry_after: float | None = 1,
        method: str | None = None,
        path: str | None = None,
        times: int = 1,
    ) -> Fault:
        """A secondary (abuse) rate limit, as a 403 or a 429."""
        message = (
            "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you reach "
            "out to GitHub Support for help, please include the request ID 0000:0000:0000:0000:0000."
        )
        return self.inject(
            status,
            method=method,
            path=path,
            times=times,
            retry_after=retry_after,
            body={"message": message, "documentation_url": f"{DOCS}/overview/rate-limits-for-the-rest-api"},
        )

    def exhaust_quota(self, login: str, reset_in: float) -> None:
        """Spend `login`'s primary quota; requests are refused with 403 until `reset_in` seconds from now."""
        with self.lock:
            user = self.users[login]
            user.remaining = 0
            user.reset = self.clock() + reset_in

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.times > 0 and fault.matches(method, path):
                    fault.times -= 1
                    if fault.times == 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def _rate_headers(self, user: User) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Remaining": str(max(user.remaining, 0)),
            "X-RateLimit-Reset": str(int(user.reset)),
            "X-RateLimit-Used": str(self.rate_limit - max(user.remaining, 0)),
            "X-RateLimit-Resource": "core",
        }


def default_fault_body(status: int) -> Json | str:
    """What GitHub answers with `status` when nothing more specific is scripted."""
    if status in (502, 504):
        # GitHub's edge answers gateway errors with HTML, not JSON.
        return (
            "<html><head><title>502 Bad Gateway</title></head><body>Bad Gateway</body></html>"
            if status == 502
            else "<html><body>Gateway Timeout</body></html>"
        )
    if status == 429:
        return {
            "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
            "documentation_url": f"{DOCS}/overview/rate-limits-for-the-rest-api",
        }
    return {
        "message": {500: "Server Error", 503: "Service Unavailable"}.get(status, f"Error {status}"),
        "documentation_url": DOCS,
    }


def fault_payload(fault: Fault) -> Json | bytes:
    """A fault's body as the answer pipeline takes it: JSON, or bytes for an HTML page."""
    return fault.body.encode() if isinstance(fault.body, str) else (fault.body or {})

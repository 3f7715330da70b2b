"""The synthetic world of evals/harness.py as a worker process the tests can kill: test-only.

    python -m tests.worker_harness DIR           # run (or continue) every scenario, then exit 0
    python -m tests.worker_harness --serve DIR   # one of several workers: adopt incidents until DIR/stop exists

`HARNESS_KILL_AFTER=node[:n]` kills it after the n-th checkpoint of a node (a wrapper this module installs on
the engine's checkpointer; product code has no such hook);
`HARNESS_KILL_IN=restart|apply|propose|merge|notify[:n]` kills it inside the n-th such call, after the change
is made (or the notification written) and before the agent hears back (the moment an action or a notification
is most likely to be repeated by mistake). Everything else (`HARNESS_DSN`, ...) is evals/harness.py's.

`comparable` and `normalised` turn a run's summary into what the kill and cluster tests compare between runs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from evals.harness import World, run, serve
from sregraph.engine import Engine


class KillAfter:
    """The HARNESS_KILL_AFTER hook, installed on an engine's checkpointer: dies right after a chosen node's step
    checkpoint is on disk.

    LangGraph saves a node's writes (`put_writes`, which names the task's node) and then, once the step is
    over, the step's checkpoint (`put`); the first arms the kill for that thread, the second fires it. The
    streamed update is no guide: it may reach the caller after the step's checkpoint was saved.
    """

    def __init__(self, spec: str) -> None:
        node, _, count = spec.partition(":")
        self.node, self.count = node, int(count or 1)
        self.seen = 0
        self.armed: set[str] = set()
        self.lock = threading.Lock()

    def install(self, saver: Any) -> None:
        """Wrap the saver's `put_writes` and `put`."""
        put, put_writes = saver.put, saver.put_writes

        def put_writes_and_count(config: Any, writes: Any, task_id: str, task_path: str = "") -> None:
            put_writes(config, writes, task_id, task_path)
            node = task_path.rsplit(", ", 1)[-1] if task_path else ""
            # An interrupt or an error is not the node finishing.
            if node == self.node and not any(
                channel in ("__interrupt__", "__error__") for channel, _ in writes
            ):
                with self.lock:
                    self.seen += 1
                    if self.seen == self.count:
                        self.armed.add(config["configurable"]["thread_id"])

        def put_then_maybe_die(config: Any, *args: Any, **kwargs: Any) -> Any:
            result = put(config, *args, **kwargs)
            if config.get("configurable", {}).get("thread_id") in self.armed:
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        saver.put, saver.put_writes = put_then_maybe_die, put_writes_and_count


def install_kill_hook(engine: Engine) -> None:
    """Arm HARNESS_KILL_AFTER on this engine's checkpointer, when the variable is set."""
    spec = os.environ.get("HARNESS_KILL_AFTER", "")
    if spec:
        KillAfter(spec).install(engine.checkpointer)


class _KillIn:
    """The HARNESS_KILL_IN hook."""

    def __init__(self, spec: str) -> None:
        what, _, count = spec.partition(":")
        self.what, self.count, self.seen = what, int(count or 1), 0

    def after(self, what: str) -> None:
        """Die if this is the chosen call."""
        if what == self.what:
            self.seen += 1
            if self.seen == self.count:
                os.kill(os.getpid(), signal.SIGKILL)


def install_kill_hooks(world: World, engine: Engine) -> None:
    """Arm HARNESS_KILL_AFTER on the engine's checkpointer and HARNESS_KILL_IN on the world, when set."""
    install_kill_hook(engine)
    kill_in = os.environ.get("HARNESS_KILL_IN", "")
    if kill_in:
        world.after_change = _KillIn(kill_in).after


def comparable(result: dict[str, Any]) -> dict[str, Any]:
    """What must match between runs: titles quote measured scores, which shift when a step re-observes."""
    return {
        **result,
        "issues": [{k: v for k, v in issue.items() if k != "title"} for issue in result["issues"]],
    }


def normalised(result: dict[str, Any], ids: list[str]) -> str:
    """The summary with incident ids (random, clock-dependent) replaced by their scenario order."""
    text = json.dumps(result, sort_keys=True)
    for n, incident_id in enumerate(ids):
        text = text.replace(incident_id, f"incident-{n}")
    assert not re.search(r"inc-\d{8}-\d{6}-[0-9a-f]{4}", text), "an incident id outside the scenarios' runs"
    return text


if __name__ == "__main__":
    # The worker's own account (adoptions, leases lost or not taken) in its log, for a failed cluster test.
    logging.basicConfig(format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    logging.getLogger("sregraph").setLevel(logging.INFO)
    if sys.argv[1] == "--serve":
        serve(Path(sys.argv[2]), instrument=install_kill_hooks)
    else:
        run(Path(sys.argv[1]), instrument=install_kill_hooks)

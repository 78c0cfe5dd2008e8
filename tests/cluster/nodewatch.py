"""Every change of a node's Ready condition, seen through a watch on Nodes.

A node that leaves Ready takes its pods' readiness with it (the node lifecycle
controller marks them NotReady), and what fails is some later `helm --wait`
with a timeout that names nothing. `NodeReadyWatch` records each change of
Ready, with what the session was doing at the time (`during`), so the
conftest can fail the test it happened in by name.

It also logs every node update it sees (one line each: heartbeat times
included) to a file, the record of a whole run.
"""

from __future__ import annotations

import datetime
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Transition:
    """Node `node`'s Ready condition went from `before` to `after`."""

    at: datetime.datetime
    node: str
    before: str
    after: str
    reason: str
    during: str

    def __str__(self) -> str:
        return (f"{self.at:%H:%M:%S} node {self.node}: Ready {self.before} -> {self.after}"
                f" ({self.reason}) during {self.during}")


def ready_condition(node: dict[str, Any]) -> dict[str, Any]:
    """The node's Ready condition (a dict, as the API serves it), or {}."""
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return dict(cond)
    return {}


class NodeReadyWatch:
    """Watch `nodes` (names; every node if None) of the cluster `kubeconfig`
    points at, in a daemon thread, from `start()` to `stop()`."""

    def __init__(self, kubeconfig: Path, nodes: set[str] | None, log: Path) -> None:
        self.kubeconfig = kubeconfig
        self.nodes = nodes
        self.log = log
        self.during = "start-up"
        self.updates = 0  # node updates seen, heartbeats included
        self._state: dict[str, str] = {}
        self._transitions: list[Transition] = []
        self._reported = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread = threading.Thread(target=self._run, name="node-ready-watch", daemon=True)

    def start(self, timeout: float = 30) -> None:
        """Start watching; returns once the first listing has been read."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        if not self._synced.wait(timeout):
            raise TimeoutError(f"the node watch did not list the nodes within {timeout:.0f}s")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def transitions(self) -> list[Transition]:
        with self._lock:
            return list(self._transitions)

    def unreported(self) -> list[Transition]:
        """Transitions not returned by an earlier call (each is reported once)."""
        with self._lock:
            fresh = self._transitions[self._reported:]
            self._reported = len(self._transitions)
            return fresh

    # --- the watching thread ------------------------------------------------
    def _run(self) -> None:
        from kubernetes import client, watch
        from kubernetes import config as kconfig
        from kubernetes.client.rest import ApiException

        core = client.CoreV1Api(kconfig.new_client_from_config(config_file=str(self.kubeconfig)))
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    listing = core.list_node(_preload_content=False)
                    body = json.loads(listing.data)
                    for node in body["items"]:
                        self._see(node, "LISTED")
                    version = body["metadata"]["resourceVersion"]
                    self._synced.set()
                stream = watch.Watch()
                # A bounded watch, so that stop() is noticed within that time.
                for event in stream.stream(core.list_node, resource_version=version,
                                           timeout_seconds=10):
                    node = event["raw_object"]
                    version = node["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._see(node, event["type"])
                    elif event["type"] == "DELETED":
                        with self._lock:
                            self._state.pop(node["metadata"]["name"], None)
                    if self._stop.is_set():
                        stream.stop()
            except ApiException as exc:
                if exc.status == 410:  # too old to resume from: list again
                    version = None
                else:
                    time.sleep(1)
            except Exception:  # the API server briefly unavailable, or going away at the end
                time.sleep(1)

    def _see(self, node: dict[str, Any], kind: str) -> None:
        name = node["metadata"]["name"]
        if self.nodes is not None and name not in self.nodes:
            return
        cond = ready_condition(node)
        status = str(cond.get("status", "absent"))
        now = datetime.datetime.now()
        with self._lock:
            self.updates += 1
            before = self._state.get(name)
            self._state[name] = status
            changed = before is not None and before != status
            if changed:
                assert before is not None
                self._transitions.append(Transition(
                    at=now, node=name, before=before, after=status,
                    reason=f"{cond.get('reason', '')}: {cond.get('message', '')}",
                    during=self.during))
            with self.log.open("a") as out:
                out.write(f"{now:%H:%M:%S.%f} {kind} {name} Ready={status}"
                          f" heartbeat={cond.get('lastHeartbeatTime')}"
                          f"{' TRANSITION from ' + before if changed and before else ''}"
                          f" during={self.during}\n")

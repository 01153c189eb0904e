"""A watchdog for Ray grid tests: when a test runs past its limit, it first says why.

`watchdog(root, limit_s)` starts a timer; if the test is still running after `limit_s`, it
prints the Ray cluster's placement groups, the available resources of every node, the live
actors and the state of every run folder under `root`, then interrupts the test's thread; what
comes out of the test (KeyboardInterrupt, or what Tune made of it) is raised as `Hang` with the
dump, after the test's own `finally` clean-up ran. pytest-timeout, set a little above
`limit_s`, stays the last resort if even that does not return.
"""

from __future__ import annotations

import _thread
import contextlib
import json
import sys
import threading
import time
from pathlib import Path


class Hang(AssertionError):
    """The watchdog fired: the test ran past its limit (its dump is on stderr)."""


def ray_state() -> list[str]:
    """Placement groups, per-node available resources and live actors, one line each."""
    import ray
    from ray._private import state as ray_private_state

    lines = ["-- placement groups (ray.util.placement_group_table())"]
    for pg_id, pg in ray.util.placement_group_table().items():
        stats = pg.get("stats") or {}
        lines.append(
            f"  {pg_id[:12]} {pg['state']:<9} {stats.get('scheduling_state', '?'):<13} "
            f"name={pg.get('name')!r} bundles={list(pg['bundles'].values())} "
            f"on={sorted({n[:8] for n in pg.get('bundles_to_node_id', {}).values()})}"
        )
    lines.append("-- nodes: total -> available")
    available = ray_private_state.available_resources_per_node()
    for node in ray.nodes():
        node_id = node["NodeID"]
        total = {k: v for k, v in node["Resources"].items() if "_group_" not in k}
        free = {k: v for k, v in available.get(node_id, {}).items() if "_group_" not in k}
        lines.append(f"  {node_id[:8]} alive={node['Alive']} total={total} available={free}")
    lines.append("-- live actors")
    for actor in ray_private_state.actors().values():
        if actor["State"] in ("ALIVE", "PENDING_CREATION", "RESTARTING", "DEPENDENCIES_UNREADY"):
            lines.append(
                f"  {actor['ActorClassName']:<28} {actor['State']:<16} "
                f"node={actor['Address']['NodeID'][:8]} pid={actor['Pid']} name={actor['Name']!r}"
            )
    return lines


def folder_state(root: Path) -> list[str]:
    """Every run folder's files (summary status, attempts, last epoch) and Train checkpoints."""
    lines = [f"-- run folders under {root}"]
    for run_dir in sorted((root / "runs").glob("*")):
        files = sorted(p.name for p in run_dir.iterdir())
        summary = run_dir / "summary.json"
        status = json.loads(summary.read_text()).get("status") if summary.is_file() else None
        epochs = run_dir / "epochs.jsonl"
        last = epochs.read_text().splitlines()[-1:] if epochs.is_file() else []
        lines.append(f"  {run_dir.name}: status={status} files={files} last_epoch={last}")
    for checkpoint in sorted(root.glob("runs/*/checkpoint.pt")):
        lines.append(f"  checkpoint {checkpoint.relative_to(root)}")
    driver = root / "driver.json"
    if driver.is_file():
        lines.append(f"  driver.json {driver.read_text()}")
    return lines


def dump(root: Path, started: float) -> str:
    lines = [f"== watchdog: {time.time() - started:.0f} s after the test started"]
    for part in (ray_state, lambda: folder_state(root)):
        try:
            lines += part()
        except Exception as exc:  # a dump must never hide the hang behind its own error
            lines.append(f"  (could not read: {exc!r})")
    return "\n".join(lines)


@contextlib.contextmanager
def watchdog(root: Path, limit_s: float):
    """Dump the cluster's and the folder's state and fail the test once it runs `limit_s`."""
    started = time.time()
    fired = threading.Event()
    report: list[str] = []

    def fire() -> None:
        report.append(dump(root, started))
        print(report[0], file=sys.stderr, flush=True)
        fired.set()
        _thread.interrupt_main()  # KeyboardInterrupt in the test's thread, turned into Hang

    timer = threading.Timer(limit_s, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except BaseException as exc:  # KeyboardInterrupt, or what Tune made of it
        if fired.is_set():
            raise Hang(f"ran past {limit_s:.0f} s\n{report[0]}") from exc
        raise
    finally:
        timer.cancel()
    if fired.is_set():  # the interrupt was absorbed (e.g. by Tune stopping its trials)
        raise Hang(f"ran past {limit_s:.0f} s\n{report[0]}")

"""The shared request set against ``polyroute serve`` (in-process, loopback, simulated)."""

from __future__ import annotations

from pathlib import Path

from .local_server import LocalServer
from .request_set import cases, run_request_set


def test_request_set_passes_against_the_local_server(tmp_path: Path) -> None:
    with LocalServer(tmp_path / "store") as server:
        outcomes = run_request_set(server.send())
    assert [o.case.name for o in outcomes] == [c.name for c in cases()]


def test_request_set_runs_twice_against_one_store(tmp_path: Path) -> None:
    # Ids and keys are per run, so a store that keeps state (the deployed one) can run the
    # set again; the second run must not trip over the first run's tasks.
    with LocalServer(tmp_path / "store") as server:
        run_request_set(server.send(), run_id="first")
        outcomes = run_request_set(server.send(), run_id="second")
    assert len(outcomes) == len(cases())


def test_deployed_subset_leaves_out_local_only_routes(tmp_path: Path) -> None:
    with LocalServer(tmp_path / "store") as server:
        outcomes = run_request_set(server.send(), local_only=False)
    names = {o.case.name for o in outcomes}
    assert "health" not in names and "unknown route" not in names
    assert "idempotent sync: retried, the first result" in names

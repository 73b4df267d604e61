"""The benchmark harness's own arithmetic: parsing wrk, ratio floors and ceilings, stall checks.

The harness itself runs in CI as `make bench BENCH_ARGS=--quick`; these pin the verdicts it
prints, which a wrong comparison would silently turn into "met".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench import run
from tests.bench.run import Ratio, Target, WrkResult, evaluate_ratios, evaluate_stalls, parse_wrk
from tests.bench.submissions import BenchMongo
from tests.bench.tenant import BenchTenant
from tests.support import setting_path

WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:8000/api/v1/info
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     8.91ms    2.11ms  41.27ms   90.12%
    Req/Sec     7.20k   512.33     7.90k    75.00%
  Latency Distribution
     50%    8.50ms
     75%    9.20ms
     90%   10.10ms
     99%    1.20s
  14345 requests in 2.00s, 3.12MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:   7172.50
Transfer/sec:      1.56MB
"""


def medians(**targets: tuple[float, float]) -> dict[str, dict[str, float]]:
    return {
        name: {"requests_per_second": rps, "p50_ms": 1.0, "p99_ms": p99}
        for name, (rps, p99) in targets.items()
    }


def result(non_2xx: int = 0, socket_errors: int = 0) -> WrkResult:
    return WrkResult(1000.0, 1.0, 2.0, 2000, non_2xx, socket_errors)


def test_parse_wrk_reads_throughput_percentiles_in_ms_and_error_counts() -> None:
    parsed = parse_wrk(WRK_OUTPUT)

    assert parsed.requests_per_second == 7172.5
    assert (parsed.p50_ms, parsed.p99_ms) == (8.5, 1200.0)
    assert parsed.requests == 14345
    assert (parsed.non_2xx, parsed.socket_errors) == (7, 5)


def test_parse_wrk_refuses_output_without_figures() -> None:
    with pytest.raises(run.BenchError):
        parse_wrk("unable to connect to 127.0.0.1:8000 Connection refused")


def test_a_throughput_ratio_is_a_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "RATIOS", [Ratio("c/d", "c", "d", bound=0.45)])

    [low] = evaluate_ratios(medians(c=(400.0, 10.0), d=(1000.0, 10.0)))
    [high] = evaluate_ratios(medians(c=(450.0, 10.0), d=(1000.0, 10.0)))

    assert (low["value"], low["met"]) == (0.4, False)
    assert (high["value"], high["met"]) == (0.45, True)


def test_a_latency_ratio_is_a_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    ratio = Ratio("c/d p99", "c", "d", bound=3.0, metric="p99_ms", at_most=True)
    monkeypatch.setattr(run, "RATIOS", [ratio])

    [slow] = evaluate_ratios(medians(c=(1.0, 31.0), d=(1.0, 10.0)))
    [fast] = evaluate_ratios(medians(c=(1.0, 30.0), d=(1.0, 10.0)))

    assert (slow["value"], slow["met"]) == (3.1, False)
    assert (fast["value"], fast["met"]) == (3.0, True)


def test_a_ratio_with_a_target_not_run_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "RATIOS", [Ratio("c/d", "c", "d", bound=0.45)])

    assert evaluate_ratios(medians(c=(1.0, 1.0))) == []


def test_a_stall_check_fails_on_any_error_in_any_round() -> None:
    server = run.BERTH
    checked = Target("g", "stall", server, "/", connections=256, must_not_stall=True)
    unchecked = Target("b", "plain", server, "/")
    runs = {"g": [result(), result(socket_errors=1)], "b": [result(non_2xx=5)]}

    [verdict] = evaluate_stalls([checked, unchecked], runs)

    assert verdict["target"] == "g"
    assert (verdict["non_2xx"], verdict["socket_errors"], verdict["met"]) == (0, 1, False)


def test_a_clean_stall_check_is_met() -> None:
    checked = Target("h", "stall", run.BERTH, "/", connections=256, must_not_stall=True)

    [verdict] = evaluate_stalls([checked], {"h": [result(), result()]})

    assert verdict["met"] is True


def test_a_baseline_tree_twins_each_berth_target_but_not_references_or_stall_checks(
    tmp_path: Path,
) -> None:
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").write_text("")
    chosen = [t for t in run.TARGETS if t.name in {"a", "b", "c", "g"}]

    targets, ratios = run.with_baseline(chosen, tmp_path)

    assert [t.name for t in targets] == ["a", "b", "b0", "c", "c0", "g"]
    twin = {t.name: t for t in targets}["c0"]
    assert (twin.server.name, twin.path) == ("berth-pg-nocache-baseline", run.ARTICLE)
    assert [r.name for r in ratios] == ["b/b0", "b/b0 p99", "c/c0", "c/c0 p99"]
    assert all(r.bound is None for r in ratios)


def test_a_baseline_server_runs_the_other_trees_python_and_source(tmp_path: Path) -> None:
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    ctx = run.ServerContext(python="/usr/bin/python3", port=1, workdir=tmp_path, tenant=None)

    spec = run.on_tree(run.BERTH, tmp_path).build(ctx)

    assert spec.command[0] == str(python)
    assert spec.setup == [[str(python), "-m", "service", "migrate"]]
    assert spec.env["PYTHONPATH"] == str(tmp_path)


def test_a_baseline_without_its_virtualenv_is_refused(tmp_path: Path) -> None:
    with pytest.raises(run.BenchError, match="make install"):
        run.on_tree(run.BERTH, tmp_path)


def test_a_comparison_without_a_goal_is_reported_and_never_missed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(run, "RATIOS", [])
    comparison = Ratio("c/c0", "c", "c0", bound=None)

    [verdict] = evaluate_ratios(medians(c=(900.0, 1.0), c0=(1000.0, 1.0)), [comparison])

    assert (verdict["value"], verdict["met"], verdict["bound"]) == (0.9, True, None)


# Submissions (targets s and t): a POST body through a wrk Lua script, a MongoDB fixture.


def test_a_post_target_gets_a_lua_script_with_its_method_and_body(tmp_path: Path) -> None:
    [post] = run.select_targets("s")

    script = run.script_for(post, tmp_path)

    assert script is not None
    text = script.read_text()
    assert "wrk.method = [[POST]]" in text
    assert f"wrk.body = [[{run.SUBMISSION_BODY.decode()}]]" in text
    assert run.script_for(run.select_targets("b")[0], tmp_path) is None


def test_a_lua_long_string_cannot_be_closed_by_the_body() -> None:
    script = run.wrk_script("POST", b'{"a": "]]", "b": "]=]"}')

    assert script.splitlines()[1] == 'wrk.body = [==[{"a": "]]", "b": "]=]"}]==]'


def test_wrk_is_given_the_script_and_a_timeout_only_when_a_target_has_them(
    tmp_path: Path,
) -> None:
    plain = run.wrk_command("wrk", "http://127.0.0.1:1/", 5, 64, {"A": "b"})
    full = run.wrk_command("wrk", "http://127.0.0.1:1/", 5, 4, {}, tmp_path / "s.lua", 120)

    assert plain == ["wrk", "-t1", "-c64", "-d5s", "--latency", "-H", "A: b",
                     "http://127.0.0.1:1/"]  # fmt: skip
    assert full[-5:] == ["-s", str(tmp_path / "s.lua"), "--timeout", "120s",
                         "http://127.0.0.1:1/"]  # fmt: skip


def test_the_submission_targets_post_a_valid_10_item_declaration_and_read_the_stats() -> None:
    from service.submissions.schemas import DeclarationIn

    post, stats = run.select_targets("s,t")

    assert (post.method, post.path, post.expect_status) == ("POST", "/api/v1/submissions", 202)
    assert post.headers["Content-Type"] == "application/json"
    assert post.body is not None
    assert len(DeclarationIn.model_validate_json(post.body).items) == 10
    assert (stats.method, stats.path, stats.body) == ("GET", "/api/v1/submissions/stats", None)
    assert stats.wrk_timeout == run.STATS_TIMEOUT_SECONDS
    assert post.server.needs_mongo
    assert stats.server.needs_mongo
    assert post.server.needs_tenant


def test_the_submission_ratios_are_to_info_and_have_no_goal() -> None:
    ratios = {r.name: r for r in run.RATIOS if r.numerator in {"s", "t"}}

    assert set(ratios) == {"s/b", "s/b p99", "t/b", "t/b p99"}
    assert all(r.denominator == "b" and r.bound is None for r in ratios.values())


def test_the_submission_servers_use_the_mongodb_fixture_in_databases_of_their_own(
    tmp_path: Path,
) -> None:
    tenant = BenchTenant("bench-x", "o@example.com", "pw", {"BERTH_DATABASE__URL": "pg"}, "dsn")
    mongo = BenchMongo("mongodb://127.0.0.1:1/?directConnection=true")
    ctx = run.ServerContext("python", 1, tmp_path, tenant, mongo)

    post = run.BERTH_MONGO_POST.build(ctx).env
    stats = run.BERTH_MONGO_STATS.build(ctx).env

    assert post["BERTH_MONGO__URL"] == stats["BERTH_MONGO__URL"] == mongo.url
    assert post["BERTH_MONGO__DATABASE_PREFIX"] != stats["BERTH_MONGO__DATABASE_PREFIX"]
    assert post["BERTH_SUBMISSIONS__WORKER_ENABLED"] == "false"
    assert stats["BERTH_SUBMISSIONS__WORKER_ENABLED"] == "false"
    assert post["BERTH_DATABASE__URL"] == "pg"
    for env in (post, stats):  # a misspelt setting would be ignored, silently
        assert all(setting_path(key) for key in env if key.startswith("BERTH_")), env


def test_a_server_needing_mongodb_refuses_to_build_without_it(tmp_path: Path) -> None:
    tenant = BenchTenant("bench-x", "o@example.com", "pw", {}, "dsn")
    ctx = run.ServerContext("python", 1, tmp_path, tenant)

    with pytest.raises(run.BenchError, match="needs_mongo"):
        run.BERTH_MONGO_POST.build(ctx)


def test_a_baseline_tree_without_submissions_gets_no_submission_twins(tmp_path: Path) -> None:
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").write_text("")

    before, _ = run.with_baseline(run.select_targets("b,s,t"), tmp_path)
    (tmp_path / "service" / "submissions").mkdir(parents=True)
    (tmp_path / "service" / "submissions" / "router.py").write_text("")
    after, _ = run.with_baseline(run.select_targets("b,s,t"), tmp_path)

    assert [t.name for t in before] == ["b", "b0", "s", "t"]
    assert [t.name for t in after] == ["b", "b0", "s", "s0", "t", "t0"]

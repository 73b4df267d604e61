"""The benchmark harness's own arithmetic: parsing wrk, ratio floors and ceilings, stall and
error checks, target r's rotation script, RSS and local-cache verdicts.

The harness itself runs in CI as `make bench BENCH_ARGS=--quick`; these pin the verdicts it
prints, which a wrong comparison would silently turn into "met".
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from service.core.tenancy import is_valid_tenant_slug
from tests.bench import measures, rotation, run
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


# Target r (tenants in rotation), memory and the local cache (issue 13).


def rotation_context(tmp_path: Path, slugs: list[str]) -> run.ServerContext:
    tenant = BenchTenant("bench-x", "o@example.com", "pw", {"BERTH_DATABASE__URL": "pg"}, "dsn")
    env = rotation.rotation_env(tmp_path / "rotation")
    fixture = rotation.BenchRotation(slugs, "admin@example.com", "pw", env)
    return run.ServerContext("python", 1, tmp_path, tenant, rotation=fixture)


def test_the_rotation_script_sends_each_tenant_in_turn_over_wrks_own_headers() -> None:
    script = rotation.rotation_script("X-Tenant-ID", ["t-000", "t-001", "t-002"])

    assert script.index("[[t-000]]") < script.index("[[t-001]]") < script.index("[[t-002]]")
    assert "local header = [[X-Tenant-ID]]" in script
    assert "headers[header] = value" in script  # `headers[[[...` would be a Lua syntax error
    assert "[[[" not in script
    assert "for name, existing in pairs(wrk.headers) do" in script  # the bearer token stays
    assert "position = position % #requests + 1" in script
    assert "return requests[position]" in script


def test_target_r_rotates_200_tenants_on_a_server_whose_engine_cache_is_smaller(
    tmp_path: Path,
) -> None:
    [target] = run.select_targets("r")
    slugs = rotation.rotation_slugs("rot-abcd1234")
    ctx = rotation_context(tmp_path, slugs)

    env = target.server.build(ctx).env
    script = run.script_for(target, tmp_path, ctx)

    assert len(slugs) == rotation.ROTATION_TENANTS == 200
    assert all(is_valid_tenant_slug(slug) for slug in slugs)
    assert (target.path, target.no_errors, target.server.needs_rotation) == (
        run.ARTICLE, True, True)  # fmt: skip
    assert int(env["BERTH_TENANTS__ENGINE_CACHE_SIZE"]) < rotation.ROTATION_TENANTS
    assert float(env["BERTH_TENANTS__ENGINE_IDLE_SECONDS"]) <= 5  # its twin needs the room
    assert env["BERTH_CACHE__ENABLED"] == "false"  # as c: every GET reaches the database
    assert env["BERTH_TENANTS__REGISTRY_DIR"] == str(tmp_path / "rotation")
    assert all(setting_path(key) for key in env if key.startswith("BERTH_")), env
    assert script is not None
    assert all(f"[[{slug}]]" in script.read_text() for slug in slugs)


def test_a_target_script_needs_the_servers_context(tmp_path: Path) -> None:
    with pytest.raises(run.BenchError, match="context"):
        run.script_for(run.select_targets("r")[0], tmp_path)


def test_r_is_judged_against_c_and_twinned_on_a_baseline(tmp_path: Path) -> None:
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").write_text("")
    ratios = {r.name: r for r in run.RATIOS}

    targets, comparisons = run.with_baseline(run.select_targets("c,r"), tmp_path)

    assert (ratios["r/c"].bound, ratios["r0/c0"].bound) == (0.5, None)
    assert [t.name for t in targets] == ["c", "c0", "r", "r0"]
    twin = {t.name: t for t in targets}["r0"]
    assert (twin.server.name, twin.no_errors, twin.server.needs_rotation) == (
        "berth-pg-rotation-baseline", True, True)  # fmt: skip
    assert "r/r0" in [c.name for c in comparisons]


def test_a_failed_request_of_r_is_an_error_of_its_check_and_of_its_ratio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(run, "RATIOS", [Ratio("r/c", "r", "c", bound=0.5)])
    [r, c] = run.select_targets("r,c")
    runs = {"r": [result(), result(non_2xx=3, socket_errors=1)], "c": [result(non_2xx=9)]}

    errors = run.failed_requests([r, c], runs)
    [ratio] = evaluate_ratios(medians(r=(900.0, 1.0), c=(1000.0, 1.0)), errors=errors)
    [check] = evaluate_stalls([r, c], runs, default_connections=64)

    assert errors == {"r": 4}  # c has no such check: its answers are not judged here
    assert (ratio["value"], ratio["errors"], ratio["met"]) == (0.9, 4, False)
    assert "ERROR" in run.ratio_line(ratio)
    assert (check["name"], check["connections"], check["met"]) == ("r no error", 64, False)
    assert check["failure"] == "ERROR"


def test_a_clean_r_keeps_its_ratio_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "RATIOS", [Ratio("r/c", "r", "c", bound=0.5)])

    [low] = evaluate_ratios(medians(r=(400.0, 1.0), c=(1000.0, 1.0)), errors={"r": 0})
    [high] = evaluate_ratios(medians(r=(500.0, 1.0), c=(1000.0, 1.0)), errors={"r": 0})

    assert run.ratio_line(low).endswith("MISSED")
    assert run.ratio_line(high).endswith("met")


def test_wrk_ignoring_a_broken_script_is_caught(tmp_path: Path) -> None:
    script = tmp_path / "r.lua"
    broken = f"{script}: {script}:213: unexpected symbol near ']'\n{WRK_OUTPUT}"

    assert run.script_failed(broken, script)
    assert not run.script_failed(WRK_OUTPUT, script)


def test_rss_end_over_start_is_a_ceiling_of_1_2_for_this_trees_servers_only() -> None:
    samples = {
        "berth-pg": measures.RssSample(10, 100_000, 120_000),
        "berth": measures.RssSample(11, 100_000, 121_000),
        "berth-pg-baseline": measures.RssSample(12, 100_000, 150_000),
        "berth-late": measures.RssSample(13, 100_000),  # never sampled at the end: left out
    }

    verdicts = {m["server"]: m for m in measures.evaluate_memory(samples, {"berth-pg", "berth"})}

    assert set(verdicts) == {"berth-pg", "berth", "berth-pg-baseline"}
    assert (verdicts["berth-pg"]["ratio"], verdicts["berth-pg"]["met"]) == (1.2, True)
    assert (verdicts["berth"]["ratio"], verdicts["berth"]["met"]) == (1.21, False)
    baseline = verdicts["berth-pg-baseline"]
    assert (baseline["ratio"], baseline["bound"], baseline["met"]) == (1.5, None, True)
    assert run.memory_line(verdicts["berth"]).endswith("target <= 1.20   MISSED")


def fake_proc(root: Path, port: int) -> Path:
    """A /proc with a wrapper (pid 100), the server it started (101, listening on `port`) in
    the same process group, and an unrelated process (200) with a socket of its own."""
    (root / "net").mkdir(parents=True)
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid"
    listening = f"   0: 0100007F:{port:04X} 00000000:0000 0A 00000000:00000000 00:0 0 0 0 4242"
    other = "   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:0 0 0 0 7777"
    (root / "net" / "tcp").write_text(f"{header}\n{listening}\n{other}\n")
    for pid, group, inode in ((100, 100, None), (101, 100, "4242"), (200, 200, "7777")):
        (root / str(pid) / "fd").mkdir(parents=True)
        (root / str(pid) / "stat").write_text(f"{pid} (python (x) y) S 1 {group} {group} 0")
        (root / str(pid) / "status").write_text(f"Name:\tpython\nVmRSS:\t   {pid}000 kB\n")
        if inode:
            (root / str(pid) / "fd" / "3").symlink_to(f"socket:[{inode}]")
    return root


def test_the_server_pid_is_the_process_listening_on_its_port_not_the_wrapper(
    tmp_path: Path,
) -> None:
    proc = fake_proc(tmp_path / "proc", port=45319)

    pid = measures.server_pid(100, 45319, proc)

    assert pid == 101
    assert measures.rss_kib(pid, proc) == 101_000
    with pytest.raises(measures.MeasureError):
        measures.server_pid(200, 45319, proc)  # another group's socket is not this server


def test_the_local_cache_gauges_are_read_beside_their_bounds_or_are_n_a() -> None:
    exposition = (
        "# HELP berth_local_cache_entries Entries.\n"
        "berth_local_cache_entries 3.0\n"
        "berth_local_cache_entries_created 1.7e9\n"
        'berth_local_cache_bytes{pid="1"} 600.0\n'
        'berth_local_cache_bytes{pid="2"} 222.0\n'
    )
    bounds = {"berth_local_cache_entries": None, "berth_local_cache_bytes": 700}

    rows = {r["gauge"]: r for r in measures.local_cache_rows("berth-pg", exposition, bounds)}
    absent = measures.local_cache_rows("berth-pg-baseline", "berth_up 1\n", bounds)

    entries, size = rows["berth_local_cache_entries"], rows["berth_local_cache_bytes"]
    assert (entries["value"], entries["met"]) == (3.0, None)  # no bound in entries: n/a
    assert (size["value"], size["met"]) == (822.0, False)  # both processes' samples, summed
    assert all(r["value"] is None and r["met"] is None for r in absent)
    assert run.local_cache_line(absent[0]) == (
        "local cache berth-pg-baseline: berth_local_cache_entries n/a (bound no setting)"
    )
    assert run.local_cache_line(rows["berth_local_cache_bytes"]).endswith("(bound 700)   MISSED")


def test_a_local_cache_bound_set_for_the_server_wins_over_the_trees_default() -> None:
    bounds = measures.local_cache_bounds({"BERTH_CACHE__LOCAL_MAX_BYTES": "1024"})

    assert bounds["berth_local_cache_bytes"] == 1024


def test_the_table_prints_errors_memory_and_the_local_cache(tmp_path: Path) -> None:
    [r] = run.select_targets("r")
    ratio = {"name": "r/c", "metric": "requests_per_second", "value": 0.07, "bound": 0.5,
             "at_most": False, "errors": 0, "met": False}  # fmt: skip
    check = {"name": "r no error", "connections": 64, "non_2xx": 2, "socket_errors": 0,
             "met": False, "failure": "ERROR"}  # fmt: skip
    memory = measures.evaluate_memory({"berth-pg-rotation": measures.RssSample(1, 1024, 2048)},
                                      {"berth-pg-rotation"})  # fmt: skip
    cache = {"server": "berth-pg-rotation", "gauge": "berth_local_cache_bytes", "value": 822.0,
             "bound": 33554432, "met": True}  # fmt: skip
    out = io.StringIO()

    run.print_table([r], medians(r=(37.7, 1880.0)), [ratio], [check], out, [*memory], [cache])

    lines = out.getvalue().splitlines()
    assert "ratio r/c (req/s) = 0.070   target >= 0.50   MISSED" in lines
    assert "check r no error at 64 connections: non-2xx 2, socket errors 0   ERROR" in lines
    assert (
        "memory berth-pg-rotation: RSS 1.0 MiB after warm-up, 2.0 MiB at the end, "
        "end/start = 2.000   target <= 1.20   MISSED"
    ) in lines
    assert (
        "local cache berth-pg-rotation: berth_local_cache_bytes 822 (bound 33,554,432)   met"
    ) in lines


def test_r_is_printed_over_its_ceiling_of_tenant_switches_straight_from_asyncpg(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fixture = rotation.BenchRotation(["t-000"], "admin@example.com", "pw", {})
    fixture.direct_connects_per_second = 200.0

    run.print_rotation_ceiling(fixture, medians(c=(1600.0, 50.0), r=(150.0, 700.0)))

    assert capsys.readouterr().out.splitlines() == [
        "r / its ceiling of 200 new connections/s = 0.750 (the ceiling over c: 0.125)"
    ]

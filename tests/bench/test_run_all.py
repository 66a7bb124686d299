"""``make bench``'s runner hands each benchmark only flags that benchmark declares: ``--quick``
was once passed to every script, and the six without it stopped with "unrecognized arguments"."""

import ast
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def declared_flags(script: Path) -> set[str]:
    """The ``--flags`` a script (or the bench module it hands its arguments to) declares."""
    flags: set[str] = set()
    sources = [script]
    if script.name == "bench_kernels_chromium.py":  # it runs bench_kernels.main(argv)
        sources.append(BENCH / "bench_kernels.py")
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument"
            ):
                flags |= {
                    arg.value
                    for arg in node.args
                    if isinstance(arg, ast.Constant) and str(arg.value).startswith("--")
                }
    return flags


@pytest.fixture
def run_all(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import run_all

    return run_all


@pytest.mark.parametrize("quick", [False, True])
def test_every_flag_run_all_passes_is_declared_by_its_script(run_all, quick):
    for name in run_all.BENCHMARKS:
        _, script, *args = run_all.bench_command(name, quick=quick)
        declared = declared_flags(Path(script))
        for flag in (arg for arg in args if arg.startswith("--")):
            assert flag in declared, f"{name}: {Path(script).name} does not take {flag}"


def test_the_protocol_check_benchmark_times_every_checker_on_valid_messages(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_protocol_check

    rows = bench_protocol_check.measure(0.002)
    assert [row["message"] for row in rows] == [
        kind for _, kind, _ in bench_protocol_check.MESSAGES
    ]
    for row in rows:
        assert set(row["us"]) == {"compiled", "jsonschema", "jsonschema-rs", "json.loads"}
        assert all(value > 0 for value in row["us"].values())


def test_the_edge_cycle_benchmark_drives_every_replica_to_its_ack(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_edge_cycle

    report = bench_edge_cycle.measure(20, 1)
    assert report["messages_sent_per_replica"] == 1.0  # one result frame each
    assert report["cpu_us_per_replica"]["median"] > 0
    assert report["json_loads_us_per_replica"] > 0

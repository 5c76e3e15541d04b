"""The command line: demo, bench, clear errors for bad arguments, and ``--version`` and the help
under both names (``thespian-dd`` and ``python -m thespian_dd``)."""

from __future__ import annotations

import configparser
import importlib
import json
import os
import subprocess
import sys
import sysconfig
import time
from importlib.metadata import version
from pathlib import Path

import pytest

import thespian_dd
import thespian_dd.__main__
from thespian_dd._cli.bench import _cpu_clock
from thespian_dd._cli.main import main


@pytest.mark.multinode
def test_the_demo_keeps_every_value_through_a_full_cluster_kill(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "DIFFERENT" not in out
    assert out.count(" intact") == 12  # 4 keys on each of 3 nodes
    assert "cart={'apple': 5}" in out
    assert "hits=7" in out
    assert "Every acknowledged value survived the full-cluster kill -9." in out
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["node-1.db", "node-2.db", "node-3.db"]


@pytest.mark.multinode  # the bench starts real nodes
def test_the_bench_prints_each_figure_with_its_baseline_and_ratio(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "bench.json"
    plot = tmp_path / "bench.png"
    args = ["bench", "--sizes", "200,2000", "--scale", "0.05", "--json", str(results)]
    args += ["--plot", str(plot)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "ORSet merge, 2,000 elements" in out
    assert "ORMap encoded size, 200 elements" in out
    rows = json.loads(results.read_text())
    assert {row["section"] for row in rows} == {"crdt", "replicator", "durable", "pruning"}
    assert "GCounter key size after 3 restarts, pruned" in out
    assert "SQLite write-behind Update throughput, 16 client(s)" in out
    # 16 clients make 5 blocks of at least 100 Updates each (times the scale), where 2,000 a
    # mode (at this scale 100: about one each a block) left the ratio to a block's last moments.
    assert "SQLite, 16 client(s), 400 Updates per mode" in out
    assert "SQLite sync Updates per second, 1 client, against the disk" in out
    if sys.platform == "linux":  # a process's CPU clock (see test_a_process_cpu_clock_...)
        assert "SQLite sync Replicator CPU per Update, 16 client(s)" in out
    assert "SQLite recovery of 5,000 keys" in out
    assert "Update (WriteLocal) throughput" in out
    assert "idle gossip per round, 1,000 keys" in out
    assert all(row["baseline"] > 0 and row["ratio"] > 0 for row in rows)
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert any("growth" in row["name"] for row in rows)


@pytest.mark.subprocess
@pytest.mark.skipif(sys.platform != "linux", reason="/proc, to compare the clock with")
def test_a_process_cpu_clock_reads_that_process_cpu_time_and_a_missing_one_has_none() -> None:
    """The bench's Replicator CPU per Update reads the Replicator's process clock."""
    work = "import sys; sum(range(3 * 10**7)); print('done', flush=True); sys.stdin.read()"
    child = subprocess.Popen(
        [sys.executable, "-c", work], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        clock = _cpu_clock(child.pid)
        assert clock is not None
        assert child.stdout is not None
        assert child.stdout.readline() == "done\n"  # busy, now waiting on its stdin
        used = time.clock_gettime(clock)
        fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    finally:
        child.kill()
        child.wait()
    assert used > 0
    assert abs(used - ticks) <= 0.05, (used, ticks)  # the same time, to the kernel's tick
    assert _cpu_clock(2**22 + 1) is None  # beyond Linux's largest pid


@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "--sizes", "ten"], "--sizes takes comma-separated ints"),
        (["bench", "--sizes", "0"], "at least one count >= 1"),
        (["bench", "--section", "nope"], "invalid choice"),
        (["bench", "--scale", "0"], "--scale must be > 0"),
        (["node", "--name", "n", "--port", "70000"], "port out of range"),
        (["node", "--name", "n", "--port", "1", "--gossip-interval", "-1"], "must be seconds > 0"),
        (["node", "--name", "n", "--port", "1", "--join", "nohost"], "expected HOST:PORT"),
        (["frobnicate"], "invalid choice"),
        (["inspect"], "one of the arguments --store --store-file is required"),
        (["inspect", "--store", "nonsense"], "inspect: cannot open the store <not an SQLAlchemy"),
        (["node", "--name", "n", "--port", "1", "--write-mode", "later"], "invalid choice"),
        (["node", "--name", "n", "--port", "1", "--durable-keys", "a,,b"], "comma-separated"),
        (["node", "--name", "n", "--port", "1", "--data-types", "a,,b"], "module names"),
        (
            ["node", "--name", "n", "--port", "1", "--data-types", "no_such_module_here"],
            "node: data_types must name modules this process can import: 'no_such_module_here'",
        ),
        (
            ["inspect", "--store", "sqlite://", "--data-types", "no_such_module_here"],
            "inspect: data_types must name modules this process can import",
        ),
    ],
)
def test_bad_arguments_get_a_one_line_error_not_a_traceback(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "thespian_dd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.subprocess
def test_help_describes_every_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "thespian_dd", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "demo" in result.stdout
    assert "bench" in result.stdout
    assert "inspect" in result.stdout


@pytest.mark.timeout(30)
def test_the_console_script_and_python_m_run_the_same_main() -> None:
    """``thespian-dd`` (setup.cfg's entry point) and ``python -m thespian_dd`` are one command."""
    config = configparser.ConfigParser(interpolation=None)
    config.read(Path(__file__).parents[1] / "setup.cfg")
    script = config["options.entry_points"]["console_scripts"].strip()
    name, _, target = script.partition(" = ")
    module, _, function = target.partition(":")
    assert name == "thespian-dd"
    assert getattr(importlib.import_module(module), function) is main
    assert thespian_dd.__main__.main is main


def _run(prog: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the command line as ``prog``: the installed ``thespian-dd`` script or ``python -m``."""
    if prog == "thespian-dd":
        script = Path(sysconfig.get_path("scripts")) / "thespian-dd"
        assert script.is_file(), f"no {script}: install the package (pip install -e .)"
        command = [str(script)]
    else:
        command = [sys.executable, "-m", "thespian_dd"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=60, check=check
    )


@pytest.mark.subprocess
@pytest.mark.parametrize("prog", ["thespian-dd", "python -m thespian_dd"])
def test_version_prints_the_package_and_its_version(prog: str) -> None:
    result = _run(prog, "--version")
    assert result.stdout == f"thespian_dd {thespian_dd.__version__}\n"
    assert thespian_dd.__version__ == version("thespian_dd")  # what pip says is installed


@pytest.mark.subprocess
@pytest.mark.parametrize("prog", ["thespian-dd", "python -m thespian_dd"])
def test_help_and_errors_name_the_program_as_it_was_run(prog: str) -> None:
    assert _run(prog, "--help").stdout.startswith(f"usage: {prog} [-h] [--version] COMMAND")
    assert _run(prog, "node", "--help").stdout.startswith(f"usage: {prog} node ")
    error = _run(prog, "frobnicate", check=False)
    assert error.returncode == 2
    assert error.stderr.splitlines()[-1].startswith(f"{prog}: error: argument COMMAND: invalid")

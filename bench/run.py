"""Runs every scenario against each server in turn and writes raw JSON per run, then the
report. ``bench/compare`` is the way in; it pins this process to core 1 and installs what
is missing first. See bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import uvloop

from bench import report
from bench.scenarios import QUICK, Bench, Settings
from bench.servers import SERVERS, BenchServer, Population, make_certificate

BENCH = Path(__file__).resolve().parent
LOADGEN_CPU = 1


def _log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def _machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def _sigterm(_signum: int, _frame: object) -> None:
    # Handled as Ctrl-C: the event loop's runner cancels the scenario cleanly (an exception
    # raised here could land in a protocol callback and be swallowed), and the finally
    # blocks stop the running server.
    signal.raise_signal(signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/compare", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer users, shorter windows, one run: a smoke check")
    ap.add_argument("--runs", type=int, default=None, help="runs per server (default 3, or 1 with --quick)")
    ap.add_argument("--servers", default="parley,prosody,ejabberd", help="comma-separated subset")
    ap.add_argument("--results", type=Path, default=BENCH / "results", help="where the raw JSON goes")
    ap.add_argument("--no-report", action="store_true", help="do not rewrite BENCHMARKS.md and the charts")
    ap.add_argument("--keep-work", action="store_true", help="keep the servers' data directories")
    ap.add_argument("--plain-sizes", default=None,
                    help="storm sizes that also get a PLAIN storm, comma-separated (default: the smallest)")
    args = ap.parse_args(argv)

    settings: Settings = QUICK if args.quick else Settings()
    if args.plain_sizes:
        settings = dataclasses.replace(settings, plain_sizes=tuple(int(x) for x in args.plain_sizes.split(",")))
    runs = args.runs or (1 if args.quick else 3)
    names = [n.strip().lower() for n in args.servers.split(",") if n.strip()]
    for n in names:
        if n not in SERVERS:
            ap.error(f"unknown server {n!r}; choose from {', '.join(SERVERS)}")
    if os.geteuid() != 0:
        ap.error("run as root: Prosody and ejabberd run as their own system users")

    signal.signal(signal.SIGTERM, _sigterm)
    os.sched_setaffinity(0, {LOADGEN_CPU})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # Collections are run between scenarios (Bench.settle), never inside a measurement.
    gc.disable()

    started = time.time()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    out_dir = args.results / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="parley-bench-"))
    os.chmod(work, 0o755)
    pop = Population(settings.population)
    cert, key = make_certificate(work / "cert")
    servers: dict[str, BenchServer] = {n: SERVERS[n](work, pop, cert, key) for n in names}
    meta: dict[str, Any] = {
        "command": "bench/compare" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""),
        "started": datetime.datetime.now().isoformat(timespec="seconds"), "quick": args.quick, "runs": runs,
        "machine": _machine(), "population": pop.size, "contacts_each": len(pop.contacts(0)),
        "settings": {k: v for k, v in vars(settings).items()},
        "versions": {}, "provisioning": {},
    }
    current: BenchServer | None = None
    try:
        _log(f"provisioning {pop.size} users with {len(pop.contacts(0))} contacts each on {', '.join(servers)}")
        _provision_all(servers, meta)
        # Written now and again at the end, so that a stopped run can still be reported.
        (out_dir / "meta.json").write_text(json.dumps(meta, indent=1))
        for run in range(1, runs + 1):
            # Each run visits the servers in another order, so slow drift on a shared
            # machine does not always land on the same server.
            order = names[run - 1:] + names[:run - 1]
            for name in order:
                srv = servers[name]
                _log(f"run {run}/{runs}: {srv.name}")
                current = srv
                srv.start()
                result = uvloop.run(_one_run(srv, pop, settings, run))
                srv.stop()
                current = None
                path = out_dir / f"{name}-run{run}.json"
                path.write_text(json.dumps(result, indent=1))
                bad = [s for s in result["scenarios"] if s.get("problems")]
                _log(f"  wrote {_shown(path)}" + (f"; {len(bad)} scenarios had problems" if bad else ""))
        meta["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
        meta["elapsed_s"] = round(time.time() - started, 1)
        (out_dir / "meta.json").write_text(json.dumps(meta, indent=1))
        _log(f"all runs done in {meta['elapsed_s'] / 60:.1f} min")
        if not args.no_report:
            md = report.write(out_dir, BENCH.parent / "BENCHMARKS.md", BENCH / "charts")
            _log(f"wrote {_shown(md)} and charts in bench/charts/")
    finally:
        if current is not None:
            current.stop()
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


_PRIMED: set[str] = set()


async def _one_run(srv: BenchServer, pop: Population, settings: Settings, run: int) -> dict[str, Any]:
    bench = Bench(srv, pop, settings)
    t0 = time.time()
    rss_fresh = srv.rss()
    primed = None
    if srv.name not in _PRIMED:
        primed = await bench.prime_scram()
        _PRIMED.add(srv.name)
        _log(f"  SCRAM keys primed: {primed}")
    scenarios = await bench.run_all(_log)
    return {"server": srv.name, "version": srv.version(), "run": run, "rss_fresh_bytes": rss_fresh,
            "primed": primed, "elapsed_s": round(time.time() - t0, 1), "scenarios": scenarios}


def _provision_all(servers: dict[str, BenchServer], meta: dict[str, Any]) -> None:
    """Parley's importer does not need the bench port, so it runs beside the others."""
    errors: list[BaseException] = []

    def provision(srv: BenchServer) -> None:
        t0 = time.time()
        try:
            steps = srv.provision()
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)
            return
        meta["provisioning"][srv.name] = {"seconds": round(time.time() - t0, 1), **{k: round(v, 1) for k, v in steps.items()}}
        _log(f"  provisioned {srv.name} in {time.time() - t0:.1f} s")

    background = [threading.Thread(target=provision, args=(s,)) for s in servers.values() if s.name == "Parley"]
    for t in background:
        t.start()
    for srv in servers.values():
        if srv.name != "Parley":
            provision(srv)
    for t in background:
        t.join()
    if errors:
        raise errors[0]
    for srv in servers.values():
        meta["versions"][srv.name] = srv.version()


def _shown(path: Path) -> str:
    """A path relative to the repository when it is inside it (--results may be anywhere)."""
    try:
        return str(path.relative_to(BENCH.parent))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())


"""BENCHMARKS.md and its charts from one results directory (raw JSON per server and run).

Every figure is the median over runs with the minimum and maximum beside it. Ratios are
Parley's median over the other server's median; the "better" column says which direction
is good for that metric, so a ratio is never read backwards.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVERS = ("Parley", "Prosody", "ejabberd")
Scenario = dict[str, Any]


@dataclass(frozen=True)
class Row:
    section: str
    case: str
    label: str
    match: Callable[[Scenario], bool]
    metric: str
    unit: str
    better: str  # "higher" or "lower"
    chart: str = ""


def _login(n: int, mech: str, tls: bool) -> Callable[[Scenario], bool]:
    return lambda s: s["scenario"] == "login" and s["clients"] == n and s["mechanism"] == mech and s["tls"] == tls


def _scn(name: str, tls: bool, **kw: Any) -> Callable[[Scenario], bool]:
    return lambda s: s["scenario"] == name and s["tls"] == tls and all(s.get(k) == v for k, v in kw.items())


def _muc_section(st: dict[str, Any]) -> str:
    return (f"Group chat fan-out: {st.get('muc_occupants', 1000):,} occupants in one room, "
            f"{st.get('muc_senders', 4)} senders x {st.get('muc_window', 4)} in flight")


def _rows(meta: dict[str, Any]) -> list[Row]:
    st = meta["settings"]
    sizes = sorted(st["storm_sizes"])
    rows: list[Row] = []
    for tls in (False, True):
        tname = "TLS" if tls else "plaintext"
        sec = "Login storm"
        for n in sizes:
            for mech in ("SCRAM-SHA-1", "PLAIN") if tls else ("SCRAM-SHA-1",):
                m = _login(n, mech, tls)
                c = f"{n:,} clients, {mech}, {tname}"
                rows += [Row(sec, c, "logins/s", m, "logins_per_s", "/s", "higher", "logins"),
                         Row(sec, c, "login time p50", m, "login_p50_ms", "ms", "lower"),
                         Row(sec, c, "login time p99", m, "login_p99_ms", "ms", "lower"),
                         Row(sec, c, "server CPU per login", m, "server_cpu_ms_per_login", "ms", "lower", "cpu_login")]
    for tls in (False, True):
        tname = "TLS" if tls else "plaintext"
        for n in sizes:
            m = _scn("idle_memory", tls, clients=n)
            c = f"{n:,} connections, {tname}"
            rows += [Row("Idle memory", c, "server RSS", m, "rss_mib", "MiB", "lower"),
                     Row("Idle memory", c, "RSS per connection", m, "rss_per_connection_kib", "KiB", "lower", "memory")]
    for tls in (False, True):
        tname = "TLS" if tls else "plaintext"
        for pairs, window in st["shapes"]:
            m = _scn("saturation", tls, pairs=pairs, window=window)
            c = f"{pairs} pairs x {window} each way, {tname}"
            sec = "One-to-one saturation (closed loop)"
            rows += [Row(sec, c, "delivered msgs/s", m, "msgs_per_s", "/s", "higher", "saturation"),
                     Row(sec, c, "server CPU per message", m, "server_cpu_us_per_msg", "µs", "lower", "cpu_msg"),
                     Row(sec, c, "latency p50", m, "latency_p50_ms", "ms", "lower"),
                     Row(sec, c, "latency p99", m, "latency_p99_ms", "ms", "lower", "sat_p99")]
    for tls in (False, True):
        tname = "TLS" if tls else "plaintext"
        m = _scn("fixed_rate", tls)
        sec = f"Fixed rate: {st['fixed_rate']:,} msgs/s between random online users"
        rows += [Row(sec, tname, "latency p50", m, "latency_p50_ms", "ms", "lower", "fixed"),
                 Row(sec, tname, "latency p99", m, "latency_p99_ms", "ms", "lower", "fixed"),
                 Row(sec, tname, "latency max", m, "latency_max_ms", "ms", "lower", "fixed"),
                 Row(sec, tname, "server CPU busy", m, "server_cpu_share", "core", "lower")]
    for tls in (False, True):
        tname = "TLS" if tls else "plaintext"
        m = _scn("fanout", tls)
        sec = "Presence fan-out: status changes to 20 online contacts"
        rows += [Row(sec, tname, "presence stanzas delivered/s", m, "presence_per_s", "/s", "higher", "fanout"),
                 Row(sec, tname, "server CPU per delivery", m, "server_cpu_us_per_delivery", "µs", "lower"),
                 Row(sec, tname, "latency p50", m, "latency_p50_ms", "ms", "lower"),
                 Row(sec, tname, "latency p99", m, "latency_p99_ms", "ms", "lower")]
    for tls in (False, True):
        tname = "TLS" if tls else "plaintext"
        m = _scn("muc", tls)
        sec = _muc_section(st)
        rows += [Row(sec, tname, "copies delivered/s", m, "deliveries_per_s", "/s", "higher", "muc"),
                 Row(sec, tname, "room messages/s", m, "room_msgs_per_s", "/s", "higher"),
                 Row(sec, tname, "server CPU per delivered copy", m, "server_cpu_us_per_delivery", "µs", "lower"),
                 Row(sec, tname, "latency p50", m, "latency_p50_ms", "ms", "lower"),
                 Row(sec, tname, "latency p99", m, "latency_p99_ms", "ms", "lower"),
                 Row(sec, tname, "all occupants joining", m, "join_s", "s", "lower")]
    return rows


def _headline(rows: list[Row], meta: dict[str, Any]) -> list[Row]:
    """One figure per scenario, plaintext and TLS: the ones a reader asks about first."""
    big = max(meta["settings"]["storm_sizes"])
    first_shape = meta["settings"]["shapes"][0]
    wanted = []
    for tname in ("plaintext", "TLS"):
        wanted += [
            ("Login storm", f"{big:,} clients, SCRAM-SHA-1, {tname}", "logins/s"),
            ("Login storm", f"{big:,} clients, SCRAM-SHA-1, {tname}", "server CPU per login"),
            ("One-to-one saturation (closed loop)", f"{first_shape[0]} pairs x {first_shape[1]} each way, {tname}",
             "delivered msgs/s"),
            ("One-to-one saturation (closed loop)", f"{first_shape[0]} pairs x {first_shape[1]} each way, {tname}",
             "server CPU per message"),
            (None, tname, "latency p99"),
            ("Presence fan-out: status changes to 20 online contacts", tname, "presence stanzas delivered/s"),
            (_muc_section(meta["settings"]), tname, "copies delivered/s"),
            ("Idle memory", f"{big:,} connections, {tname}", "RSS per connection"),
        ]
    out = []
    for sec, case, label in wanted:
        for r in rows:
            ok_sec = r.section.startswith("Fixed rate") if sec is None else r.section == sec
            if ok_sec and r.case == case and r.label == label:
                out.append(r)
                break
    plain = [r for r in rows if r.section == "Login storm" and ", PLAIN, TLS" in r.case and r.label == "logins/s"]
    return out + plain[-1:]


def load(results: Path) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    meta = json.loads((results / "meta.json").read_text())
    runs: dict[str, list[dict[str, Any]]] = {}
    for p in sorted(results.glob("*-run*.json")):
        r = json.loads(p.read_text())
        runs.setdefault(r["server"], []).append(r)
    return meta, runs


def values(runs: list[dict[str, Any]], row: Row) -> list[float]:
    out = []
    for r in runs:
        for s in r["scenarios"]:
            if row.match(s) and isinstance(s.get(row.metric), int | float):
                v = float(s[row.metric])
                if v == v:  # not NaN
                    out.append(v)
    return out


def _fmt(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _cell(vs: list[float]) -> str:
    if not vs:
        return "–"
    med = statistics.median(vs)
    if len(vs) == 1:
        return _fmt(med)
    return f"{_fmt(med)} ({_fmt(min(vs))}–{_fmt(max(vs))})"


def _ratio(a: list[float], b: list[float]) -> str:
    if not a or not b or statistics.median(b) == 0:
        return "–"
    return f"{statistics.median(a) / statistics.median(b):.2f}"


def _saturation_flags(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Figures where the load generator, not the server, may have been the limit."""
    notes = []
    for server, rs in runs.items():
        for r in rs:
            for s in r["scenarios"]:
                if s["scenario"] not in ("saturation", "fanout", "muc"):
                    continue
                if s.get("server_cpu_share", 1) < 0.85:
                    what = (f"{s['pairs']} pairs x {s['window']}" if s["scenario"] == "saturation"
                            else f"{s['occupants']} occupants" if s["scenario"] == "muc" else "fan-out")
                    notes.append(f"{server} run {r['run']}, {s['scenario']} {what} "
                                 f"{'TLS' if s['tls'] else 'plaintext'}: server core {s['server_cpu_share']:.0%} busy, "
                                 f"load generator core {s.get('loadgen_cpu_share', 0):.0%}")
    return notes


def _problems(runs: dict[str, list[dict[str, Any]]]) -> tuple[list[str], dict[str, int]]:
    out = []
    checked = {"messages": 0, "presence": 0, "logins": 0, "room": 0}
    for server, rs in runs.items():
        for r in rs:
            for s in r["scenarios"]:
                checked["messages"] += int(s.get("sent", 0)) if s["scenario"] in ("saturation", "fixed_rate") else 0
                checked["presence"] += int(s.get("deliveries_total", 0)) if s["scenario"] == "fanout" else 0
                checked["room"] += int(s.get("deliveries_total", 0)) if s["scenario"] == "muc" else 0
                checked["logins"] += int(s.get("logged_in", 0)) if s["scenario"] == "login" else 0
                for p in s.get("problems", []):
                    tag = s["scenario"] + (" TLS" if s.get("tls") else " plaintext")
                    out.append(f"{server} run {r['run']}, {tag}: {p}")
    return out, checked


def charts(rows: list[Row], runs: dict[str, list[dict[str, Any]]], out: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    titles = {
        "logins": ("Login storm: logins per second (higher is better)", "logins/s"),
        "cpu_login": ("Login storm: server CPU per login (lower is better)", "ms CPU"),
        "memory": ("Idle connections: server RSS per connection (lower is better)", "KiB"),
        "saturation": ("One-to-one saturation: delivered messages per second (higher is better)", "msgs/s"),
        "cpu_msg": ("One-to-one saturation: server CPU per message (lower is better)", "µs CPU"),
        "sat_p99": ("One-to-one saturation: p99 latency (lower is better)", "ms"),
        "fixed": ("Fixed 1,000 msgs/s: latency p50 / p99 / max (lower is better)", "ms"),
        "fanout": ("Presence fan-out: presence stanzas delivered per second (higher is better)", "stanzas/s"),
        "muc": ("Group chat fan-out: message copies delivered to occupants per second (higher is better)",
                "copies/s"),
    }
    colours = {"Parley": "#3b6fb6", "Prosody": "#e07b39", "ejabberd": "#4a9a5b"}
    made = []
    for key, (title, unit) in titles.items():
        sel = [r for r in rows if r.chart == key]
        if not sel:
            continue
        present = [s for s in SERVERS if s in runs]
        labels = [r.case + (f", {r.label.split()[-1]}" if key == "fixed" else "") for r in sel]
        fig, ax = plt.subplots(figsize=(max(7.0, 1.2 * len(sel) + 3), 4.8))
        width = 0.8 / max(1, len(present))
        for k, server in enumerate(present):
            meds, lo, hi = [], [], []
            for r in sel:
                vs = values(runs[server], r)
                m = statistics.median(vs) if vs else 0.0
                meds.append(m)
                lo.append(m - min(vs) if vs else 0.0)
                hi.append(max(vs) - m if vs else 0.0)
            xs = [i + (k - (len(present) - 1) / 2) * width for i in range(len(sel))]
            ax.bar(xs, meds, width, yerr=[lo, hi], capsize=3, label=server, color=colours.get(server))
        ax.set_xticks(range(len(sel)))
        ax.set_xticklabels([lbl.replace(", ", "\n") for lbl in labels], fontsize=7)
        ax.set_ylabel(unit)
        if key in ("sat_p99", "fixed"):
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = out / f"{key}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append((title, path.name))
    return made


def write(results: Path, md_path: Path, chart_dir: Path) -> Path:
    meta, runs = load(results)
    rows = [r for r in _rows(meta) if any(values(rs, r) for rs in runs.values())]
    made = charts(rows, runs, chart_dir)
    problems, checked = _problems(runs)
    flags = _saturation_flags(runs)
    present = [s for s in SERVERS if s in runs]
    others = [s for s in present if s != "Parley"]
    n_runs = {s: len(runs[s]) for s in present}
    rel_results = results.relative_to(md_path.parent) if results.is_relative_to(md_path.parent) else results
    rel_charts = chart_dir.relative_to(md_path.parent) if chart_dir.is_relative_to(md_path.parent) else chart_dir

    L: list[str] = []
    L.append("# Benchmarks: Parley, Prosody and ejabberd\n")
    L.append(f"Written by `{meta['command']}` (bench/report.py) from the raw results in "
             f"`{rel_results}/`. Started {meta['started']}, finished {meta.get('finished', '?')}, "
             f"{meta.get('elapsed_s', 0) / 60:.1f} min in all"
             + (", **quick mode: one short run, a smoke check rather than a measurement**" if meta.get("quick") else "")
             + ". How to run it and what each scenario measures: [bench/README.md](bench/README.md).\n")
    L.append("## Setup\n")
    L.append("| | |\n|---|---|")
    for s in present:
        # Each run records the version it started; a source tree can change between runs.
        seen = sorted({r.get("version", "?") for r in runs[s]}, key=lambda v: [r.get("version") for r in runs[s]].index(v))
        if len(seen) == 1:
            L.append(f"| {s} | {seen[0]} |")
        else:
            by_run = "; ".join(f"run {r['run']}: {r.get('version', '?')}" for r in sorted(runs[s], key=lambda r: r["run"]))
            L.append(f"| {s} | {by_run} |")
    m = meta["machine"]
    L.append(f"| machine | {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']} |")
    L.append("| pinning | server on core 0 (`taskset -c 0`), load generator on core 1 |")
    L.append(f"| users | {meta['population']:,} (`u0`..), each with {meta['contacts_each']} mutual ('both') contacts |")
    L.append("| runs | " + ", ".join(f"{s}: {n}" for s, n in n_runs.items()) + " (figures: median, with min–max over runs) |")
    prov = ", ".join(f"{s} {v['seconds']:.0f} s" for s, v in meta.get("provisioning", {}).items())
    L.append(f"| provisioning | {prov} |")
    L.append("")
    L.append("Same domain (`bench.test`), users, passwords, rosters and self-signed certificate (EC P-256) on all "
             "three; one c2s port offering plaintext and STARTTLS; no rate limits or shapers; offline storage on; "
             "roster versioning on; in-band registration off; no message archive (Parley's `[archive]` off, no mod_mam on the others); SCRAM iteration count 4096 everywhere. TLS figures "
             "are STARTTLS on that port, TLS 1.3. **PLAIN is measured over TLS only**: Parley never offers PLAIN "
             "without TLS (and Prosody is configured the same way), so there is no plaintext PLAIN figure; it is "
             f"measured at {', '.join(f'{n:,}' for n in meta['settings'].get('plain_sizes', []))} clients, since its cost per "
             "sign-in is the server's PBKDF2 whatever the number of clients. Parley is this repository's source tree "
             "as it stood when each run started; the Parley row above says which commit each run had.\n")

    L.append("## Correctness\n")
    if problems:
        L.append("**Some runs failed the exactly-once or sign-in checks; their figures are not trustworthy:**\n")
        L += [f"- {p}" for p in problems]
    else:
        room = (f", {checked['presence']:,} presence deliveries and {checked['room']:,} group chat message copies"
                if checked["room"] else f" and {checked['presence']:,} presence deliveries")
        L.append(f"Every run passed: {checked['logins']:,} sign-ins succeeded with the full roster, and each of "
                 f"{checked['messages']:,} messages{room} arrived exactly "
                 "once at its addressee (no loss, no duplicate, no misrouting).")
    echo = {srv: any(sc.get("self_echoes", 0) for r in rs for sc in r["scenarios"] if sc["scenario"] == "fanout")
            for srv, rs in runs.items()}
    if echo:
        L.append("")
        L.append("Presence fan-out, the changer's own session: "
                 + "; ".join(f"{srv} {'sends it a copy of each change' if e else 'sends it no copy'}"
                             for srv, e in echo.items())
                 + " (such copies are not counted in the fan-out figure).")
    L.append("")
    if flags:
        L.append("Figures where the server core was not kept busy, below 85% (the limit may then be the load "
                 "generator, the closed loop's window, a stall in the server, or other processes of this shared "
                 "machine taking the server's core, rather than the server's own speed):\n")
        L += [f"- {f}" for f in flags]
        L.append("")

    headline = _headline(rows, meta)
    if headline and others:
        L.append("## Headline\n")
        L.append("| scenario | metric | better | " + " | ".join(present)
                 + "".join(f" | Parley / {o}" for o in others) + " |")
        L.append("|---|---|---|" + "---|" * len(present) + "---|" * len(others))
        for r in headline:
            cells = [_cell(values(runs[s], r)) for s in present]
            ratios = [_ratio(values(runs.get("Parley", []), r), values(runs[o], r)) for o in others]
            L.append(f"| {r.section}, {r.case} | {r.label} ({r.unit}) | {r.better} | " + " | ".join(cells)
                     + "".join(f" | {x}" for x in ratios) + " |")
        L.append("")

    head = "| case | metric | better | " + " | ".join(present) + "".join(f" | Parley / {o}" for o in others) + " |"
    sep = "|---|---|---|" + "---|" * len(present) + "---|" * len(others)
    section = None
    L.append("## Results\n")
    L.append("Median of the runs, with (min–max). Ratios are Parley's median over the other server's; "
             "read them with the 'better' column: above 1 is good for Parley where higher is better, "
             "below 1 where lower is better.\n")
    for r in rows:
        if r.section != section:
            if section is not None:
                L.append("")
            section = r.section
            L.append(f"### {section}\n")
            L.append(head)
            L.append(sep)
        cells = [_cell(values(runs[s], r)) for s in present]
        ratios = [_ratio(values(runs.get("Parley", []), r), values(runs[o], r)) for o in others]
        L.append(f"| {r.case} | {r.label} ({r.unit}) | {r.better} | " + " | ".join(cells)
                 + "".join(f" | {x}" for x in ratios) + " |")
    L.append("")
    L.append("## Charts\n")
    L.append("Bars are medians; whiskers span the minimum and maximum over runs.\n")
    for title, name in made:
        L.append(f"![{title}]({rel_charts}/{name})\n")
    L.append("## How the figures are made\n")
    L.append(_METHOD)
    # The goals and what stands between Parley and them are kept by hand beside the script.
    goals = Path(__file__).with_name("goals.md")
    if goals.exists():
        L.append("")
        L.append(goals.read_text().rstrip())
    md_path.write_text("\n".join(L) + "\n")
    return md_path


_METHOD = """\
- **Login storm**: N clients sign in with at most 64 sign-ins in flight: connect, (STARTTLS,)
  SASL, bind, roster get (`ver=''`, so the full roster comes back), initial presence, then an
  XMPP ping whose answer marks the end of the sign-in. logins/s is N over the wall time of
  the whole storm; login time is per client, from connect to the ping's answer; server CPU
  is the server's CPU time (every process of it) during the storm, divided by N. Contacts
  already online get the new user's presence and answer probes, as they would in production.
  The clients keep each user's SCRAM SaltedPassword across runs (as real clients do), so the
  client's PBKDF2 does not limit SCRAM figures; PLAIN makes the server run PBKDF2 on every
  sign-in.
- **Idle memory**: after the SCRAM storm the N sessions stay connected and idle; server RSS
  (sum over its processes) is read once the server is idle. Per connection is (RSS with N
  connected - RSS just before the storm) / N.
- **One-to-one saturation**: with the largest population online, P pairs each keep W
  messages in flight in each direction (closed loop: a delivery triggers the partner's next
  message). After a warm-up, delivered msgs/s, server CPU per message and latency (send to
  receipt, same clock) are taken over a fixed window. Every message's body carries a nonce,
  a sequence number and its send time; the run fails on any loss, duplicate or misrouting.
- **Fixed rate**: 1,000 msgs/s (open loop, paced every millisecond) between random pairs of
  online users; latency p50/p99/max over every message.
- **Presence fan-out**: with every user online, a set of users spread over the ring keep
  changing status (next change when all 20 contacts got the previous one); each change must
  reach each of the 20 contacts exactly once. Copies a server sends back to the changer's own
  session are counted apart and left out of the figure (see Correctness for who sends them).
- **Group chat fan-out**: with every user online, R of them join one room on each server's
  chat service (`bench@conference.bench.test`, each with its own nickname; the first creates
  it as an instant room); a join is done when the occupant got its own presence (status code
  110) from the room. Then a few senders keep a few groupchat messages in flight each (the
  next when the last reached all R); every message must reach every occupant exactly once,
  the sender's own copy (the room's echo) included. Copies delivered per second count each
  occupant's copy; room messages per second are that over R; server CPU is per delivered
  copy; latency is per copy, from send to receipt. Afterwards every occupant leaves. The
  presence of the joins and leaves (R² stanzas for R joins) is not part of any figure
  except the time all joins took.
- Medians of the runs with min–max; each run starts the server afresh on the same data, and
  the order of the servers rotates between runs. The machine is shared, so single runs are
  noisy; look at the spread before reading much into a small ratio.
"""


if __name__ == "__main__":
    target = Path(sys.argv[1])
    repo = Path(__file__).resolve().parent.parent
    print(write(target, repo / "BENCHMARKS.md", repo / "bench" / "charts"))

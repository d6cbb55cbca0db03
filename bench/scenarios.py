"""The benchmark scenarios. Each is bounded in time and in count, talks to 127.0.0.1 only,
and returns a JSON-ready dict whose ``problems`` list is empty only when every stanza it
sent arrived exactly once at the right addressee (and every sign-in succeeded).
"""

from __future__ import annotations

import asyncio
import gc
import random
import re
import resource
import ssl
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bench import loadgen as lg
from bench.servers import (
    DOMAIN,
    HOST,
    MUC_MAX_OCCUPANTS,
    MUC_SERVICE,
    PORT,
    BenchServer,
    Population,
)

Result = dict[str, Any]


@dataclass(frozen=True)
class Settings:
    storm_sizes: tuple[int, ...] = (2000, 10000)
    # PLAIN's cost per sign-in is the server's PBKDF2, whatever the number of clients; one
    # size keeps the full comparison well inside the hour (--plain-sizes adds more).
    plain_sizes: tuple[int, ...] = (2000,)
    login_concurrency: int = 64
    # A storm is given 60 s plus 40 ms per client, and stops early if nothing finishes for 20 s.
    login_deadline_s: float = 60.0
    warmup_s: float = 1.0
    measure_s: float = 4.0
    drain_s: float = 15.0
    grace_s: float = 0.5
    # (pairs, messages in flight per direction of each pair)
    shapes: tuple[tuple[int, int], ...] = ((16, 16), (128, 4), (1000, 1))
    max_messages: int = 2_000_000
    fixed_rate: int = 1000
    fixed_s: float = 6.0
    fanout_changers: int = 250
    fanout_window: int = 1
    idle_s: float = 3.0
    settle_max_s: float = 30.0
    # Group chat: R occupants in one room; S senders keep W groupchat messages in flight
    # each (closed loop: the next when the last reached all R).
    muc_occupants: int = 1000
    # Joining 1,000 occupants takes each server a minute or two; TLS adds little to a
    # room's fan-out, so the full comparison measures it over plaintext only.
    muc_tls: bool = False
    muc_senders: int = 4
    muc_window: int = 4
    muc_join_concurrency: int = 16
    # Joining R occupants makes the room send R² presence stanzas (leaving, half that):
    # each phase is given 60 s plus 200 µs per R² (260 s at 1,000; Prosody took 120 s on
    # a busy machine), and stops early when no occupant has got its own presence for 20 s.
    muc_phase_s: float = 60.0
    muc_phase_us_per_presence: float = 200.0
    muc_stall_s: float = 20.0
    # A cap on copies delivered (messages times occupants).
    muc_max_deliveries: int = 4_000_000

    @property
    def population(self) -> int:
        return max(self.storm_sizes)


QUICK = Settings(storm_sizes=(500, 2000), plain_sizes=(500,), warmup_s=1.0, measure_s=3.0, fixed_s=4.0,
                 shapes=((16, 16), (128, 4), (1000, 1)), fanout_changers=200, idle_s=2.0,
                 muc_occupants=200, muc_tls=True)


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _ms(values_us: Sequence[float], p: float) -> float:
    return round(lg.percentile(values_us, p) / 1000, 3)


@dataclass
class Bench:
    server: BenchServer
    population: Population
    settings: Settings
    target: lg.Target = field(default_factory=lambda: lg.Target(HOST, PORT, DOMAIN))
    tls: ssl.SSLContext = field(default_factory=lg.client_tls_context)

    def users(self, n: int) -> list[tuple[int, str, str]]:
        pop = self.population
        return [(i, pop.user(i), pop.password(i)) for i in range(n)]

    async def settle(self) -> float:
        """Wait until the server is idle (under 3% of a core for half a second), so that one
        scenario's tail (sign-outs, unavailable presence) is not billed to the next."""
        gc.collect()
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.settings.settle_max_s:
            c0 = self.server.cpu()
            await asyncio.sleep(0.5)
            if self.server.cpu() - c0 < 0.015:
                break
        return round(time.monotonic() - t0, 2)

    async def restart(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.server.stop)
        await loop.run_in_executor(None, self.server.start)

    # --- SCRAM key priming ----------------------------------------------------------------

    async def prime_scram(self) -> Result:
        """Learn every user's salt from the server (first SASL step, then abort) and derive
        the keys on both cores before anything is measured."""
        t0 = time.perf_counter()
        sem = asyncio.Semaphore(64)
        found: list[tuple[str, bytes, int]] = []

        async def one(i: int) -> None:
            async with sem:
                found.append(await _salt_of(self.target, self.population.user(i), self.population.password(i)))

        await asyncio.gather(*(one(i) for i in range(self.population.size)))
        with ProcessPoolExecutor(2) as ex:
            keys = list(ex.map(_derive, found, chunksize=128))
        for (pw, salt, it), k in zip(found, keys, strict=True):
            lg._SCRAM_CACHE[(pw, salt, it)] = k
        return {"users": len(found), "seconds": round(time.perf_counter() - t0, 2)}

    # --- login storm and idle memory ------------------------------------------------------

    async def login_storm(self, n: int, mechanism: str, tls: bool) -> tuple[Result, list[lg.Client]]:
        settled = await self.settle()
        s = self.settings
        rss0 = self.server.rss()
        cpu0, own0 = self.server.cpu(), _own_cpu()
        storm = await lg.login_many(self.users(n), self.target, mechanism, self.tls if tls else None,
                                    s.login_concurrency, s.login_deadline_s + 0.04 * n)
        cpu1, own1 = self.server.cpu(), _own_cpu()
        ok = [r for r in storm.results if r.ok]
        times = [r.seconds * 1e6 for r in ok]
        expected_items = len(self.population.contacts(0))
        bad_rosters = sum(1 for r in ok if r.roster_items != expected_items)
        problems = []
        if len(ok) != n:
            errors = sorted({r.error for r in storm.results if not r.ok})
            problems.append(f"{n - len(ok)} of {n} sign-ins failed: {'; '.join(errors[:3])}")
        if bad_rosters:
            problems.append(f"{bad_rosters} rosters did not have {expected_items} items")
        res: Result = {
            "scenario": "login", "mechanism": mechanism, "tls": tls, "clients": n,
            "logged_in": len(ok), "wall_s": round(storm.wall, 3),
            "logins_per_s": round(len(ok) / storm.wall, 1) if storm.wall else 0.0,
            "login_p50_ms": _ms(times, 50), "login_p99_ms": _ms(times, 99),
            "server_cpu_s": round(cpu1 - cpu0, 3),
            "server_cpu_ms_per_login": round((cpu1 - cpu0) / max(1, len(ok)) * 1000, 3),
            "loadgen_cpu_share": round((own1 - own0) / storm.wall, 3) if storm.wall else 0.0,
            "rss_before_bytes": rss0, "settle_s": settled,
            "cipher": ok[0].cipher if ok else "", "problems": problems,
        }
        return res, [c for c in storm.clients if c.online]

    async def idle_memory(self, clients: list[lg.Client], n: int, tls: bool, rss_before: int) -> Result:
        await asyncio.sleep(self.settings.idle_s)
        await self.settle()
        rss = self.server.rss()
        alive = sum(1 for c in clients if c.online and not c.dead)
        problems = [] if alive == n else [f"only {alive} of {n} idle connections still open"]
        return {"scenario": "idle_memory", "tls": tls, "clients": n, "connected": alive,
                "rss_bytes": rss, "rss_mib": round(rss / 2**20, 1),
                "rss_per_connection_kib": round((rss - rss_before) / max(1, n) / 1024, 2),
                "problems": problems}

    # --- one-to-one saturation --------------------------------------------------------------

    async def saturation(self, clients: list[lg.Client], pairs: int, window: int, tls: bool) -> Result:
        s = self.settings
        pairs = min(pairs, len(clients) // 2)
        used = clients[:2 * pairs]
        # Positions double as user numbers below: the storm returns clients in user order.
        if any(c.idx != i for i, c in enumerate(used)):
            raise RuntimeError("saturation needs users u0..u(2*pairs-1) online, in order")
        stop = False
        tracker = lg.MessageTracker(s.max_messages)
        flusher = lg.Flusher()
        domain = self.target.domain

        def on_delivered(seq: int) -> None:
            # Closed loop: a delivery frees one slot of the window from the partner.
            if stop or tracker.sent >= tracker.capacity:
                return
            dst = tracker.dest[seq]
            src = dst ^ 1
            flusher.queue(used[src], tracker.make(src, dst, domain))

        tracker.on_delivered = on_delivered
        for c in used:
            c.tail = b""
            c.sink = tracker
        for k in range(pairs):
            a, b = 2 * k, 2 * k + 1
            for _ in range(window):
                flusher.queue(used[a], tracker.make(a, b, domain))
                flusher.queue(used[b], tracker.make(b, a, domain))
        window_res = await self._measure()
        stop = True
        drained = await self._drain(lambda: tracker.received >= tracker.sent, used)
        for c in used:
            c.sink = None
        t_a, t_b = window_res["t_from"], window_res["t_to"]
        delivered = tracker.delivered_between(t_a, t_b)
        secs = (t_b - t_a) / 1e6
        lat = tracker.latencies_us(t_a, t_b)
        res: Result = {
            "scenario": "saturation", "tls": tls, "pairs": pairs, "window": window,
            "in_flight": 2 * pairs * window, "sent": tracker.sent, "delivered_total": tracker.received,
            "msgs_per_s": round(delivered / secs, 1),
            "server_cpu_us_per_msg": round(window_res["server_cpu_s"] / max(1, delivered) * 1e6, 2),
            "server_cpu_share": round(window_res["server_cpu_s"] / secs, 3),
            "loadgen_cpu_share": round(window_res["own_cpu_s"] / secs, 3),
            "latency_p50_ms": _ms(lat, 50), "latency_p99_ms": _ms(lat, 99),
            "drain_s": drained, "hit_count_bound": tracker.sent >= tracker.capacity,
        }
        res["problems"] = _message_problems(tracker, used)
        return res

    async def _measure(self) -> Result:
        s = self.settings
        await asyncio.sleep(s.warmup_s)
        t_a, cpu_a, own_a = lg.now_us(), self.server.cpu(), _own_cpu()
        await asyncio.sleep(s.measure_s)
        t_b, cpu_b, own_b = lg.now_us(), self.server.cpu(), _own_cpu()
        return {"t_from": t_a, "t_to": t_b, "server_cpu_s": cpu_b - cpu_a, "own_cpu_s": own_b - own_a}

    async def _drain(self, done: Callable[[], bool], used: Sequence[lg.Client]) -> float:
        """Wait for everything in flight, then a little longer so that duplicates show."""
        t0 = time.monotonic()
        while not done() and time.monotonic() - t0 < self.settings.drain_s:
            if any(c.dead for c in used):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(self.settings.grace_s)
        return round(time.monotonic() - t0, 2)

    # --- fixed rate ------------------------------------------------------------------------------

    async def fixed_rate(self, clients: list[lg.Client], tls: bool) -> Result:
        s = self.settings
        tracker = lg.MessageTracker(s.fixed_rate * int(s.fixed_s + 2))
        flusher = lg.Flusher()
        domain = self.target.domain
        for c in clients:
            c.tail = b""
            c.sink = tracker
        rng = random.Random(20240501)
        m = len(clients)
        total = int(s.fixed_rate * s.fixed_s)
        cpu0, own0 = self.server.cpu(), _own_cpu()
        t0 = time.perf_counter()
        sent = 0
        while sent < total and time.perf_counter() - t0 < s.fixed_s + 2:
            due = min(total, int((time.perf_counter() - t0) * s.fixed_rate))
            while sent < due:
                a, b = rng.sample(range(m), 2)
                flusher.queue(clients[a], tracker.make(clients[a].idx, clients[b].idx, domain))
                sent += 1
            await asyncio.sleep(0.001)
        wall = time.perf_counter() - t0
        cpu1, own1 = self.server.cpu(), _own_cpu()
        drained = await self._drain(lambda: tracker.received >= tracker.sent, clients)
        for c in clients:
            c.sink = None
        lat = tracker.latencies_us(0, 2**62)
        res: Result = {
            "scenario": "fixed_rate", "tls": tls, "online": m, "target_rate": s.fixed_rate,
            "sent": tracker.sent, "achieved_rate": round(tracker.sent / wall, 1),
            "latency_p50_ms": _ms(lat, 50), "latency_p99_ms": _ms(lat, 99),
            "latency_max_ms": round(max(lat) / 1000, 3) if lat else float("nan"),
            "server_cpu_share": round((cpu1 - cpu0) / wall, 3),
            "loadgen_cpu_share": round((own1 - own0) / wall, 3), "drain_s": drained,
        }
        res["problems"] = _message_problems(tracker, clients)
        return res

    # --- presence fan-out ---------------------------------------------------------------------

    async def fanout(self, clients: list[lg.Client], tls: bool) -> Result:
        s = self.settings
        pop = self.population
        by_idx = {c.idx: c for c in clients}
        # Only users whose every contact is online change status.
        eligible = [c.idx for c in clients if all(x in by_idx for x in pop.contacts(c.idx))]
        k = min(s.fanout_changers, len(eligible))
        step = max(1, len(eligible) // max(1, k))
        changers = eligible[::step][:k]
        n_contacts = len(pop.contacts(0))
        stop = False
        flusher = lg.Flusher()
        cap = 4_000_000 // max(1, n_contacts)
        tracker = lg.PresenceTracker(cap, pop.contacts)

        def on_complete(seq: int) -> None:
            if stop or tracker.sent >= tracker.capacity:
                return
            src = tracker.src[seq]
            flusher.queue(by_idx[src], tracker.make(src, n_contacts))

        tracker.on_complete = on_complete
        for c in clients:
            c.tail = b""
            c.sink = tracker
        for src in changers:
            for _ in range(s.fanout_window):
                flusher.queue(by_idx[src], tracker.make(src, n_contacts))
        window_res = await self._measure()
        stop = True
        drained = await self._drain(lambda: tracker.missing() == 0, clients)
        for c in clients:
            c.sink = None
        t_a, t_b = window_res["t_from"], window_res["t_to"]
        secs = (t_b - t_a) / 1e6
        in_window = [i for i, t in enumerate(tracker.deliver_at) if t_a <= t < t_b]
        delivered = len(in_window)
        lat = [tracker.lat[i] for i in in_window]
        problems = []
        missing = tracker.missing()
        if missing:
            problems.append(f"{missing} presence deliveries lost")
        if tracker.duplicates:
            problems.append(f"{tracker.duplicates} presence deliveries duplicated")
        if tracker.misrouted:
            problems.append(f"{tracker.misrouted} presence stanzas reached a non-contact")
        dead = [c for c in clients if c.dead]
        if dead:
            problems.append(f"{len(dead)} connections closed: {dead[0].dead[:200]}")
        return {
            "scenario": "fanout", "tls": tls, "changers": len(changers), "window": s.fanout_window,
            "contacts_each": n_contacts, "changes": tracker.sent, "deliveries_total": tracker.delivered,
            "presence_per_s": round(delivered / secs, 1),
            "changes_per_s": round(delivered / secs / max(1, n_contacts), 1),
            "server_cpu_us_per_delivery": round(window_res["server_cpu_s"] / max(1, delivered) * 1e6, 2),
            "server_cpu_share": round(window_res["server_cpu_s"] / secs, 3),
            "loadgen_cpu_share": round(window_res["own_cpu_s"] / secs, 3),
            "latency_p50_ms": _ms(lat, 50), "latency_p99_ms": _ms(lat, 99),
            "self_echoes": tracker.echoes, "drain_s": drained, "problems": problems,
        }

    # --- group chat fan-out -------------------------------------------------------------------

    async def muc(self, clients: list[lg.Client], tls: bool) -> Result:
        """R occupants join one room (the first creates it as an instant room), a few
        senders keep groupchat messages in flight, each of which must reach all R exactly
        once (the sender's own echo included), and then every occupant leaves again, so
        that the room's presence never reaches another scenario."""
        s = self.settings
        room = f"bench@{MUC_SERVICE}"
        r = min(s.muc_occupants, MUC_MAX_OCCUPANTS, len(clients))
        occupants = clients[:r]
        problems: list[str] = []
        if r < s.muc_occupants:
            problems.append(f"only {r} occupants, not {s.muc_occupants} (online {len(clients)}, "
                            f"the servers' room limit {MUC_MAX_OCCUPANTS})")
        res: Result = {"scenario": "muc", "tls": tls, "occupants": r, "room": room}
        inside: list[int] = []
        try:
            join, inside = await self._room_phase(occupants, room, list(range(r)), False, problems)
            res.update(join)
            if len(inside) == r:
                res.update(await self._room_messages(clients, occupants, room, problems))
            else:
                problems.append("no messages sent: not every occupant is in the room")
        finally:
            if inside:
                leave, _ = await self._room_phase(occupants, room, inside, True, problems)
                res.update(leave)
            for c in clients:
                c.sink = None
                c.tail = b""
        dead = [c for c in occupants if c.dead]
        if dead:
            problems.append(f"{len(dead)} connections closed: {dead[0].dead[:200]}")
        res["problems"] = problems
        return res

    async def _room_phase(self, occupants: Sequence[lg.Client], room: str, which: list[int], leaving: bool,
                          problems: list[str]) -> tuple[Result, list[int]]:
        """Join (or leave) the occupants ``which`` (slots), at most ``muc_join_concurrency``
        at a time; one is in (or out) when its own presence from the room (status code 110)
        has come. On joining, the first creates the room alone. Returns the figures and the
        slots that made it."""
        s = self.settings
        what = "leave" if leaving else "join"
        slots = {c.idx: k for k, c in enumerate(occupants)}
        nicks = [f"n{c.idx}" for c in occupants]
        loop = asyncio.get_running_loop()
        done: dict[int, asyncio.Future[bool]] = {k: loop.create_future() for k in which}

        def finished(slot: int, ok: bool) -> None:
            f = done.get(slot)
            if f is not None and not f.done():
                f.set_result(ok)

        sink = lg.RoomPresenceSink(slots, [n.encode() for n in nicks], leaving,
                                   on_self=lambda k: finished(k, True), on_refused=lambda k: finished(k, False))
        for c in occupants:
            c.tail = b""
            c.sink = sink
        n_presence = len(which) ** 2
        # Joins and leaves alike are given the bound of R² stanzas.
        deadline = s.muc_phase_s + s.muc_phase_us_per_presence * n_presence / 1e6
        t0 = time.perf_counter()
        cpu0 = self.server.cpu()
        out: Result = {}
        order = list(which)
        sent: set[int] = set()
        if not leaving and order:
            # The creator alone, then its instant-room request (XEP-0045 §10.1.2; Parley and
            # ejabberd open a new room at once anyway, Prosody is set not to lock it).
            first = order.pop(0)
            sent.add(first)
            occupants[first].write(lg.muc_join(room, nicks[first]))
            try:
                ok = await asyncio.wait_for(asyncio.shield(done[first]), s.muc_stall_s)
            except TimeoutError:
                ok = False
            if ok:
                out["instant_room"] = await self._instant_room(occupants[first], room)
                occupants[first].tail = b""
                occupants[first].sink = sink
            else:
                problems.append("the first join did not create the room: "
                                + (sink.samples[0] if sink.samples else f"no answer in {s.muc_stall_s:.0f} s"))
                order = []
        sem = asyncio.Semaphore(s.muc_join_concurrency)
        last = [time.perf_counter()]

        async def one(k: int) -> None:
            async with sem:
                sent.add(k)
                occupants[k].write(lg.muc_leave(room, nicks[k]) if leaving else lg.muc_join(room, nicks[k]))
                # Shielded: a phase that runs out keeps what each future says.
                await asyncio.shield(done[k])
                last[0] = time.perf_counter()

        pending: set[asyncio.Future[None]] = {asyncio.ensure_future(one(k)) for k in order}
        stopped = ""
        while pending:
            now = time.perf_counter()
            if now - t0 > deadline:
                stopped = f"the {deadline:.0f} s deadline"
            elif now - last[0] > s.muc_stall_s:
                stopped = f"no progress for {s.muc_stall_s:.0f} s"
            elif any(c.dead for c in occupants):
                stopped = "a closed connection"
            if stopped:
                break
            _, pending = await asyncio.wait(pending, timeout=0.5)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
        wall = time.perf_counter() - t0
        cpu = self.server.cpu() - cpu0
        # An occupant's own presence may come before the copies of its presence to the
        # others: the sink stays until the server is idle, so that they are counted here
        # and reach no other sink.
        settled = await self.settle()
        for c in occupants:
            c.sink = None
            c.tail = b""
        made = [k for k in which if done[k].done() and done[k].result()]
        refused = sum(1 for k in which if done[k].done() and not done[k].result())
        for f in done.values():
            f.cancel()
        if len(made) < len(which):
            problems.append(f"{len(which) - len(made)} of {len(which)} occupants did not {what}: {refused} refused, "
                            f"{len(sent) - len(made) - refused} unanswered, {len(which) - len(sent)} never sent"
                            + (f" (stopped by {stopped} after {wall:.1f} s)" if stopped else ""))
        if sink.wrong_nick:
            problems.append(f"{sink.wrong_nick} self-presences in the {what} phase named another occupant")
        problems += [f"{what}: {x}" for x in sink.samples]
        out.update({
            f"{what}_s": round(wall, 2), f"{what}_server_cpu_s": round(cpu, 3), f"{what}_settle_s": settled,
            f"{what}_presence_received": sink.presence,
            # For R joins the room sends each joiner everyone's presence and everyone the
            # joiner's: R² stanzas; for R leaves, each leaver's to those still in: R(R+1)/2.
            f"{what}_presence_expected": len(which) * (len(which) + 1) // 2 if leaving else n_presence,
            f"{what}_self_extra": sink.extra, f"{what}_self_unverified": sink.unverified,
            "left" if leaving else "joined": len(made), f"{what}_refused": refused,
        })
        if not leaving:
            out["joins_per_s"] = round(len(made) / wall, 1) if wall else 0.0
        return out, made

    async def _instant_room(self, creator: lg.Client, room: str) -> str:
        """The owner's empty configuration form; the answer's type (or what went wrong)."""
        creator.sink = None
        creator.buf = b""
        # The waiter is in place before the request leaves: a signed-in client with no
        # waiter drops what it receives, and the answer can come before a task would start.
        fut: asyncio.Future[re.Match[bytes]] = asyncio.get_running_loop().create_future()
        creator.waiter = (lg.iq_pattern("lg-mo"), fut)
        creator.write(lg.muc_instant_room(room, "lg-mo"))
        try:
            m = await asyncio.wait_for(fut, self.settings.muc_stall_s)
        except TimeoutError:
            return f"no answer in {self.settings.muc_stall_s:.0f} s"
        except lg.LoginError as e:
            return f"no answer: {e}"
        finally:
            creator.waiter = None
            creator.buf = b""
        kind = lg._type_of(m.group(0)).decode()
        return kind if kind == "result" else f"{kind}: {m.group(0)[:300].decode(errors='replace')}"

    async def _room_messages(self, clients: list[lg.Client], occupants: Sequence[lg.Client], room: str,
                             problems: list[str]) -> Result:
        s = self.settings
        r = len(occupants)
        slots = {c.idx: k for k, c in enumerate(occupants)}
        k = max(1, min(s.muc_senders, r))
        senders = [occupants[i * r // k] for i in range(k)]
        stop = False
        flusher = lg.Flusher()
        tracker = lg.RoomMessageTracker(max(k * s.muc_window, s.muc_max_deliveries // r), slots, room)

        def on_complete(seq: int) -> None:
            if stop or tracker.sent >= tracker.capacity:
                return
            src = tracker.src[seq]
            flusher.queue(occupants[src], tracker.make(src))

        tracker.on_complete = on_complete
        # Everyone online listens, so that a copy reaching a non-occupant shows.
        for c in clients:
            c.tail = b""
            c.sink = tracker
        for c in senders:
            for _ in range(s.muc_window):
                flusher.queue(c, tracker.make(slots[c.idx]))
        window_res = await self._measure()
        stop = True
        drained = await self._drain(lambda: tracker.missing() == 0, occupants)
        for c in clients:
            c.sink = None
            c.tail = b""
        t_a, t_b = window_res["t_from"], window_res["t_to"]
        secs = (t_b - t_a) / 1e6
        in_window = [i for i, t in enumerate(tracker.deliver_at) if t_a <= t < t_b]
        delivered = len(in_window)
        lat = [tracker.lat[i] for i in in_window]
        missing = tracker.missing()
        if missing:
            incomplete = sum(1 for q in range(tracker.sent) if tracker.count[q] < r)
            problems.append(f"{missing} of {tracker.sent * r} copies lost ({incomplete} of {tracker.sent} "
                            "messages did not reach every occupant)")
        if tracker.duplicates:
            problems.append(f"{tracker.duplicates} copies duplicated")
        if tracker.misrouted:
            problems.append(f"{tracker.misrouted} copies reached a user who is not in the room")
        if tracker.bounced:
            problems.append(f"{tracker.bounced} messages refused by the server with an error")
        problems += tracker.samples
        return {
            "senders": k, "window": s.muc_window, "in_flight": k * s.muc_window,
            "messages": tracker.sent, "deliveries_total": tracker.delivered,
            "deliveries_per_s": round(delivered / secs, 1),
            "room_msgs_per_s": round(delivered / secs / r, 1),
            "server_cpu_us_per_delivery": round(window_res["server_cpu_s"] / max(1, delivered) * 1e6, 2),
            "server_cpu_share": round(window_res["server_cpu_s"] / secs, 3),
            "loadgen_cpu_share": round(window_res["own_cpu_s"] / secs, 3),
            "latency_p50_ms": _ms(lat, 50), "latency_p99_ms": _ms(lat, 99),
            "drain_s": drained, "hit_count_bound": tracker.sent >= tracker.capacity,
        }

    # --- everything, in order ----------------------------------------------------------------

    async def run_all(self, log: Callable[[str], None]) -> list[Result]:
        """Every scenario, plaintext first and then TLS. The largest SCRAM storm's clients stay
        online for the message and presence scenarios, so those run with the full population
        signed in."""
        out: list[Result] = []
        s = self.settings

        def record(res: Result) -> None:
            out.append(res)
            brief = {k: v for k, v in res.items() if k in _BRIEF}
            log(f"  {res['scenario']:<12} {'tls' if res.get('tls') else 'plain':<5} {brief}"
                + (f"  PROBLEMS: {res['problems']}" if res.get("problems") else ""))

        for tls in (False, True):
            mechanisms = ("SCRAM-SHA-1", "PLAIN") if tls else ("SCRAM-SHA-1",)
            for n in sorted(s.storm_sizes):
                for mech in mechanisms:
                    if mech == "PLAIN" and n not in s.plain_sizes:
                        continue
                    if mech == "SCRAM-SHA-1":
                        # A fresh server, so that RSS per connection is not hidden by heap
                        # that the previous scenario grew and the runtime kept.
                        await self.restart()
                    res, clients = await self.login_storm(n, mech, tls)
                    record(res)
                    try:
                        if mech == "SCRAM-SHA-1":
                            record(await self.idle_memory(clients, n, tls, res["rss_before_bytes"]))
                        if mech == "SCRAM-SHA-1" and n == s.population and len(clients) == n:
                            for pairs, window in s.shapes:
                                record(await self.saturation(clients, pairs, window, tls))
                                await self.settle()
                            record(await self.fixed_rate(clients, tls))
                            await self.settle()
                            record(await self.fanout(clients, tls))
                            if s.muc_tls or not tls:
                                await self.settle()
                                record(await self.muc(clients, tls))
                    finally:
                        await lg.logout_all(clients)
        return out


_BRIEF = {"clients", "mechanism", "logins_per_s", "login_p99_ms", "server_cpu_ms_per_login", "rss_mib",
          "rss_per_connection_kib", "pairs", "window", "msgs_per_s", "server_cpu_us_per_msg", "latency_p50_ms",
          "latency_p99_ms", "latency_max_ms", "achieved_rate", "presence_per_s", "loadgen_cpu_share",
          "occupants", "joins_per_s", "deliveries_per_s", "room_msgs_per_s", "server_cpu_us_per_delivery"}


def _message_problems(tracker: lg.MessageTracker, used: Sequence[lg.Client]) -> list[str]:
    problems = []
    if tracker.lost():
        problems.append(f"{tracker.lost()} of {tracker.sent} messages lost")
    if tracker.duplicates:
        problems.append(f"{tracker.duplicates} messages duplicated")
    if tracker.misrouted:
        problems.append(f"{tracker.misrouted} messages delivered to the wrong user")
    if tracker.bounced:
        problems.append(f"{tracker.bounced} messages refused by the server with an error")
    dead = [c for c in used if c.dead]
    if dead:
        problems.append(f"{len(dead)} connections closed: {dead[0].dead[:200]}")
    problems += [f"{s['what']} seq {s['seq']} for {s['addressee']} reached {s['received_by']}: {s['stanza']}"
                 for s in tracker.samples]
    return problems


async def _salt_of(target: lg.Target, user: str, password: str) -> tuple[str, bytes, int]:
    import base64
    import secrets

    c = lg.Client(-1, user, password, target)
    loop = asyncio.get_running_loop()
    try:
        await loop.create_connection(lambda: c, target.host, target.port)
        c.write(lg._header(target.domain))
        await c.expect(lg._FEATURES)
        first = b"n=" + user.encode() + b",r=" + base64.b64encode(secrets.token_bytes(18))
        c.write(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>"
                + base64.b64encode(b"n,," + first) + b"</auth>")
        m = await c.expect(lg._SASL)
        attrs = lg._scram_attrs(base64.b64decode(m.group(2) or b""))
        return password, base64.b64decode(attrs[b"s"]), int(attrs[b"i"])
    finally:
        c.write(b"<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
        c.close()


def _derive(item: tuple[str, bytes, int]) -> tuple[bytes, bytes, bytes]:
    return lg._scram_keys(*item)


__all__ = ["QUICK", "Bench", "Result", "Settings"]

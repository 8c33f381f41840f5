#!/usr/bin/env python3
"""Misbehaving and edge-case clients for scripts/soak.sh, and its report.

Python 3 standard library only (asyncio, one thread), light on CPU: it shares the machine with
the server and oha. Two subcommands:

  soak_clients.py run --url http://127.0.0.1:18090 --duration 600 --out DIR [options]
      Runs these populations at the same time for --duration seconds and writes
      DIR/clients-events.csv (one line per request or connection) and DIR/clients.json
      (counts and violations):
        big         max-size bodies (one long text just under --max-body-bytes), a few at a time
        invalid     malformed JSON, wrong schema, wrong content type, empty list, too many
                    inputs, too-large Content-Length, unknown path, wrong method
        slowheader  header lines sent slowly, never finished: the server must close the
                    connection after its header timeout
        slowbody    Content-Length: 1000000 then one byte every few seconds: the server must
                    answer 408 after its body deadline (when it has one)
        disconnect  half a body then close; a whole request then close (FIN or RST) before the
                    answer; half the headers then close
        burst       every --burst-every seconds, --burst-size concurrent requests of
                    --burst-inputs inputs (more than the queue holds): 200 or 503 + Retry-After

  soak_clients.py report DIR
      Reads what soak.sh and `run` left in DIR, prints the Markdown summary (also written to
      DIR/summary.md) and exits 1 when a pass criterion fails.

Only point it at servers you run (loopback).
"""

import argparse
import asyncio
import csv
import glob
import json
import os
import socket
import struct
import sys
import time
from collections import Counter

# Statuses a client may get besides 200 (503 also needs Retry-After).
DOCUMENTED_4XX = {400, 401, 404, 405, 408, 413, 415}
SMALL_TEXT = "A man is eating food."


def status_ok(status, retry_after):
    if status == 200 or status in DOCUMENTED_4XX:
        return True
    return status == 503 and retry_after is not None


# ---------------------------------------------------------------------------------------------
# A minimal HTTP/1.1 client on asyncio streams.


def build_request(method, path, body=b"", content_type="application/json", close=True,
                  content_length=None, extra=()):
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if body or content_length is not None or method == "POST":
        lines.append(f"Content-Length: {len(body) if content_length is None else content_length}")
    if close:
        lines.append("Connection: close")
    lines.extend(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def parse_head(head):
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


async def read_response(reader):
    """(status, headers, body). Raises IncompleteReadError on EOF before a whole response."""
    head = await reader.readuntil(b"\r\n\r\n")
    status, headers = parse_head(head)
    if "content-length" in headers:
        n = int(headers["content-length"])
        body = await reader.readexactly(n) if n else b""
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(chunks)
    else:
        body = b""
    if status != 200 and body[:1] == b"{":
        try:
            headers["x-soak-error-type"] = json.loads(body).get("error_type")
        except (ValueError, AttributeError):
            pass
    return status, headers, body


async def open_conn(host, port):
    return await asyncio.open_connection(host, port, limit=1 << 20)


def close_quietly(writer):
    if writer is None:
        return
    try:
        writer.close()
    except Exception:  # noqa: BLE001 - closing a broken socket
        pass


def error_outcome(e):
    if isinstance(e, asyncio.TimeoutError):
        return "timeout"
    if isinstance(e, asyncio.IncompleteReadError):
        return "eof"
    if isinstance(e, ConnectionResetError):
        return "reset"
    if isinstance(e, (BrokenPipeError, ConnectionAbortedError)):
        return "broken_pipe"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    return "error:" + type(e).__name__


async def one_shot(host, port, raw, timeout):
    """A request on a fresh connection. (outcome, status, headers, seconds)."""
    t0 = time.monotonic()
    writer = None
    try:
        async def go():
            nonlocal writer
            reader, writer = await open_conn(host, port)
            writer.write(raw)
            await writer.drain()
            return await read_response(reader)
        status, headers, _ = await asyncio.wait_for(go(), timeout)
        return "response", status, headers, time.monotonic() - t0
    except Exception as e:  # noqa: BLE001 - every failure is an outcome to count
        return error_outcome(e), None, {}, time.monotonic() - t0
    finally:
        close_quietly(writer)


# ---------------------------------------------------------------------------------------------
# Recording.


class Recorder:
    def __init__(self, out_dir, t0):
        self.t0 = t0
        self.file = open(os.path.join(out_dir, "clients-events.csv"), "w", newline="",
                         buffering=1 << 16)
        self.csv = csv.writer(self.file)
        self.csv.writerow(["t_s", "class", "case", "outcome", "status", "retry_after", "ms",
                           "verdict", "detail"])
        self.counts = Counter()  # (class, case, outcome, status) -> n
        self.verdicts = Counter()  # (class, verdict) -> n
        self.violations = []
        self.n_violations = 0
        self.notes = Counter()  # (class, note) -> n
        self.burst_stats = []

    def add(self, cls, case, outcome, status=None, headers=None, seconds=None, verdict="ok",
            detail=""):
        """verdict: ok, violation (fails the soak), info (outside the criteria), cut (the soak
        ended first)."""
        retry_after = (headers or {}).get("retry-after")
        ms = None if seconds is None else round(seconds * 1e3, 1)
        etype = (headers or {}).get("x-soak-error-type") or ""
        self.counts[(cls, case, outcome, status, etype)] += 1
        self.verdicts[(cls, verdict)] += 1
        t = round(time.monotonic() - self.t0, 3)
        if etype and not detail:
            detail = etype
        self.csv.writerow([t, cls, case, outcome, status if status is not None else "",
                           retry_after or "", ms if ms is not None else "", verdict, detail])
        if verdict == "violation":
            self.n_violations += 1
            if len(self.violations) < 100:
                self.violations.append({"t_s": t, "class": cls, "case": case, "outcome": outcome,
                                        "status": status, "retry_after": retry_after, "ms": ms,
                                        "detail": detail})

    def normal_verdict(self, outcome, status, headers, expected=None):
        """Verdict for a client that behaves: it must get an answer, of an allowed kind, and
        (when given) one of the expected statuses."""
        if outcome != "response":
            return "violation", f"no answer ({outcome})"
        if not status_ok(status, headers.get("retry-after")):
            return "violation", f"status {status} not allowed" + (
                " (503 without Retry-After)" if status == 503 else "")
        if expected is not None and status not in expected:
            return "violation", f"expected {sorted(expected)}, got {status}"
        return "ok", ""

    def close(self, path, extra):
        self.file.close()
        rows = [{"class": c, "case": k, "outcome": o, "status": s, "error_type": e, "n": n}
                for (c, k, o, s, e), n in sorted(self.counts.items(), key=lambda kv: str(kv[0]))]
        verdicts = [{"class": c, "verdict": v, "n": n}
                    for (c, v), n in sorted(self.verdicts.items())]
        with open(path, "w") as f:
            json.dump({"counts": rows, "verdicts": verdicts,
                       "n_violations": self.n_violations, "violations": self.violations,
                       "bursts": self.burst_stats, **extra}, f, indent=1)


# ---------------------------------------------------------------------------------------------
# The populations.


class Soak:
    def __init__(self, args):
        self.a = args
        url = args.url.rstrip("/")
        assert url.startswith("http://"), "only http:// URLs"
        hostport = url[len("http://"):].split("/", 1)[0]
        host, _, port = hostport.rpartition(":")
        self.host, self.port = host or hostport, int(port or 80)
        self.t0 = time.monotonic()
        self.end = self.t0 + args.duration
        self.rec = Recorder(args.out, self.t0)
        self.auth = (f"Authorization: Bearer {args.api_key}",) if args.api_key else ()
        # One long text just under the body limit: {"inputs": "<text>"}.
        sentence = "The quick brown fox jumps over the lazy dog near the river bank. "
        room = args.max_body_bytes - len(b'{"inputs": ""}') - 64
        text = (sentence * (room // len(sentence) + 1))[:room]
        self.big_body = json.dumps({"inputs": text}).encode()
        assert len(self.big_body) < args.max_body_bytes
        self.burst_body = json.dumps(
            {"inputs": [f"{SMALL_TEXT} Burst sentence number {i}." for i in range(args.burst_inputs)]}
        ).encode()

    def left(self):
        return self.end - time.monotonic()

    def req(self, method, path, body=b"", **kw):
        kw.setdefault("extra", self.auth)
        return build_request(method, path, body, **kw)

    async def sleep_or_end(self, seconds):
        await asyncio.sleep(max(0.0, min(seconds, self.left())))

    # -- big bodies ---------------------------------------------------------------------------

    async def big_worker(self, wid):
        reader = writer = None
        # Keep the connection between requests unless the pause nears the server's idle
        # (header) timeout.
        h = self.a.header_timeout_s
        keep_alive = h <= 0 or self.a.big_pause < h / 2
        raw = self.req("POST", "/embed", self.big_body, close=not keep_alive)
        timeout = self.a.request_timeout_s + 30
        while self.left() > 0:
            t0 = time.monotonic()
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(open_conn(self.host, self.port), 10)

                async def go():
                    writer.write(raw)
                    await writer.drain()
                    return await read_response(reader)
                status, headers, _ = await asyncio.wait_for(go(), timeout)
                outcome = "response"
                if not keep_alive or headers.get("connection", "").lower() == "close":
                    close_quietly(writer)
                    writer = None
            except Exception as e:  # noqa: BLE001
                outcome, status, headers = error_outcome(e), None, {}
                close_quietly(writer)
                writer = None
            seconds = time.monotonic() - t0
            verdict, detail = self.rec.normal_verdict(outcome, status, headers)
            self.rec.add("big", f"{len(self.big_body)}B", outcome, status, headers, seconds,
                         verdict, detail)
            await self.sleep_or_end(self.a.big_pause)
        close_quietly(writer)

    # -- invalid bodies -----------------------------------------------------------------------

    def invalid_cases(self):
        a = self.a
        too_many = json.dumps({"inputs": ["x"] * (a.max_client_batch + 1)}).encode()
        return [
            ("malformed_json", self.req("POST", "/embed", b'{"inputs": "abc"'), {400}),
            ("unknown_field", self.req("POST", "/embed", b'{"input": "abc"}'), {400}),
            ("wrong_type", self.req("POST", "/embed", b'{"inputs": 42}'), {400}),
            ("empty_list", self.req("POST", "/embed", b'{"inputs": []}'), {400}),
            ("too_many_inputs", self.req("POST", "/embed", too_many), {413}),
            ("text_plain", self.req("POST", "/embed", b'{"inputs": "abc"}',
                                    content_type="text/plain"), {415}),
            ("no_content_type", self.req("POST", "/embed", b'{"inputs": "abc"}',
                                         content_type=None), {415}),
            # Headers only: the server refuses on Content-Length without reading a body.
            ("declared_too_large", self.req("POST", "/embed",
                                            content_length=a.max_body_bytes + 1), {413}),
            ("unknown_path", self.req("GET", "/nope", content_type=None), {404}),
            ("wrong_method", self.req("GET", "/embed", content_type=None), {405}),
        ]

    async def invalid_worker(self):
        cases = self.invalid_cases()
        i = 0
        period = 1.0 / self.a.invalid_rate
        while self.left() > 0:
            name, raw, expected = cases[i % len(cases)]
            i += 1
            outcome, status, headers, seconds = await one_shot(self.host, self.port, raw, 30)
            verdict, detail = self.rec.normal_verdict(outcome, status, headers, expected)
            self.rec.add("invalid", name, outcome, status, headers, seconds, verdict, detail)
            await self.sleep_or_end(period - seconds)

    # -- slow clients -------------------------------------------------------------------------

    async def slow_once(self, cls, first, drip, interval, giveup):
        """Sends `first`, then `drip(i)` every `interval` s until the server answers or closes
        or `giveup` s pass. Returns (outcome, status, headers, seconds since `first` was
        sent, closed_after_answer)."""
        reader, writer = await asyncio.wait_for(open_conn(self.host, self.port), 10)
        t0 = time.monotonic()
        head_task = None
        try:
            writer.write(first)
            await writer.drain()
            head_task = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
            i = 0
            while True:
                done, _ = await asyncio.wait({head_task}, timeout=interval)
                if done:
                    break
                if time.monotonic() - t0 > giveup:
                    head_task.cancel()
                    return "timeout", None, {}, time.monotonic() - t0, None
                try:
                    writer.write(drip(i))
                    await writer.drain()
                except Exception:  # noqa: BLE001 - the server closed; head_task reports it
                    await asyncio.wait({head_task}, timeout=2)
                    if not head_task.done():
                        head_task.cancel()
                        return "broken_pipe", None, {}, time.monotonic() - t0, None
                    break
                i += 1
            seconds = time.monotonic() - t0
            e = head_task.exception()
            if e is not None:
                return error_outcome(e), None, {}, seconds, None
            status, headers = parse_head(head_task.result())
            # Does the server close the connection after answering?
            closed = False
            try:
                while True:
                    chunk = await asyncio.wait_for(reader.read(65536), 3)
                    if not chunk:
                        closed = True
                        break
            except asyncio.TimeoutError:
                closed = False
            except ConnectionError:
                closed = True
            return "response", status, headers, seconds, closed
        finally:
            if head_task is not None and not head_task.done():
                head_task.cancel()
            close_quietly(writer)

    async def slowheader_worker(self, wid):
        h = self.a.header_timeout_s
        giveup = (h + 15) if h > 0 else self.a.slow_giveup_s
        interval = max(1.0, (h or 60) / 20)  # stays far under hyper's 100-header limit
        # Stagger the clients so their cycles do not line up.
        await self.sleep_or_end(wid * interval / max(1, self.a.slow_header_clients))
        while self.left() > giveup + 2:
            first = f"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-Client: {wid}\r\n".encode()
            try:
                outcome, status, headers, seconds, closed = await self.slow_once(
                    "slowheader", first, lambda i: f"X-Slow-{i}: {i}\r\n".encode(), interval,
                    giveup)
            except Exception as e:  # noqa: BLE001 - could not even connect
                outcome, status, headers, seconds, closed = error_outcome(e), None, {}, None, None
            verdict, detail = "ok", ""
            if outcome in ("eof", "reset", "broken_pipe"):
                detail = f"closed without an answer after {seconds:.1f} s"
                if h > 0 and not (h - 1.5 <= seconds <= h + 5):
                    verdict, detail = "violation", detail + f" (header timeout is {h:g} s)"
            elif outcome == "response":
                detail = f"answered {status} after {seconds:.1f} s"
                if not status_ok(status, headers.get("retry-after")):
                    verdict = "violation"
                elif h > 0 and not (h - 1.5 <= seconds <= h + 5):
                    verdict, detail = "violation", detail + f" (header timeout is {h:g} s)"
            else:
                verdict, detail = "violation", f"{outcome}: not closed within {giveup:g} s"
            self.rec.add("slowheader", "slow_headers", outcome, status, headers, seconds,
                         verdict, detail)

    async def slowbody_worker(self, wid):
        b = self.a.body_deadline_s
        giveup = (b + 15) if b > 0 else self.a.slow_giveup_s
        interval = self.a.slow_body_interval
        await self.sleep_or_end(wid * interval / max(1, self.a.slow_body_clients))
        while self.left() > giveup + 2:
            first = self.req("POST", "/embed", b'{"inputs": "', content_length=1_000_000,
                             close=False)
            try:
                outcome, status, headers, seconds, closed = await self.slow_once(
                    "slowbody", first, lambda i: b"a", interval, giveup)
            except Exception as e:  # noqa: BLE001
                outcome, status, headers, seconds, closed = error_outcome(e), None, {}, None, None
            verdict, detail = "ok", ""
            if outcome == "response":
                detail = (f"answered {status} after {seconds:.1f} s; connection "
                          f"{'closed' if closed else 'left open'} after the answer")
                if not status_ok(status, headers.get("retry-after")):
                    verdict = "violation"
                elif b > 0 and (status != 408 or not (b - 1.5 <= seconds <= b + 5)):
                    verdict, detail = "violation", detail + f" (expected 408 at {b:g} s)"
                elif b > 0 and not closed:
                    verdict, detail = "violation", detail + " (expected the connection to close)"
                elif b <= 0:
                    verdict = "info"
            elif outcome == "timeout":
                detail = f"no answer and still open after {seconds:.1f} s (client gave up)"
                verdict = "violation" if b > 0 else "info"
            else:
                detail = f"closed without an answer ({outcome}) after {seconds or 0:.1f} s"
                verdict = "violation" if b > 0 else "info"
            self.rec.add("slowbody", "slow_body", outcome, status, headers, seconds, verdict,
                         detail)

    # -- disconnects --------------------------------------------------------------------------

    async def disconnect_once(self, kind):
        writer = None
        try:
            _, writer = await asyncio.wait_for(open_conn(self.host, self.port), 10)
            if kind == "half_body":
                raw = self.req("POST", "/embed", self.big_body)
                raw = raw[: len(raw) - len(self.big_body) // 2]
            elif kind == "half_headers":
                raw = b"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty"
            else:
                raw = self.req("POST", "/embed", self.burst_body)
            if kind == "full_then_rst":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.write(raw)
            await asyncio.wait_for(writer.drain(), 10)
            if kind in ("full_then_close", "full_then_rst"):
                await asyncio.sleep(0.005)  # queued or running, not answered yet
            return "sent"
        except Exception as e:  # noqa: BLE001
            return error_outcome(e)
        finally:
            close_quietly(writer)

    async def disconnect_worker(self):
        kinds = ["half_body", "full_then_close", "full_then_rst", "half_headers"]
        period = 1.0 / self.a.disconnect_rate
        i = 0
        while self.left() > 0:
            t0 = time.monotonic()
            kind = kinds[i % len(kinds)]
            i += 1
            outcome = await self.disconnect_once(kind)
            # The server owes these clients nothing; failing to send is worth a look, not a fail.
            self.rec.add("disconnect", kind, outcome, None, None, time.monotonic() - t0,
                         "ok" if outcome == "sent" else "info")
            await self.sleep_or_end(period - (time.monotonic() - t0))

    # -- bursts -------------------------------------------------------------------------------

    async def burst_worker(self):
        every = self.a.burst_every
        raw = self.req("POST", "/embed", self.burst_body)
        timeout = self.a.request_timeout_s + 15
        next_at = self.t0 + every / 2
        n = 0
        while True:
            wait = next_at - time.monotonic()
            if next_at > self.end - 5:
                break
            await asyncio.sleep(max(0.0, wait))
            n += 1
            t_start = time.monotonic()
            results = await asyncio.gather(*[
                one_shot(self.host, self.port, raw, timeout) for _ in range(self.a.burst_size)])
            statuses = Counter()
            for outcome, status, headers, seconds in results:
                verdict, detail = self.rec.normal_verdict(outcome, status, headers)
                self.rec.add("burst", f"{self.a.burst_inputs}_inputs", outcome, status, headers,
                             seconds, verdict, detail)
                statuses[str(status) if outcome == "response" else outcome] += 1
            self.rec.burst_stats.append({"n": n, "t_s": round(t_start - self.t0, 1),
                                         "seconds": round(time.monotonic() - t_start, 2),
                                         "statuses": dict(statuses)})
            next_at += every

    async def run(self):
        a = self.a
        tasks = [self.invalid_worker(), self.disconnect_worker(), self.burst_worker()]
        tasks += [self.big_worker(i) for i in range(a.big_clients)]
        tasks += [self.slowheader_worker(i) for i in range(a.slow_header_clients)]
        tasks += [self.slowbody_worker(i) for i in range(a.slow_body_clients)]
        hard = a.duration + max(a.request_timeout_s, a.slow_giveup_s, a.body_deadline_s,
                                a.header_timeout_s) + 60
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), hard)
        except asyncio.TimeoutError:
            print("soak_clients: hard time limit reached; some clients were cut", file=sys.stderr)
        cpu = time.process_time()
        self.rec.close(os.path.join(a.out, "clients.json"), {
            "duration_s": round(time.monotonic() - self.t0, 1),
            "cpu_s": round(cpu, 1),
            "settings": {k: v for k, v in vars(a).items() if k not in ("func", "api_key")},
            "big_body_bytes": len(self.big_body),
        })
        print(f"soak_clients: done in {time.monotonic() - self.t0:.0f} s, {cpu:.1f} s of CPU, "
              f"{self.rec.n_violations} violations", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# The report.


def read_env(path):
    meta = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if "=" in line:
                    k, v = line.rstrip("\n").split("=", 1)
                    meta[k] = v
    return meta


def fnum(x, fmt="{:.0f}"):
    return "n/a" if x is None else fmt.format(x)


def report(out_dir):
    meta = read_env(os.path.join(out_dir, "meta.env"))
    criteria = []  # (name, pass/fail/n/a, evidence)

    def crit(name, ok, evidence):
        criteria.append((name, "n/a" if ok is None else ("PASS" if ok else "**FAIL**"), evidence))

    # oha segments.
    segs = []
    for path in sorted(glob.glob(os.path.join(out_dir, "oha-seg-*.json"))):
        with open(path) as f:
            try:
                segs.append(json.load(f))
            except json.JSONDecodeError:
                segs.append(None)
    oha_status = Counter()
    oha_errors = Counter()
    oha_total_s = 0.0
    for s in segs:
        if s is None:
            oha_errors["unreadable oha output"] += 1
            continue
        for k, v in (s.get("statusCodeDistribution") or {}).items():
            oha_status[k] += v
        for k, v in (s.get("errorDistribution") or {}).items():
            oha_errors[k] += v
        oha_total_s += s["summary"].get("total") or 0

    def p99(s, key="latencyPercentilesSuccessful"):
        """p99 in ms of the 200 answers (oha --stats-success-breakdown), else of all."""
        try:
            v = (s.get(key) or s["latencyPercentiles"])["p99"]
            return None if v is None else v * 1e3
        except (TypeError, KeyError, AttributeError):
            return None

    p99_first = p99(segs[0]) if segs else None
    p99_last = p99(segs[-1]) if segs else None

    # Clients.
    clients = {}
    cpath = os.path.join(out_dir, "clients.json")
    if os.path.exists(cpath):
        with open(cpath) as f:
            clients = json.load(f)

    # Samples: epoch_s,rss_kb,hwm_kb,fds
    samples = []
    spath = os.path.join(out_dir, "samples.csv")
    if os.path.exists(spath):
        with open(spath) as f:
            for row in csv.DictReader(f):
                try:
                    samples.append((float(row["epoch_s"]), int(row["rss_kb"]), int(row["hwm_kb"]),
                                    int(row["fds"])))
                except (ValueError, KeyError):
                    pass
    load_start = float(meta.get("load_start", "0") or 0)
    load_end = float(meta.get("load_end", "0") or 0)
    during = [s for s in samples if load_start <= s[0] <= load_end]
    # Medians over 30 s windows, so one sample taken while a max-size body is being tokenized
    # (a transient of ~100 MiB) does not decide the criterion: "after the first minute" is
    # [60 s, 90 s) of the load, "the end" is its last 30 s.
    def median(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2] if xs else None
    rss_first = median([s[1] for s in during if load_start + 60 <= s[0] < load_start + 90])
    rss_end = median([s[1] for s in during if s[0] >= load_end - 30]) \
        if load_end - load_start >= 90 else None
    rss_max = max((s[1] for s in during), default=None)
    hwm = max((s[2] for s in samples), default=None)
    fds_peak = max((s[3] for s in during), default=None)
    fd_base = int(meta["fd_baseline"]) if meta.get("fd_baseline") else None
    fd_after = int(meta["fd_after"]) if meta.get("fd_after") else None

    # --- criteria ---
    # 1. Every answer allowed.
    bad_oha = {k: v for k, v in oha_status.items()
               if not (k == "200" or int(k) in DOCUMENTED_4XX or k == "503")}
    n_viol = clients.get("n_violations")
    ev = []
    if bad_oha:
        ev.append(f"oha got {bad_oha}")
    if oha_errors:
        ev.append(f"oha errors {dict(oha_errors)}")
    if n_viol:
        kinds = Counter(f"{v['class']}: {v['detail'] or v['outcome']}"
                        for v in clients.get("violations", []))
        ev.append(f"{n_viol} client violations, e.g. " + "; ".join(
            f"{k} ×{n}" for k, n in kinds.most_common(4)))
    if not segs or not clients:
        ev.append("missing oha or client results")
    crit("every answer is 200, a documented 4xx, or 503 + Retry-After; no resets or missing "
         "answers for well-behaved clients",
         not ev, "; ".join(ev) or
         f"{sum(oha_status.values())} oha answers, client verdicts all ok")

    alive = meta.get("alive_at_end")
    if "panics" in meta:
        panics = int(meta["panics"] or 0)
        crit("server alive at the end, no panic in its log", alive == "1" and panics == 0,
             f"alive={alive}, panics={panics}, exit status after SIGTERM "
             f"{meta.get('server_exit', '?')}")
    elif alive is not None:
        crit("server alive at the end (its log is not ours to read)", alive == "1",
             f"alive={alive}")

    # 2. RSS.
    if rss_first and rss_end:
        ratio = rss_end / rss_first
        crit("RSS at the end ≤ 1.10 × RSS after the first minute (medians of 30 s windows)",
             ratio <= 1.10,
             f"{rss_first / 1024:.1f} → {rss_end / 1024:.1f} MiB ({(ratio - 1) * 100:+.1f} %)")
    else:
        crit("RSS at the end ≤ 1.10 × RSS after the first minute", None,
             "no server PID, or the load ran less than 90 s")

    # Optional: peak RSS under a bound (docs/reliability.md promises one for MiniLM).
    limit_mb = float(meta.get("peak_rss_limit_mb") or 0)
    if limit_mb > 0:
        crit(f"peak RSS (VmHWM) ≤ {limit_mb:g} MB", hwm is not None and hwm * 1024 <= limit_mb * 1e6,
             f"VmHWM {fnum(hwm and hwm * 1024 / 1e6, '{:.0f}')} MB")

    # 3. fds.
    if fd_base is not None and fd_after is not None:
        crit("open fds back to the baseline after the load", fd_after <= fd_base,
             f"baseline {fd_base}, peak {fds_peak}, after {fd_after} "
             f"({meta.get('fd_settle_s', '?')} s after the load stopped)")
    else:
        crit("open fds back to the baseline after the load", None, "no server PID")

    # 4. p99.
    if len(segs) >= 2 and p99_first and p99_last:
        crit("small-request p99 (200 answers), last segment ≤ 1.5 × first segment",
             p99_last <= 1.5 * p99_first,
             f"{p99_first:.1f} → {p99_last:.1f} ms (×{p99_last / p99_first:.2f})")
    else:
        crit("small-request p99 (200 answers), last segment ≤ 1.5 × first segment", None,
             "fewer than two oha segments")

    # 5. Edge cases exercised.
    bursts = clients.get("bursts", [])
    burst_503 = sum(b["statuses"].get("503", 0) for b in bursts)
    crit("bursts overflowed the queue (some 503 + Retry-After)",
         (burst_503 > 0) if bursts else None,
         f"{len(bursts)} bursts, {burst_503} answers 503")

    settings = clients.get("settings", {})
    body_deadline = settings.get("body_deadline_s", 0)
    sb = [c for c in clients.get("counts", []) if c["class"] == "slowbody"]
    sb_desc = ", ".join(f"{c['outcome']}{'/' + str(c['status']) if c['status'] else ''} ×{c['n']}"
                        for c in sb) or "none"
    if body_deadline and body_deadline > 0:
        ok = all(c["outcome"] == "response" and c["status"] == 408 for c in sb) if sb else None
        crit(f"slow bodies answered 408 after the {body_deadline:g} s body deadline", ok,
             sb_desc if sb else "not exercised (the run is too short)")
    else:
        crit("slow bodies answered 408 (the binary has no body deadline: not checked)", None,
             sb_desc)
    hdr = settings.get("header_timeout_s", 0)
    sh = [c for c in clients.get("counts", []) if c["class"] == "slowheader"]
    sh_desc = ", ".join(f"{c['outcome']}{'/' + str(c['status']) if c['status'] else ''} ×{c['n']}"
                        for c in sh) or "none"
    sh_bad = sum(v["n"] for v in clients.get("verdicts", [])
                 if v["class"] == "slowheader" and v["verdict"] == "violation")
    crit(f"slow headers closed after the {hdr:g} s header timeout",
         (sh_bad == 0) if sh else None, sh_desc if sh else "not exercised (the run is too short)")

    # --- tables ---
    out = []
    w = out.append
    w(f"### Saturation soak, {meta.get('started_utc', '?')}")
    w("")
    w(f"Binary `{meta.get('binary', '?')}` ({meta.get('version', '?')}), flags "
      f"`{meta.get('server_flags', '?')}`; {meta.get('cores', '?')} cores; "
      f"{meta.get('duration', '?')} s of load: oha c={meta.get('concurrency', '?')} in "
      f"{len(segs)} segments of {meta.get('segment', '?')} s, plus the clients of "
      f"`scripts/soak_clients.py` (CPU used by them: {clients.get('cpu_s', '?')} s).")
    w("")
    w("| criterion | result | evidence |")
    w("|---|---|---|")
    for name, res, evidence in criteria:
        w(f"| {name} | {res} | {evidence} |")
    w("")
    w("| measure | first minute | end | peak / after |")
    w("|---|---:|---:|---:|")
    w(f"| RSS MiB (VmRSS, median of [60 s, 90 s) and of the last 30 s; peak: max VmRSS "
      f"sample / VmHWM) | {fnum(rss_first and rss_first / 1024, '{:.1f}')} | "
      f"{fnum(rss_end and rss_end / 1024, '{:.1f}')} | "
      f"{fnum(rss_max and rss_max / 1024, '{:.1f}')} / {fnum(hwm and hwm / 1024, '{:.1f}')} |")
    w(f"| open fds (baseline / peak / after) | {fnum(fd_base)} | {fnum(fds_peak)} | "
      f"{fnum(fd_after)} |")
    w(f"| small-request p99 ms of the 200s (oha, first / last segment) | "
      f"{fnum(p99_first, '{:.1f}')} | {fnum(p99_last, '{:.1f}')} | |")
    ok200 = oha_status.get("200", 0)
    thr = ok200 / oha_total_s if oha_total_s else None
    w(f"| small-request throughput, 200/s (oha, whole run) | | {fnum(thr)} | |")
    w("")
    w("Per oha segment:")
    w("")
    w("| segment | 200/s | p50 ms (200s) | p99 ms (200s) | p99 ms (all) | statuses | errors |")
    w("|---:|---:|---:|---:|---:|---|---|")
    for i, s in enumerate(segs, 1):
        if s is None:
            w(f"| {i} | | | | | unreadable | |")
            continue
        codes = s.get("statusCodeDistribution") or {}
        tot = s["summary"].get("total") or 0
        rps = codes.get("200", 0) / tot if tot else 0
        pct = s.get("latencyPercentilesSuccessful") or s.get("latencyPercentiles") or {}
        p50 = pct.get("p50")
        w(f"| {i} | {rps:.0f} | {fnum(p50 and p50 * 1e3, '{:.1f}')} | "
          f"{fnum(p99(s), '{:.1f}')} | {fnum(p99(s, 'latencyPercentiles'), '{:.1f}')} | "
          f"{', '.join(f'{k}: {v}' for k, v in sorted(codes.items()))} | "
          f"{', '.join(f'{k}: {v}' for k, v in (s.get('errorDistribution') or {}).items()) or '-'} |")
    w("")
    w("Counts by client class and status (oha: the small requests):")
    w("")
    w("| class | case | outcome | status | error_type | count |")
    w("|---|---|---|---:|---|---:|")
    for k, v in sorted(oha_status.items()):
        w(f"| oha | small | response | {k} | | {v} |")
    for k, v in sorted(oha_errors.items()):
        w(f"| oha | small | error: {k} | | | {v} |")
    for c in clients.get("counts", []):
        w(f"| {c['class']} | {c['case']} | {c['outcome']} | {c['status'] or ''} | "
          f"{c.get('error_type') or ''} | {c['n']} |")
    w("")
    if bursts:
        w("Bursts (" + f"{settings.get('burst_size')} concurrent requests of "
          f"{settings.get('burst_inputs')} inputs, queue capacity {settings.get('queue_capacity')}"
          "): " + "; ".join(
              f"#{b['n']} at {b['t_s']:.0f} s: " + ", ".join(
                  f"{k} ×{v}" for k, v in sorted(b["statuses"].items()))
              + f" in {b['seconds']:.1f} s" for b in bursts[:3])
          + ("; …" if len(bursts) > 3 else ""))
        w("")
    notes = [v for v in clients.get("violations", [])][:10]
    if notes:
        w("First violations:")
        w("")
        for v in notes:
            w(f"- t={v['t_s']} s {v['class']}/{v['case']}: {v['outcome']} {v['status'] or ''} "
              f"{v['detail']}")
        w("")
    failed = any(res == "**FAIL**" for _, res, _ in criteria)
    w(f"**Overall: {'FAIL' if failed else 'PASS'}** (raw data: `{out_dir}`)")
    text = "\n".join(out) + "\n"
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(text)
    sys.stdout.write(text)
    return 1 if failed else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--url", required=True)
    r.add_argument("--duration", type=float, required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--api-key", default=os.environ.get("API_KEY") or None)
    r.add_argument("--max-body-bytes", type=int, default=2097152)
    r.add_argument("--max-client-batch", type=int, default=64)
    r.add_argument("--queue-capacity", type=int, default=4096)
    r.add_argument("--request-timeout-s", type=float, default=30)
    r.add_argument("--header-timeout-s", type=float, default=30,
                   help="the server's header timeout (0: unknown)")
    r.add_argument("--body-deadline-s", type=float, default=0,
                   help="the server's body read deadline, answered with 408 (0: none)")
    r.add_argument("--slow-giveup-s", type=float, default=60,
                   help="how long a slow client waits when the server has no deadline")
    r.add_argument("--big-clients", type=int, default=2)
    r.add_argument("--big-pause", type=float, default=5.0)
    r.add_argument("--invalid-rate", type=float, default=8)
    r.add_argument("--slow-header-clients", type=int, default=3)
    r.add_argument("--slow-body-clients", type=int, default=3)
    r.add_argument("--slow-body-interval", type=float, default=3)
    r.add_argument("--disconnect-rate", type=float, default=4)
    r.add_argument("--burst-every", type=float, default=30)
    r.add_argument("--burst-size", type=int, default=400)
    r.add_argument("--burst-inputs", type=int, default=8)
    rep = sub.add_parser("report")
    rep.add_argument("dir")
    line = sub.add_parser("oha-line", help="one line about an oha JSON result")
    line.add_argument("file")
    args = p.parse_args()
    if args.cmd == "report":
        sys.exit(report(args.dir))
    if args.cmd == "oha-line":
        try:
            with open(args.file) as f:
                r = json.load(f)
            ok = (r.get("latencyPercentilesSuccessful") or {}).get("p99")
            print(f"{r['summary']['requestsPerSec']:.0f} req/s, p99 {r['latencyPercentiles']['p99'] * 1e3:.1f} ms"
                  f" (200s: {ok * 1e3 if ok else float('nan'):.1f} ms), "
                  f"statuses {r.get('statusCodeDistribution')}, errors {r.get('errorDistribution')}")
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"unreadable oha output: {e}")
        return
    os.makedirs(args.out, exist_ok=True)
    asyncio.run(Soak(args).run())


if __name__ == "__main__":
    main()

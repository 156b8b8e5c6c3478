#!/usr/bin/env python3
"""What shadow traffic costs the primary: Portcullis with `mirror: { percent: 100, compare: true }`
against the same route without a mirror, in one run.

Usage: bench/run-shadow [--duration S] [--rounds N] [--connections C] [--rate R]

Two nginx backends (CPU 1) serve the same 1 KiB JSON document: the primary and the candidate.
Portcullis (one worker thread, CPU 0) proxies to the primary, once plainly and once with every
request mirrored to the candidate and compared (the body parsed as JSON and compared field by
field, off the request path). Two figures per target, targets alternating within each round:

* CPU per request: user+sys of the Portcullis process over a saturating wrk run (CPU 1), divided
  by the requests completed — the mirror's whole cost (the copy's exchange with the candidate and
  the comparison) lands on the same process;
* the primary's latency at a fixed rate well below saturation (`--rate`, default 2000 req/s, an
  open-loop Python client on CPU 1, latency measured from each request's scheduled start, so a
  stall is never hidden): p50 and p99. A saturating closed-loop client would only measure the
  CPU difference again.

The comparison counters are read from /admin/shadow afterwards to check that every request was
mirrored and compared. Every process started is stopped by PID.
"""
import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proxy_bench as pb  # noqa: E402

PATH = pb.DOC_PATH
document = pb.json_document


def wrk(port, duration, connections):
    return pb.wrk_count(port, duration, connections)


async def fixed_rate(port, rate, seconds, conns, headers="", host="127.0.0.1"):
    """Open loop per connection: request k of a connection is due at start + k/per_conn_rate;
    its latency runs from when it was due. `headers`: extra header lines, each ending in CRLF.
    Returns (latencies in ms, failures)."""
    per = rate / conns
    req = f"GET {PATH} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode()
    lat, failures = [], 0
    start = time.perf_counter() + 0.2

    async def one(c):
        nonlocal failures
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        k = 0
        while True:
            due = start + c / rate + k / per
            if due > start + seconds:
                break
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"content-length: *(\d+)", head, re.I)
            await reader.readexactly(int(m.group(1)) if m else 0)
            if not head.startswith(b"HTTP/1.1 200"):
                failures += 1
            lat.append((time.perf_counter() - due) * 1000)
            k += 1
        writer.close()

    await asyncio.gather(*(one(c) for c in range(conns)))
    return lat, failures


def user_sys(pid):
    """(user, sys) CPU seconds of a process and all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def split_rounds(targets, rounds, duration, connections):
    """CPU us per request split into user and kernel time, per target (medians)."""
    out = {n: ([], []) for n in targets}
    for _ in range(rounds):
        for name, (port, pid) in targets.items():
            wrk(port, 1, connections)
            u0, s0 = user_sys(pid)
            n, _ = wrk(port, duration, connections)
            u1, s1 = user_sys(pid)
            out[name][0].append((u1 - u0) / max(n, 1) * 1e6)
            out[name][1].append((s1 - s0) / max(n, 1) * 1e6)
    return {n: (pb.median(u), pb.median(k)) for n, (u, k) in out.items()}


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def latency_rounds(targets, rounds, rate, seconds, conns, headers=""):
    out = {n: {"p50": [], "p99": []} for n in targets}
    for rnd in range(1, rounds + 1):
        for name, (port, _) in targets.items():
            lat, bad = subprocess_free_run(port, rate, seconds, conns, headers)
            out[name]["p50"].append(pct(lat, 50))
            out[name]["p99"].append(pct(lat, 99))
            flag = f"  ({bad} non-200)" if bad else ""
            print(f"round {rnd} {name:<22} {len(lat) / seconds:>7.0f} req/s at fixed rate: "
                  f"p50 {pct(lat, 50):.3f} ms, p99 {pct(lat, 99):.3f} ms{flag}", flush=True)
    return out


def subprocess_free_run(port, rate, seconds, conns, headers="", host="127.0.0.1"):
    os.sched_setaffinity(0, {1})
    try:
        return asyncio.run(fixed_rate(port, rate, seconds, conns, headers, host))
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count())))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--differing", action="store_true",
                    help="the candidate answers a document with one changed field, so every "
                         "comparison parses both bodies and walks their fields")
    args = ap.parse_args()
    doc = document()
    procs = []
    with tempfile.TemporaryDirectory() as workdir:
        try:
            pb.serve_file(workdir, doc)
            def site(root):
                return (f"server {{ listen 127.0.0.1:PORT; root {root}; "
                        "location / { default_type application/json; } }")
            primary, primary_port, _ = pb.start_nginx_http(workdir, "primary", 1, site(workdir))
            procs.append(primary)
            cand_root = workdir
            if args.differing:
                cand_root = os.path.join(workdir, "candidate-root")
                os.mkdir(cand_root)
                changed = doc.replace(b'"price":0', b'"price":1', 1)
                assert changed != doc
                pb.serve_file(cand_root, changed)
            candidate, candidate_port, _ = pb.start_nginx_http(workdir, "candidate", 1, site(cand_root))
            procs.append(candidate)
            targets = {}
            p, port, pid = pb.start_portcullis(workdir, primary_port, 0, name="portcullis-plain")
            procs.append(p)
            targets["no mirror"] = (port, pid)
            extra, upstreams = pb.mirror_config(candidate_port)
            p, mport, pid = pb.start_portcullis(workdir, primary_port, 0, name="portcullis-mirror",
                                                extra=extra, upstreams=upstreams)
            procs.append(p)
            with open(os.path.join(workdir, "portcullis-mirror.yaml")) as f:
                admin = int(re.search(r"admin: \{ address: \"127.0.0.1:(\d+)\"", f.read()).group(1))
            targets["mirror + compare"] = (mport, pid)

            for name, (port, _) in targets.items():
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{PATH}", timeout=5) as r:
                    assert r.read() == doc, f"{name}: body differs"
            cpu = pb.cpu_rounds(targets, args.rounds, args.duration,
                                lambda port, s: wrk(port, s, args.connections))
            split = split_rounds(targets, args.rounds, args.duration, args.connections)
            lat = latency_rounds(targets, args.rounds, args.rate, args.duration, 16)
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/admin/shadow", timeout=5) as r:
                shadow = json.load(r)["routes"][0]
            print(f"\nmirror: {shadow['mirrored']} copies answered, compared {shadow['compare']['compared']}"
                  f" ({shadow['compare']['equal']} equal), not mirrored: "
                  + ", ".join(f"{k} {v}" for k, v in shadow["not_mirrored"].items() if v))
            print(f"\n1 KiB JSON, medians of {args.rounds} rounds:")
            print(f"{'target':<22} {'CPU us/req':>11} {'p50 ms':>8} {'p99 ms':>8}")
            for name in targets:
                print(f"{name:<22} {pb.median(cpu[name]):>11.1f} {pb.median(lat[name]['p50']):>8.3f}"
                      f" {pb.median(lat[name]['p99']):>8.3f}")
            for name, (u, k) in split.items():
                print(f"{name:<22} user {u:.1f} us/req, kernel {k:.1f} us/req")
            base, m = "no mirror", "mirror + compare"
            print(f"CPU per request, mirror / none: {pb.median(cpu[m]) / pb.median(cpu[base]):.2f} "
                  "(per round: " + ", ".join(f"{a / b:.2f}" for a, b in zip(cpu[m], cpu[base])) + ")")
            print(f"p99 at {args.rate} req/s, mirror / none: "
                  f"{pb.median(lat[m]['p99']) / pb.median(lat[base]['p99']):.2f} (per round: "
                  + ", ".join(f"{a / b:.2f}" for a, b in zip(lat[m]["p99"], lat[base]["p99"])) + ")")
            print(f"p50 at {args.rate} req/s, mirror / none: "
                  f"{pb.median(lat[m]['p50']) / pb.median(lat[base]['p50']):.2f}")
        finally:
            pb.stop_all(procs)


if __name__ == "__main__":
    main()

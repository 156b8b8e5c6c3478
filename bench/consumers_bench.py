#!/usr/bin/env python3
"""What a Redis-backed quota adds to a request's latency: Portcullis with a stored API key and a
plan limit (the consumer cached, the limit local) against the same with the plan's monthly quota
counted in Redis on every request (one atomic script per decision), and batched (added to Redis
every 100 ms), in one run.

Usage: bench/run-consumers [--duration S] [--rounds N] [--rate R]

nginx (CPU 1) serves a 1 KiB JSON document; Redis runs on CPU 1; each Portcullis has one worker
thread on CPU 0; an open-loop Python client on CPU 1 sends `--rate` requests per second
(default 2000, well below saturation) with the API key, and latency runs from each request's
scheduled start, so a stall is never hidden. Targets alternate within each round; the medians
of the rounds' p50 and p99 are compared. Every process started is stopped by PID.
"""
import argparse
import os
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proxy_bench as pb  # noqa: E402
import shadow_bench as sb  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=int, default=2000)
    args = ap.parse_args()
    doc = pb.json_document()
    procs = []
    with tempfile.TemporaryDirectory() as workdir:
        try:
            up, up_port, _ = pb.start_document_upstream(workdir, doc)
            procs.append(up)
            redis, redis_port = pb.start_redis(workdir, 1)
            procs.append(redis)
            pb.seed_consumer(redis_port)
            configs = pb.consumer_configs(redis_port)
            targets = {}
            for name in ("store-key+plan", "store-key+plan+quota", "store-key+plan+batched"):
                p, port, pid = pb.start_portcullis(workdir, up_port, 0, name=name, extra=configs[name])
                procs.append(p)
                targets[name] = (port, pid)
            for name, (port, _) in targets.items():
                req = urllib.request.Request(f"http://127.0.0.1:{port}{pb.DOC_PATH}",
                                             headers={"X-API-Key": pb.BENCH_KEY})
                with urllib.request.urlopen(req, timeout=5) as r:
                    assert r.read() == doc, f"{name}: body differs"
                    assert "monthly" in r.headers.get("RateLimit-Policy", "") or "quota" not in name
            lat = sb.latency_rounds(targets, args.rounds, args.rate, args.duration, 16,
                                    f"X-API-Key: {pb.BENCH_KEY}\r\n")
            print(f"\nmedians of {args.rounds} rounds at {args.rate} req/s:")
            print(f"{'target':<26} {'p50 ms':>8} {'p99 ms':>8}")
            for name in targets:
                print(f"{name:<26} {pb.median(lat[name]['p50']):>8.3f} {pb.median(lat[name]['p99']):>8.3f}")
            base = "store-key+plan"
            for name in ("store-key+plan+quota", "store-key+plan+batched"):
                added = [a - b for a, b in zip(lat[name]["p99"], lat[base]["p99"])]
                print(f"added p99, {name} - {base}: {pb.median(added):+.3f} ms (per round: "
                      + ", ".join(f"{a:+.3f}" for a in added) + ")")
        finally:
            pb.stop_all(procs)


if __name__ == "__main__":
    main()

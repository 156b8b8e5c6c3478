#!/usr/bin/env python3
"""Per-tenant isolation: does one tenant far over its limit change another tenant's latency or
limit? One Portcullis (one worker, CPU 0) routes `{tenant}.bench.test` with a per-tenant limit of
1,000 requests per second; nginx (CPU 1) serves a 1 KiB JSON document.

Each round measures the victim tenant (`umbrella`) with an open-loop client at `--rate` requests
per second (latency from each request's scheduled start, so a stall is never hidden), first
alone, then while wrk (CPU 1, `--flood-connections` closed-loop connections) sends everything it
can as tenant `acme` — almost all of which the gateway refuses with 429. Reported: the victim's
p50/p99 in both phases, its non-200 answers (must be 0: its own limit is never reached), and
what the flood achieved. The client, wrk and nginx share CPU 1, so part of any latency change is
that CPU's, not the gateway's; the medians over rounds are compared.

Usage: bench/run-tenants [--rounds N] [--duration S] [--rate R] [--flood-connections C]
Every process started is stopped by PID.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proxy_bench as pb  # noqa: E402
import shadow_bench as sb  # noqa: E402


def start_gateway(workdir, upstream_port):
    port, admin = pb.free_port(), pb.free_port()
    conf = os.path.join(workdir, "tenants.yaml")
    with open(conf, "w") as f:
        f.write(f"""
listeners: [{{ name: public, address: "127.0.0.1:{port}" }}]
admin: {{ address: "127.0.0.1:{admin}" }}
defaults: {{ auth: none }}
{pb.TELEMETRY_OFF}
rate_limits:
  - {{ name: per-tenant, algorithm: sliding_window, limit: 1000, window_s: 1, key: [tenant] }}
upstreams:
  - name: backend
    targets: [{{ address: "127.0.0.1:{upstream_port}" }}]
    pool: {{ max_idle_per_target: 256 }}
routes:
  - name: tenants
    match: {{ hosts: ["{{tenant}}.bench.test"], path: {{ prefix: / }} }}
    upstream: backend
    rate_limits: [per-tenant]
""")
    binary = os.environ.get("PORTCULLIS_BIN") or os.path.join(pb.ROOT, "target", "release", "portcullis")
    proc = subprocess.Popen(["taskset", "-c", "0", binary, "run", "-c", conf, "--worker-threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, RUST_LOG="warn"))
    pb.wait_port(port)
    return proc, port


def flood(port, seconds, connections):
    """wrk as tenant acme on CPU 1, started in the background: (process, output file)."""
    out = tempfile.NamedTemporaryFile("w+", delete=False)
    p = subprocess.Popen(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
         "-H", "Host: acme.bench.test", f"http://127.0.0.1:{port}{pb.DOC_PATH}"],
        stdout=out, stderr=subprocess.DEVNULL)
    return p, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=6)
    ap.add_argument("--rate", type=int, default=300)
    ap.add_argument("--flood-connections", type=int, default=8)
    args = ap.parse_args()
    doc = pb.json_document()
    procs = []
    res = {"alone": {"p50": [], "p99": []}, "flooded": {"p50": [], "p99": []}}
    with tempfile.TemporaryDirectory() as workdir:
        try:
            up, up_port, _ = pb.start_document_upstream(workdir, doc)
            procs.append(up)
            gw, port = start_gateway(workdir, up_port)
            procs.append(gw)
            for rnd in range(1, args.rounds + 1):
                lat, bad = sb.subprocess_free_run(port, args.rate, args.duration, 8, "",
                                                  "umbrella.bench.test")
                res["alone"]["p50"].append(sb.pct(lat, 50))
                res["alone"]["p99"].append(sb.pct(lat, 99))
                print(f"round {rnd} victim alone:   p50 {sb.pct(lat, 50):.3f} ms, "
                      f"p99 {sb.pct(lat, 99):.3f} ms, non-200 {bad}", flush=True)
                assert bad == 0, "the victim was refused while alone"
                fp, out = flood(port, args.duration + 2, args.flood_connections)
                procs.append(fp)
                lat, bad = sb.subprocess_free_run(port, args.rate, args.duration, 8, "",
                                                  "umbrella.bench.test")
                fp.wait(timeout=args.duration + 30)
                procs.remove(fp)
                out.seek(0)
                text = out.read()
                os.unlink(out.name)
                total = int(re.search(r"(\d+) requests in", text).group(1))
                non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
                refused = int(non2xx.group(1)) if non2xx else 0
                res["flooded"]["p50"].append(sb.pct(lat, 50))
                res["flooded"]["p99"].append(sb.pct(lat, 99))
                print(f"round {rnd} victim flooded: p50 {sb.pct(lat, 50):.3f} ms, "
                      f"p99 {sb.pct(lat, 99):.3f} ms, non-200 {bad}; flood "
                      f"{total / (args.duration + 2):.0f} req/s, {100 * refused / max(total, 1):.1f}% refused",
                      flush=True)
                assert bad == 0, "the victim was refused during the other tenant's flood"
            med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
            print(f"\nmedians of {args.rounds} rounds, victim at {args.rate} req/s:")
            for phase in ("alone", "flooded"):
                print(f"  {phase:<8} p50 {med(res[phase]['p50']):.3f} ms  p99 {med(res[phase]['p99']):.3f} ms")
        finally:
            pb.stop_all(procs)


if __name__ == "__main__":
    main()

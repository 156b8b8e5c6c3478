#!/usr/bin/env python3
"""Instructions per request (valgrind callgrind, every thread of the gateway process) for
several Portcullis configurations on the plain proxy path. Steadier than wall-clock CPU on
shared cores: use it for small differences (a rate limit's cost, telemetry's).

Usage: bench/run-instructions [--duration S] [--connections C] [--jwt] [--signature] [--cache] [--mirror]
                              [--consumers]
       bench/run-instructions --compare BIN [BIN ...] [--rounds N]   (plain path only)

Each configuration runs under `valgrind --tool=callgrind --instr-atstart=no`; instrumentation
is switched on only around a wrk run (after a warm-up), and the total instruction count (Ir) is
divided by the requests wrk completed. Every process started is stopped by PID.
"""
import argparse
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proxy_bench as pb  # noqa: E402


def run_config(workdir, name, upstream_port, observability, extra, args, headers=(), binary=None,
               upstreams=""):
    conf, port = pb.portcullis_config(workdir, name, upstream_port, observability, extra, upstreams)
    out_file = os.path.join(workdir, f"callgrind.{name}.out")
    binary = binary or os.path.join(pb.ROOT, "target", "release", "portcullis")
    proc = subprocess.Popen(
        ["taskset", "-c", "0", "valgrind", "--tool=callgrind", "--instr-atstart=no",
         f"--callgrind-out-file={out_file}", binary, "run", "-c", conf, "--worker-threads", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="warn"))
    try:
        pb.wait_port(port, timeout=60)
        warm = pb.wrk(port, 2, args.connections, 1, headers)  # warm-up, not instrumented
        if warm["non2xx"]:
            raise SystemExit(f"{name}: warm-up got non-2xx answers")
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], capture_output=True, check=True)
        r = pb.wrk(port, args.duration, args.connections, 1, headers)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], capture_output=True, check=True)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    if getattr(args, "keep", None):
        os.makedirs(args.keep, exist_ok=True)
        for f in glob.glob(out_file + "*"):
            shutil.copy(f, args.keep)
    total = 0
    for f in glob.glob(out_file + "*"):
        with open(f) as fh:
            for line in fh:
                m = re.match(r"^totals: (\d+)", line)
                if m:
                    total += int(m.group(1))
                    break
    if r["non2xx"] or r["socket_errors"]:
        print(f"  {name}: non-2xx {r['non2xx']}, socket errors {r['socket_errors']}")
    return total / max(r["requests"], 1), r["requests"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--jwt", action="store_true",
                    help="JWT verification (HS256, RS256, ES256) with and without the verified-token cache")
    ap.add_argument("--signature", action="store_true",
                    help="RFC 9421 signed requests (ed25519, ecdsa-p256, rsa-pss, hmac-sha256), "
                         "beside JWT ES256/HS256 without the verified-token cache")
    ap.add_argument("--cache", action="store_true",
                    help="a response-cache hit (every request after the first) beside the plain path")
    ap.add_argument("--mirror", action="store_true",
                    help="every request mirrored to a second upstream and compared, beside the plain path")
    ap.add_argument("--consumers", action="store_true",
                    help="API keys from the file and from the consumer store (cached), plan limits and "
                         "quotas (Redis, exact and batched), beside the plain path")
    ap.add_argument("--keep", metavar="DIR",
                    help="copy the callgrind output files here (for callgrind_annotate)")
    ap.add_argument("--compare", nargs="+", metavar="BIN",
                    help="measure the plain path of these binaries, alternating, in one run")
    ap.add_argument("--rounds", type=int, default=3, help="with --compare: rounds per binary")
    args = ap.parse_args()
    if args.compare:
        return compare(args)
    workdir = tempfile.mkdtemp(prefix="portcullis-instr-")
    procs = []
    try:
        up, up_port, _ = pb.start_nginx(workdir, "upstream", 1, body=pb.BODY)
        procs.append(up)
        collector, collector_port, _ = pb.start_nginx(workdir, "collector", 1, body="")
        procs.append(collector)
        redis, redis_port = pb.start_redis(workdir, 1)
        procs.append(redis)
        telemetry_no_otlp = pb.telemetry_on(workdir, collector_port).split("  otlp:")[0]
        configs = [
            ("plain", pb.TELEMETRY_OFF, ("", ""), ()),
            ("local-limit", pb.TELEMETRY_OFF, pb.rate_limit_config("local"), ()),
            ("redis-limit", pb.TELEMETRY_OFF, pb.rate_limit_config("redis", redis_port), ()),
            ("telemetry", telemetry_no_otlp, ("", ""), ()),
            ("telemetry+otlp", pb.telemetry_on(workdir, collector_port), ("", ""), ()),
        ]
        if args.jwt:
            import jwt_tokens
            tokens = jwt_tokens.make(workdir)
            configs = configs[:1]
            for alg in ("hs256", "rs256", "es256"):
                header = (f"Authorization: Bearer {tokens[alg]}",)
                for cache in (True, False):
                    name = f"jwt-{alg}" + ("" if cache else "-nocache")
                    configs.append((name, pb.TELEMETRY_OFF, jwt_tokens.auth_config(tokens, alg, cache), header))
        if args.cache:
            configs = configs[:1] + [("cache-hit", pb.TELEMETRY_OFF, ("", "    cache: { ttl_s: 3600 }\n"), ())]
        if args.consumers:
            pb.seed_consumer(redis_port)
            header = (f"X-API-Key: {pb.BENCH_KEY}",)
            configs = configs[:1] + [(name, pb.TELEMETRY_OFF, extra, header)
                                     for name, extra in pb.consumer_configs(redis_port).items()]
        mirror_upstreams = ""
        if args.mirror:
            cand, cand_port, _ = pb.start_nginx(workdir, "candidate", 1, body=pb.BODY)
            procs.append(cand)
            extra, mirror_upstreams = pb.mirror_config(cand_port)
            configs = configs[:1] + [("mirror-compare", pb.TELEMETRY_OFF, extra, ())]
        if args.signature:
            import jwt_tokens
            import signature_keys
            tokens = jwt_tokens.make(workdir)
            configs = configs[:1]
            for alg in ("hs256", "es256"):
                configs.append((f"jwt-{alg}-nocache", pb.TELEMETRY_OFF,
                                jwt_tokens.auth_config(tokens, alg, False),
                                (f"Authorization: Bearer {tokens[alg]}",)))
            for alg in signature_keys.ALGS:
                extra, headers = signature_keys.make(workdir, alg)
                configs.append((f"sig-{alg}", pb.TELEMETRY_OFF, extra, headers))
        print(f"{'config':<20} {'instr/req':>10} {'vs plain':>9} {'requests':>9}")
        base = None
        for name, obs, extra, headers in configs:
            per_req, n = run_config(workdir, name, up_port, obs, extra, args, headers,
                                    upstreams=mirror_upstreams if name == "mirror-compare" else "")
            base = base or per_req
            print(f"{name:<20} {per_req:>10.0f} {100 * (per_req / base - 1):>+8.1f}% {n:>9}", flush=True)
    finally:
        pb.stop_all(procs)
        shutil.rmtree(workdir, ignore_errors=True)


def compare(args):
    """The plain path of several builds under the same conditions: the same upstream, load and
    machine state, alternating binary by binary each round; the median per binary."""
    workdir = tempfile.mkdtemp(prefix="portcullis-instr-")
    procs = []
    try:
        up, up_port, _ = pb.start_nginx(workdir, "upstream", 1, body=pb.BODY)
        procs.append(up)
        results = {b: [] for b in args.compare}
        for r in range(args.rounds):
            for i, b in enumerate(args.compare):
                per_req, n = run_config(workdir, f"cmp{i}-{r}", up_port, pb.TELEMETRY_OFF, ("", ""), args, binary=b)
                results[b].append(per_req)
                print(f"round {r + 1} {b}: {per_req:.0f} instr/req ({n} requests)", flush=True)
        first = pb.median(results[args.compare[0]])
        print(f"{'binary':<48} {'median':>8} {'vs first':>9}")
        for b in args.compare:
            m = pb.median(results[b])
            print(f"{b:<48} {m:>8.0f} {100 * (m / first - 1):>+8.1f}%")
    finally:
        pb.stop_all(procs)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

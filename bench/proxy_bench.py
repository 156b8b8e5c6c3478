#!/usr/bin/env python3
"""Plain-proxy benchmark: wrk against (a) the upstream directly, (b) Portcullis, (c) nginx, all
in front of the same upstream on 127.0.0.1, interleaved round by round.

Each proxy runs one worker thread pinned to CPU 0; wrk and the upstream share CPU 1. For every
run it prints requests/s, p50/p99 latency and the proxy's CPU time per request (user+sys of the
proxy process from /proc, divided by the requests wrk completed).

Usage: bench/run [--rounds N] [--duration S] [--connections C] [--telemetry] [--ratelimit] [--jwt]

Portcullis runs with telemetry off (trace context, metrics and access log disabled: the plain
proxy path); --telemetry adds a second Portcullis with all of it on: metrics, access log to a
file, trace context and OTLP span export of every request to a local collector (nginx answering
200). --ratelimit adds one Portcullis with a local token-bucket limit and one with the same
limit in Redis (a local redis-server on CPU 1), on every request, never refusing. --jwt sends an
HS256 token with every request and adds Portcullis verifying it (+ metrics), with the
verified-token cache on and off, and HAProxy 2.6 verifying it with jwt_verify (signature + exp).
Every process it starts is stopped by PID when it ends; all traffic stays on 127.0.0.1.
"""
import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BODY = "x" * 63 + "\n"  # 64-byte response body


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on port {port}")


def cpu_seconds(pid):
    """user+sys CPU seconds of a process and all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def nginx_conf(workdir, port, body=None, upstream_port=None):
    if body is not None:
        location = f'return 200 "{body.strip()}\\n";'
        upstream = ""
    else:
        location = ("proxy_pass http://backend; proxy_http_version 1.1; "
                    'proxy_set_header Connection "";')
        upstream = f"upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}"
    return nginx_http(workdir, port, f"{upstream}\n  server {{ listen 127.0.0.1:{port}; location / {{ {location} }} }}")


def nginx_http(workdir, port, body):
    """An nginx config with one worker, no logging, temp paths under `workdir`, and `body`
    (upstreams and servers) inside `http { }`."""
    return f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx-{port}.pid;
error_log {workdir}/nginx-{port}.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/body-{port};
  proxy_temp_path {workdir}/proxy-{port};
  fastcgi_temp_path {workdir}/fcgi-{port};
  uwsgi_temp_path {workdir}/uwsgi-{port};
  scgi_temp_path {workdir}/scgi-{port};
  keepalive_requests 1000000;
  {body}
}}
"""


def start_nginx(workdir, name, cpu, **kw):
    port = free_port()
    conf = os.path.join(workdir, f"{name}.conf")
    with open(conf, "w") as f:
        f.write(nginx_conf(workdir, port, **kw))
    proc, worker = launch_nginx(conf, workdir, cpu, [port])
    return proc, port, worker


def launch_nginx(conf, workdir, cpu, ports):
    """Starts nginx on `conf` pinned to `cpu`, waits for `ports`; returns (master, worker PID)."""
    proc = subprocess.Popen(["taskset", "-c", str(cpu), "nginx", "-c", conf, "-p", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for port in ports:
        wait_port(port)
    # The master forks one worker: that worker does the proxying; measure it.
    time.sleep(0.3)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    return proc, int(children[0]) if children else proc.pid


def start_nginx_http(workdir, name, cpu, body):
    """nginx on a free port with `body` (PORT replaced by the port) inside `http { }`; returns
    (master, port, worker PID)."""
    port = free_port()
    conf = os.path.join(workdir, f"{name}.conf")
    with open(conf, "w") as f:
        f.write(nginx_http(workdir, port, body.replace("PORT", str(port))))
    proc, worker = launch_nginx(conf, workdir, cpu, [port])
    return proc, port, worker


def cpu_rounds(targets, rounds, duration, load):
    """CPU µs per request of each target's serving process, round by round, targets alternating:
    `load(port, seconds)` returns (requests, non-2xx). Prints each figure; returns the lists."""
    results = {n: [] for n in targets}
    for rnd in range(1, rounds + 1):
        for name, (port, pid) in targets.items():
            load(port, 1)  # warm-up
            before = cpu_seconds(pid)
            n, bad = load(port, duration)
            cpu_us = (cpu_seconds(pid) - before) / max(n, 1) * 1e6
            results[name].append(cpu_us)
            flag = f"  ({bad} non-2xx)" if bad else ""
            print(f"round {rnd} {name:<18} {n / duration:>9.0f} req/s {cpu_us:>7.1f} CPU us/req{flag}",
                  flush=True)
    return results


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


TELEMETRY_OFF = """
observability:
  trace_context: { enabled: false }
  metrics: { enabled: false }
"""


def telemetry_on(workdir, collector_port):
    # Worst case for export: every request sampled.
    return f"""
observability:
  trace_context: {{ enabled: true, response_header: x-trace-id }}
  metrics: {{ enabled: true }}
  access_log: {{ destination: "{workdir}/access.log" }}
  otlp: {{ endpoint: "http://127.0.0.1:{collector_port}/v1/traces", sample_ratio: 1.0 }}
"""


def rate_limit_config(store, redis_port=None):
    """A limit that never refuses (so every request does the full decision), on every request."""
    redis = f'redis: {{ url: "redis://127.0.0.1:{redis_port}/0" }}\n' if redis_port else ""
    return (f"""{redis}rate_limits:
  - {{ name: bench, algorithm: token_bucket, capacity: 1000000000, refill_per_second: 1000000,
      key: [client_ip], store: {store} }}
""", "    rate_limits: [bench]\n")


BENCH_KEY = "bench-consumer-key-0123456789"


def consumer_configs(redis_port):
    """Consumer and plan configurations for the consumer benchmarks: name -> (top-level YAML,
    route YAML). Every limit and quota is far above what a run sends (so each request does
    the full decision); the consumer store caches for an hour (every lookup after the first is
    a cache hit). `seed_consumer` puts the consumer and `BENCH_KEY` in Redis."""
    import hashlib
    sha = hashlib.sha256(BENCH_KEY.encode()).hexdigest()
    redis = f'redis: {{ url: "redis://127.0.0.1:{redis_port}/0" }}\n'
    store = """consumer_store: { cache_ttl_ms: 3600000 }
"""
    def plans(quota):
        return f"""plans:
  - name: bench
    limits: [{{ name: rate, algorithm: token_bucket, capacity: 1000000000, refill_per_second: 1000000 }}]
    quotas: [{quota}]
"""
    def keys(store_keys):
        listed = "" if store_keys else f', keys: [{{ id: bench, sha256: "{sha}" }}]'
        flag = ", consumer_store: true" if store_keys else ""
        return f"auth:\n  api_keys: [{{ name: keys{flag}{listed} }}]\n"
    route = "    auth: { api_key: keys }\n"
    named = """rate_limits:
  - { name: per-key, algorithm: token_bucket, capacity: 1000000000, refill_per_second: 1000000, key: [api_key] }
"""
    quota = "{ name: monthly, limit: 1000000000, period: month, time_zone: Europe/Berlin%s }"
    return {
        "config-key": (keys(False), route),
        "config-key+limit": (keys(False) + named, route + "    rate_limits: [per-key]\n"),
        "store-key": (redis + store + keys(True), route),
        "store-key+plan": (redis + store + keys(True) + plans(""),
                           route + "    rate_limits: [{ by_plan: true }]\n"),
        "store-key+plan+quota": (redis + store + keys(True) + plans(quota % ""),
                                 route + "    rate_limits: [{ by_plan: true }]\n"),
        "store-key+plan+batched": (redis + store + keys(True) + plans(quota % ", flush_interval_ms: 100"),
                                   route + "    rate_limits: [{ by_plan: true }]\n"),
    }


def seed_consumer(redis_port):
    """The bench consumer (plan `bench`) and its key in Redis, in the consumer store's layout."""
    import hashlib
    sha = hashlib.sha256(BENCH_KEY.encode()).hexdigest()
    cli = ["redis-cli", "-p", str(redis_port)]
    subprocess.run(cli + ["HSET", "portcullis:consumer:bench-app", "tenant", "bench", "plan", "bench"],
                   check=True, capture_output=True)
    subprocess.run(cli + ["HSET", f"portcullis:apikey:{sha}", "consumer", "bench-app", "id", "bench"],
                   check=True, capture_output=True)


def start_redis(workdir, cpu):
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", str(cpu), "redis-server", "--bind", "127.0.0.1",
                             "--port", str(port), "--save", "", "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


METRICS_ONLY = """
observability:
  trace_context: { enabled: false }
  metrics: { enabled: true }
"""


def start_haproxy_jwt(workdir, upstream_port, cpu):
    """HAProxy 2.6 verifying an HS256 JWT (signature and exp) on every request."""
    import jwt_tokens
    port = free_port()
    conf = os.path.join(workdir, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(f"""global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind 127.0.0.1:{port}
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
  http-request deny deny_status 401 unless {{ var(txn.alg) -m str HS256 }}
  http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_verify(txn.alg,"{jwt_tokens.HS_SECRET}") -m int 1 }}
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
  http-request set-var(txn.now) date()
  http-request deny deny_status 401 if {{ var(txn.exp),sub(txn.now) -m int lt 0 }}
  default_backend be
backend be
  http-reuse always
  server s1 127.0.0.1:{upstream_port}
""")
    proc = subprocess.Popen(["taskset", "-c", str(cpu), "haproxy", "-f", conf, "-db"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port, proc.pid


def portcullis_config(workdir, name, upstream_port, observability=TELEMETRY_OFF, extra=("", ""),
                      upstreams=""):
    """Writes a config that proxies everything to the upstream; `extra` is (top-level YAML,
    route YAML), `upstreams` more entries of `upstreams:`. Returns (config path, listener port)."""
    port, admin = free_port(), free_port()
    conf = os.path.join(workdir, f"{name}.yaml")
    with open(conf, "w") as f:
        f.write(f"""
listeners: [{{ name: public, address: "127.0.0.1:{port}" }}]
admin: {{ address: "127.0.0.1:{admin}" }}
defaults: {{ auth: none }}
{observability}
{extra[0]}
upstreams:
  - name: backend
    targets: [{{ address: "127.0.0.1:{upstream_port}" }}]
    pool: {{ max_idle_per_target: 256 }}
{upstreams}routes:
  - name: all
    match: {{ path: {{ prefix: / }} }}
    upstream: backend
{extra[1]}""")
    return conf, port


def stop_all(procs):
    """Stops the processes this script started, by PID."""
    for p in procs:
        try:
            os.kill(p.pid, signal.SIGTERM)
            p.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            p.kill()


def start_portcullis(workdir, upstream_port, cpu, name="portcullis", observability=TELEMETRY_OFF,
                     extra=("", ""), upstreams=""):
    conf, port = portcullis_config(workdir, name, upstream_port, observability, extra, upstreams)
    binary = os.environ.get("PORTCULLIS_BIN") or os.path.join(ROOT, "target", "release", "portcullis")
    proc = subprocess.Popen(["taskset", "-c", str(cpu), binary, "run", "-c", conf, "--worker-threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, RUST_LOG="warn"))
    wait_port(port)
    return proc, port, proc.pid


DOC_PATH = "/doc.json"


def json_document():
    """About 1 KiB of JSON: a list of small items (the cache and shadow benchmarks' answer)."""
    parts, i = [], 0
    while len(",".join(parts)) < 1024 - 64:
        parts.append(f'{{"id":{i},"name":"item-{i}","price":{i * 7 % 100}}}')
        i += 1
    return ('{"items":[' + ",".join(parts) + "]}").encode()


def serve_file(directory, data, name="doc.json"):
    """Writes `data` where nginx's unprivileged worker can read it (the directory too)."""
    os.chmod(directory, 0o755)
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o644)


def start_document_upstream(workdir, doc, name="upstream", cpu=1):
    """nginx on `cpu` serving `doc` as JSON at DOC_PATH: (process, port, pid)."""
    serve_file(workdir, doc)
    site = (f"server {{ listen 127.0.0.1:PORT; root {workdir}; "
            "location / { default_type application/json; } }")
    return start_nginx_http(workdir, name, cpu, site)


def wrk_count(port, duration, connections, path=DOC_PATH, headers=()):
    """wrk (CPU 1) against one URL: (requests completed, non-2xx answers)."""
    extra = [a for h in headers for a in ("-H", h)]
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{duration}s", *extra,
         f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, timeout=duration + 30).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return requests, int(errors.group(1)) if errors else 0


def mirror_config(candidate_port):
    """(route YAML, upstreams YAML): every request mirrored to a `candidate` upstream and compared."""
    return (("", "    mirror: { upstream: candidate, percent: 100, compare: true, max_in_flight: 1024 }\n"),
            f"  - name: candidate\n    targets: [{{ address: \"127.0.0.1:{candidate_port}\" }}]\n"
            "    pool: { max_idle_per_target: 256 }\n")


def wrk(port, duration, connections, cpu, headers=()):
    extra = [a for h in headers for a in ("-H", h)]
    out = subprocess.run(
        ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
         *extra, f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=duration + 30).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)

    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    return {
        "requests": requests, "rps": rps, "p50_ms": pct(50), "p99_ms": pct(99),
        "non2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--telemetry", action="store_true",
                    help="also run Portcullis with metrics + access log (file) + trace context + OTLP export on")
    ap.add_argument("--jwt", action="store_true",
                    help="HS256 JWT + metrics on every request: Portcullis (verified-token cache on and "
                         "off) against HAProxy's jwt_verify; every target gets the token")
    ap.add_argument("--ratelimit", action="store_true",
                    help="also run Portcullis with a local limit and with a Redis limit on every request")
    args = ap.parse_args()
    if os.cpu_count() < 2:
        sys.exit("needs 2 CPUs (proxy on CPU 0, wrk and upstream on CPU 1)")

    workdir = tempfile.mkdtemp(prefix="portcullis-bench-")
    procs = []
    try:
        up, up_port, _ = start_nginx(workdir, "upstream", 1, body=BODY)
        procs.append(up)
        pc, pc_port, pc_pid = start_portcullis(workdir, up_port, 0)
        procs.append(pc)
        ng, ng_port, ng_pid = start_nginx(workdir, "proxy", 0, upstream_port=up_port)
        procs.append(ng)
        targets = [("upstream-direct", up_port, None), ("portcullis", pc_port, pc_pid), ("nginx", ng_port, ng_pid)]
        if args.telemetry:
            # nginx stands in for an OTLP collector: it reads each export and answers 200.
            col, col_port, _ = start_nginx(workdir, "collector", 1, body="")
            procs.append(col)
            pt, pt_port, pt_pid = start_portcullis(workdir, up_port, 0, "portcullis-telemetry",
                                                   telemetry_on(workdir, col_port))
            procs.append(pt)
            targets.insert(2, ("portcullis+telem", pt_port, pt_pid))

        if args.ratelimit:
            rd, rd_port = start_redis(workdir, 1)
            procs.append(rd)
            pl, pl_port, pl_pid = start_portcullis(workdir, up_port, 0, "portcullis-local-limit",
                                                   extra=rate_limit_config("local"))
            procs.append(pl)
            pr, pr_port, pr_pid = start_portcullis(workdir, up_port, 0, "portcullis-redis-limit",
                                                   extra=rate_limit_config("redis", rd_port))
            procs.append(pr)
            targets.insert(2, ("pc+redis-limit", pr_port, pr_pid))
            targets.insert(2, ("pc+local-limit", pl_port, pl_pid))

        headers = ()
        if args.jwt:
            import jwt_tokens
            tokens = jwt_tokens.make(workdir)
            headers = (f"Authorization: Bearer {tokens['hs256']}",)
            for name, cache in (("pc+jwt-hs256", True), ("pc+jwt-hs256-nc", False)):
                pj, pj_port, pj_pid = start_portcullis(workdir, up_port, 0, name, METRICS_ONLY,
                                                       extra=jwt_tokens.auth_config(tokens, "hs256", cache))
                procs.append(pj)
                targets.append((name, pj_port, pj_pid))
            hp, hp_port, hp_pid = start_haproxy_jwt(workdir, up_port, 0)
            procs.append(hp)
            targets.append(("haproxy+jwt", hp_port, hp_pid))

        for _, port, _ in targets:  # warm-up: pools, caches
            r = wrk(port, 2, args.connections, 1, headers)
            if r["non2xx"]:
                sys.exit(f"warm-up got non-2xx answers from port {port}: check the JWT setup")

        results = {name: [] for name, _, _ in targets}
        print(f"{'round':>5} {'target':<16} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'cpu us/req':>11}")
        for rnd in range(1, args.rounds + 1):
            for name, port, pid in targets:
                cpu_before = cpu_seconds(pid) if pid else None
                r = wrk(port, args.duration, args.connections, 1, headers)
                if pid:
                    r["cpu_us"] = (cpu_seconds(pid) - cpu_before) / max(r["requests"], 1) * 1e6
                results[name].append(r)
                cpu = f"{r['cpu_us']:.1f}" if "cpu_us" in r else "-"
                bad = f"  non-2xx={r['non2xx']}" if r["non2xx"] else ""
                bad += f"  socket errors: {r['socket_errors']}" if r["socket_errors"] else ""
                print(f"{rnd:>5} {name:<16} {r['rps']:>10.0f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {cpu:>11}{bad}",
                      flush=True)

        print("\nmedian over rounds")
        print(f"{'target':<16} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'cpu us/req':>11}")

        for name, runs in results.items():
            cpu = f"{median([r['cpu_us'] for r in runs]):.1f}" if "cpu_us" in runs[0] else "-"
            print(f"{name:<16} {median([r['rps'] for r in runs]):>10.0f} {median([r['p50_ms'] for r in runs]):>8.3f} "
                  f"{median([r['p99_ms'] for r in runs]):>8.3f} {cpu:>11}")
    finally:
        stop_all(procs)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""HTTP/2 benchmark: h2load against Portcullis and nginx, each terminating h2 over TLS and h2c
(prior knowledge) and proxying to the same HTTP/1.1 upstream (nginx returning 64 bytes), rounds
interleaved.

Each proxy runs one worker thread pinned to CPU 0; h2load and the upstream share CPU 1. For
every run it prints requests/s, mean request time, and the proxy's CPU time per request
(user+sys from /proc divided by the requests h2load completed). Both proxies use the same
self-signed ECDSA P-256 certificate (made with openssl) and negotiate TLS 1.3; the cipher is
printed once per target.

Usage: bench/run-h2 [--rounds N] [--duration S] [--clients C] [--streams M]
Every process it starts is stopped by PID when it ends; all traffic stays on 127.0.0.1.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proxy_bench import (BODY, ROOT, cpu_seconds, free_port, launch_nginx, median,  # noqa: E402
                         start_nginx, stop_all, wait_port)


def make_cert(workdir):
    cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def start_nginx_h2(workdir, upstream_port, cert, key, cpu):
    tls_port, h2c_port = free_port(), free_port()
    conf = os.path.join(workdir, "nginx-h2.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx-h2.pid;
error_log {workdir}/nginx-h2.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/body-h2;
  proxy_temp_path {workdir}/proxy-h2;
  fastcgi_temp_path {workdir}/fcgi-h2;
  uwsgi_temp_path {workdir}/uwsgi-h2;
  scgi_temp_path {workdir}/scgi-h2;
  keepalive_requests 1000000;
  http2_max_requests 1000000;
  upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{tls_port} ssl http2;
    listen 127.0.0.1:{h2c_port} http2;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
    proc, worker = launch_nginx(conf, workdir, cpu, [tls_port, h2c_port])
    return proc, tls_port, h2c_port, worker


def start_portcullis_h2(workdir, upstream_port, cert, key, cpu):
    tls_port, h2c_port, admin = free_port(), free_port(), free_port()
    conf = os.path.join(workdir, "portcullis-h2.yaml")
    with open(conf, "w") as f:
        f.write(f"""
listeners:
  - name: tls
    address: "127.0.0.1:{tls_port}"
    tls: {{ certificates: [{{ cert_file: "{cert}", key_file: "{key}" }}] }}
  - name: h2c
    address: "127.0.0.1:{h2c_port}"
admin: {{ address: "127.0.0.1:{admin}" }}
defaults: {{ auth: none }}
observability:
  trace_context: {{ enabled: false }}
  metrics: {{ enabled: false }}
upstreams:
  - name: backend
    targets: [{{ address: "127.0.0.1:{upstream_port}" }}]
    pool: {{ max_idle_per_target: 256 }}
routes:
  - name: all
    match: {{ path: {{ prefix: / }} }}
    upstream: backend
""")
    binary = os.path.join(ROOT, "target", "release", "portcullis")
    proc = subprocess.Popen(["taskset", "-c", str(cpu), binary, "run", "-c", conf, "--worker-threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, RUST_LOG="warn"))
    wait_port(tls_port)
    wait_port(h2c_port)
    return proc, tls_port, h2c_port, proc.pid


def h2load(url, duration, clients, streams, cpu):
    out = subprocess.run(
        ["taskset", "-c", str(cpu), "h2load", "-t1", f"-c{clients}", f"-m{streams}", f"-D{duration}", url],
        capture_output=True, text=True, timeout=duration + 60).stdout
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored", out)
    if not m:
        sys.exit(f"unexpected h2load output:\n{out}")
    done, failed, errored = int(m.group(3)), int(m.group(5)), int(m.group(6))
    rps = float(re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out).group(1))
    statuses = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not statuses:
        sys.exit(f"unexpected h2load output:\n{out}")
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out).group(1)
    value, unit = float(re.match(r"([\d.]+)", mean).group(1)), re.sub(r"[\d.]", "", mean)
    mean_ms = value * {"us": 0.001, "ms": 1, "s": 1000}[unit]
    cipher = re.search(r"Cipher: (\S+)", out)
    proto = re.search(r"Application protocol: (\S+)", out)
    return {"requests": done, "rps": rps, "mean_ms": mean_ms, "non2xx": sum(int(statuses.group(i)) for i in (2, 3, 4)),
            "failed": failed + errored, "cipher": cipher.group(1) if cipher else "-",
            "proto": proto.group(1) if proto else "-"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--streams", type=int, default=10, help="concurrent streams per connection")
    args = ap.parse_args()
    if os.cpu_count() < 2:
        sys.exit("needs 2 CPUs (proxy on CPU 0, h2load and upstream on CPU 1)")

    workdir = tempfile.mkdtemp(prefix="portcullis-h2bench-")
    procs = []
    try:
        cert, key = make_cert(workdir)
        up, up_port, _ = start_nginx(workdir, "upstream", 1, body=BODY)
        procs.append(up)
        pc, pc_tls, pc_h2c, pc_pid = start_portcullis_h2(workdir, up_port, cert, key, 0)
        procs.append(pc)
        ng, ng_tls, ng_h2c, ng_pid = start_nginx_h2(workdir, up_port, cert, key, 0)
        procs.append(ng)
        targets = [
            ("portcullis h2/tls", f"https://127.0.0.1:{pc_tls}/", pc_pid),
            ("nginx h2/tls", f"https://127.0.0.1:{ng_tls}/", ng_pid),
            ("portcullis h2c", f"http://127.0.0.1:{pc_h2c}/", pc_pid),
            ("nginx h2c", f"http://127.0.0.1:{ng_h2c}/", ng_pid),
        ]
        for name, url, _ in targets:  # warm-up, and what was negotiated
            r = h2load(url, 2, args.clients, args.streams, 1)
            if r["non2xx"] or r["failed"]:
                sys.exit(f"warm-up of {name} got failures: {r}")
            print(f"{name:<18} protocol {r['proto']}, cipher {r['cipher']}")

        results = {name: [] for name, _, _ in targets}
        print(f"\n{'round':>5} {'target':<18} {'req/s':>10} {'mean ms':>8} {'cpu us/req':>11}")
        for rnd in range(1, args.rounds + 1):
            for name, url, pid in targets:
                before = cpu_seconds(pid)
                r = h2load(url, args.duration, args.clients, args.streams, 1)
                r["cpu_us"] = (cpu_seconds(pid) - before) / max(r["requests"], 1) * 1e6
                results[name].append(r)
                bad = f"  non-2xx={r['non2xx']} failed={r['failed']}" if r["non2xx"] or r["failed"] else ""
                print(f"{rnd:>5} {name:<18} {r['rps']:>10.0f} {r['mean_ms']:>8.3f} {r['cpu_us']:>11.1f}{bad}",
                      flush=True)

        print("\nmedian over rounds")
        print(f"{'target':<18} {'req/s':>10} {'mean ms':>8} {'cpu us/req':>11}")
        for name, runs in results.items():
            print(f"{name:<18} {median([r['rps'] for r in runs]):>10.0f} "
                  f"{median([r['mean_ms'] for r in runs]):>8.3f} {median([r['cpu_us'] for r in runs]):>11.1f}")
    finally:
        stop_all(procs)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

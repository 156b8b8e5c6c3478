#!/usr/bin/env python3
"""CPU per request of gzip response compression: Portcullis against nginx `gzip on`, the same
16 KiB JSON document, the same level, the same pinning, in one run.

Usage: bench/run-compression [--duration S] [--rounds N] [--level L] [--connections C]

An nginx backend (CPU 1) serves the document uncompressed. Each proxy under test (CPU 0) sits in
front of it: nginx with `gzip on; gzip_comp_level L; gzip_proxied any`, and Portcullis with
`compression: { codecs: [gzip], level: L }`; both also without compression, for what the
compression itself costs. wrk (CPU 1) sends `Accept-Encoding: gzip`. CPU is user+sys of the
proxy's serving process (nginx's worker; Portcullis with one worker thread) over the run,
divided by the requests completed. Targets alternate within each round; medians are reported.
Every process started is stopped by PID.
"""
import argparse
import gzip
import os
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proxy_bench as pb  # noqa: E402

PATH = "/doc.json"


def document():
    parts, i = [], 0
    size = 0
    while size < 16 * 1024 - 64:
        item = f'{{"id":{i},"name":"item-{i}","price":{i * 7 % 100}.{i % 100:02},"tags":["a","b"]}}'
        parts.append(item)
        size += len(item) + 1
        i += 1
    return ('{"items":[' + ",".join(parts) + "]}").encode()


def wrk(port, duration, connections):
    return pb.wrk_count(port, duration, connections, PATH, ("Accept-Encoding: gzip",))


def fetch(port):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{PATH}", headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=5) as r:
        raw = r.read()
        return r.headers.get("Content-Encoding"), len(raw), raw


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--level", type=int, default=4)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    doc = document()
    procs = []
    with tempfile.TemporaryDirectory() as workdir:
        try:
            pb.serve_file(workdir, doc)
            backend, backend_port, _ = pb.start_nginx_http(
                workdir, "backend", 1,
                f"server {{ listen 127.0.0.1:PORT; root {workdir}; "
                "location / { default_type application/json; etag on; } }")
            procs.append(backend)
            proxy = (f"upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 64; }} "
                     "server { listen 127.0.0.1:PORT; location / { proxy_pass http://backend; "
                     'proxy_http_version 1.1; proxy_set_header Connection ""; } ')
            gzip_on = (f"gzip on; gzip_comp_level {args.level}; gzip_types application/json; "
                       "gzip_min_length 256; gzip_proxied any; gzip_vary on; ")
            targets = {}
            p, port, worker = pb.start_nginx_http(workdir, "nginx-gzip", 0, gzip_on + proxy + "}")
            procs.append(p)
            targets["nginx gzip"] = (port, worker)
            p, port, worker = pb.start_nginx_http(workdir, "nginx-plain", 0, proxy + "}")
            procs.append(p)
            targets["nginx plain"] = (port, worker)
            p, port, pid = pb.start_portcullis(
                workdir, backend_port, 0, name="portcullis-gzip",
                extra=("", f"    compression: {{ codecs: [gzip], level: {args.level} }}\n"))
            procs.append(p)
            targets["portcullis gzip"] = (port, pid)
            p, port, pid = pb.start_portcullis(workdir, backend_port, 0, name="portcullis-plain")
            procs.append(p)
            targets["portcullis plain"] = (port, pid)

            for name, (port, _) in targets.items():
                coding, size, raw = fetch(port)
                body = gzip.decompress(raw) if coding == "gzip" else raw
                assert body == doc, f"{name}: body differs from the document"
                print(f"{name:<18} Content-Encoding: {coding or 'identity':<8} {size} bytes on the wire")
            results = pb.cpu_rounds(targets, args.rounds, args.duration,
                                    lambda port, s: wrk(port, s, args.connections))
            print(f"\nlevel {args.level}, 16 KiB JSON ({len(doc)} bytes), medians of {args.rounds} rounds:")
            print(f"{'target':<18} {'CPU us/req':>11}")
            for name, xs in results.items():
                print(f"{name:<18} {pb.median(xs):>11.1f}")
            ng = pb.median(results["nginx gzip"])
            pc = pb.median(results["portcullis gzip"])
            print(f"portcullis gzip / nginx gzip: {pc / ng:.2f}")
        finally:
            pb.stop_all(procs)


if __name__ == "__main__":
    main()

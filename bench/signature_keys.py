"""Keys, a config and pre-signed request headers for the RFC 9421 signature benchmarks, made
with the test signer (tests/signer/sign.py, python3-cryptography). Used by instructions.py.

Every request of a run carries the same signature (no nonce, so the gateway may accept it again
until `max_age_s`): the figure is the full verification of one request — parsing both fields,
rebuilding the base, the public-key or HMAC check — with no cache in front of it."""
import json
import os
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIGNER = os.path.join(ROOT, "tests", "signer", "sign.py")
AUTHORITY = "api.bench"
ALGS = ("ed25519", "ecdsa-p256-sha256", "rsa-pss-sha512", "hmac-sha256")


def _signer(*args, request=None):
    out = subprocess.run(["python3", SIGNER, *args], capture_output=True, check=True, text=True,
                         input=json.dumps(request) if request is not None else None).stdout
    return json.loads(out)


def make(workdir, alg):
    """(extra YAML for proxy_bench.portcullis_config, request headers) for one algorithm."""
    key = _signer("keygen", alg)
    if alg == "hmac-sha256":
        material = f'secret_base64: "{key["secret"]}"'
    else:
        path = os.path.join(workdir, f"{alg}.pub.pem")
        with open(path, "w") as f:
            f.write(key["public"])
        material = f'key_file: "{path}"'
    request = {"alg": alg, "keyid": "bench", "method": "GET", "scheme": "http",
               "authority": AUTHORITY, "path": "/", "query": None,
               "covered": ["@method", "@authority", "@path"], "created": int(time.time()), **key}
    signed = _signer("sign", request=request)
    top = f"""auth:
  signatures:
    - name: partners
      max_age_s: 3600
      keys:
        - {{ id: bench, alg: {alg}, {material} }}
"""
    headers = (f"Host: {AUTHORITY}", f"Signature-Input: {signed['signature-input']}",
               f"Signature: {signed['signature']}")
    return (top, "    auth: { signature: partners }\n"), headers

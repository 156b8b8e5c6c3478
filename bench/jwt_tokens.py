"""Test keys, a JWKS file and signed tokens for the JWT benchmarks, made with the openssl CLI
(Python's standard library has no RSA/ECDSA). Used by proxy_bench.py and instructions.py."""
import base64
import hashlib
import hmac
import json
import os
import re
import subprocess
import time

HS_SECRET = "bench-secret-0123456789abcdef0123456789"


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _openssl(*args, data=None):
    return subprocess.run(["openssl", *args], input=data, capture_output=True, check=True).stdout


def _claims():
    now = int(time.time())
    return {"sub": "bench-user", "iss": "https://idp.bench", "aud": "api", "iat": now,
            "exp": now + 24 * 3600, "tenant_id": "bench", "scope": "read"}


def _signing_input(alg, kid):
    header = {"alg": alg, "typ": "JWT"}
    if kid:
        header["kid"] = kid
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(_claims()).encode())}"


def _der_ecdsa_to_raw(der, size):
    """ECDSA-Sig-Value (DER SEQUENCE of two INTEGERs) → JOSE r||s."""
    assert der[0] == 0x30
    i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    out = b""
    for _ in range(2):
        assert der[i] == 0x02
        n = der[i + 1]
        v = der[i + 2:i + 2 + n].lstrip(b"\x00")
        out += v.rjust(size, b"\x00")
        i += 2 + n
    return out


def make(workdir):
    """Returns {"hs256": token, "rs256": token, "es256": token, "jwks_file": path}."""
    rsa_key = os.path.join(workdir, "rsa.pem")
    ec_key = os.path.join(workdir, "ec.pem")
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", rsa_key)
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", ec_key)

    modulus = _openssl("rsa", "-in", rsa_key, "-noout", "-modulus").decode().strip().split("=")[1]
    n = bytes.fromhex(modulus)
    ec_text = _openssl("ec", "-in", ec_key, "-noout", "-text").decode()
    pub_hex = re.search(r"pub:\s*\n((?:\s+[0-9a-f:]+\n)+)", ec_text).group(1)
    point = bytes.fromhex("".join(pub_hex.split()).replace(":", ""))
    assert point[0] == 4 and len(point) == 65
    jwks = {"keys": [
        {"kty": "RSA", "kid": "rsa-1", "use": "sig", "n": b64(n), "e": b64((65537).to_bytes(3, "big"))},
        {"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": b64(point[1:33]), "y": b64(point[33:])},
    ]}
    jwks_file = os.path.join(workdir, "jwks.json")
    with open(jwks_file, "w") as f:
        json.dump(jwks, f)

    tokens = {"jwks_file": jwks_file}
    si = _signing_input("HS256", None)
    tokens["hs256"] = si + "." + b64(hmac.new(HS_SECRET.encode(), si.encode(), hashlib.sha256).digest())
    si = _signing_input("RS256", "rsa-1")
    tokens["rs256"] = si + "." + b64(_openssl("dgst", "-sha256", "-sign", rsa_key, data=si.encode()))
    si = _signing_input("ES256", "ec-1")
    der = _openssl("dgst", "-sha256", "-sign", ec_key, data=si.encode())
    tokens["es256"] = si + "." + b64(_der_ecdsa_to_raw(der, 32))
    return tokens


def auth_config(tokens, alg, cache=True):
    """(top-level YAML, route YAML) for a Portcullis route that requires a JWT of `alg`."""
    alg_u = alg.upper()
    source = (f'secret: "{HS_SECRET}"' if alg == "hs256"
              else f'jwks_file: "{tokens["jwks_file"]}"')
    top = f"""auth:
  jwt:
    - {{ name: bench, {source}, algorithms: [{alg_u}], issuer: "https://idp.bench",
        audiences: [api], verified_cache_s: {300 if cache else 0} }}
"""
    return top, "    auth: { jwt: bench }\n"

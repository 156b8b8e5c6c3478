#!/usr/bin/python3
"""An independent RFC 9421 signer for the gateway's tests, on Debian's python3-cryptography.

    sign.py keygen ALG          -> JSON {"private": PEM, "public": PEM} (or {"secret": b64})
    sign.py sign < request.json -> JSON {"signature-input", "signature", "content-digest"}

request.json: {alg, private | secret, keyid, label, method, scheme, authority, path, query,
headers: [[name, value]...], covered: [...], created, expires?, nonce?, send_alg?,
body_b64?, digest: sha-256|sha-512}.
"""
import base64
import hashlib
import hmac
import json
import os
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils


def keygen(alg):
    if alg == "hmac-sha256":
        return {"secret": base64.b64encode(os.urandom(32)).decode()}
    if alg == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    elif alg == "ecdsa-p256-sha256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif alg == "ecdsa-p384-sha384":
        key = ec.generate_private_key(ec.SECP384R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return {"private": private, "public": public}


def component_value(name, r):
    if name == "@method":
        return r["method"]
    if name == "@scheme":
        return r["scheme"]
    if name == "@authority":
        return r["authority"].lower()
    if name == "@path":
        return r["path"]
    if name == "@query":
        return "?" + (r.get("query") or "")
    if name == "@target-uri":
        q = r.get("query")
        return "%s://%s%s%s" % (r["scheme"], r["authority"].lower(), r["path"], "?" + q if q is not None else "")
    values = [v.strip(" \t") for (n, v) in r["headers"] if n.lower() == name]
    if not values:
        raise SystemExit("covered field %s is not in the request" % name)
    return ", ".join(values)


def raw_ecdsa(der, size):
    r, s = utils.decode_dss_signature(der)
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def sign(r):
    alg = r["alg"]
    params = '(%s);created=%d' % (" ".join('"%s"' % c for c in r["covered"]), r["created"])
    if r.get("expires") is not None:
        params += ";expires=%d" % r["expires"]
    if r.get("nonce"):
        params += ';nonce="%s"' % r["nonce"]
    params += ';keyid="%s"' % r["keyid"]
    if r.get("send_alg"):
        params += ';alg="%s"' % r["send_alg"]
    body = base64.b64decode(r.get("body_b64") or "")
    digest_alg = r.get("digest", "sha-256")
    h = hashlib.sha512(body) if digest_alg == "sha-512" else hashlib.sha256(body)
    content_digest = "%s=:%s:" % (digest_alg, base64.b64encode(h.digest()).decode())
    r.setdefault("headers", [])
    if not any(n.lower() == "content-digest" for (n, _) in r["headers"]):
        r["headers"].append(["content-digest", content_digest])
    lines = ['"%s": %s' % (c, component_value(c, r)) for c in r["covered"]]
    lines.append('"@signature-params": ' + params)
    base = "\n".join(lines).encode()
    if alg == "hmac-sha256":
        sig = hmac.new(base64.b64decode(r["secret"]), base, hashlib.sha256).digest()
    else:
        key = serialization.load_pem_private_key(r["private"].encode(), password=None)
        if alg == "ed25519":
            sig = key.sign(base)
        elif alg == "ecdsa-p256-sha256":
            sig = raw_ecdsa(key.sign(base, ec.ECDSA(hashes.SHA256())), 32)
        elif alg == "ecdsa-p384-sha384":
            sig = raw_ecdsa(key.sign(base, ec.ECDSA(hashes.SHA384())), 48)
        elif alg == "rsa-pss-sha512":
            sig = key.sign(base, padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64), hashes.SHA512())
        elif alg == "rsa-v1_5-sha256":
            sig = key.sign(base, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise SystemExit("unknown alg " + alg)
    label = r.get("label", "sig1")
    return {
        "signature-input": "%s=%s" % (label, params),
        "signature": "%s=:%s:" % (label, base64.b64encode(sig).decode()),
        "content-digest": content_digest,
        "base": base.decode(),
    }


if __name__ == "__main__":
    if sys.argv[1] == "keygen":
        print(json.dumps(keygen(sys.argv[2])))
    else:
        print(json.dumps(sign(json.load(sys.stdin))))

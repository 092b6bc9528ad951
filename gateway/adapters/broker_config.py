"""`polegw broker config` and `polegw broker certs`: the files Mosquitto needs.

`write_broker_config` writes, into one folder:

- `passwd`: Mosquitto's password file (`user:$7$…`, as mosquitto_passwd writes);
- `acl`: the ACL file (gateway.core.broker_access.render_acl);
- `polegw.conf`: a mosquitto.conf part (include it, or copy it) that turns
  anonymous access off, names those two files and opens the TLS listeners.

Each file is replaced atomically, so a broker reloading on SIGHUP never reads a
half-written one. Re-running with the same store writes the same files.

`make_certificates` makes a private CA (kept and reused when the folder has one)
and the broker's and poles' certificates, for a site that has no PKI of its own.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.core.broker_access import Identity, render_acl, render_password_file

PASSWORD_FILE = "passwd"
ACL_FILE = "acl"
CONF_FILE = "polegw.conf"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"


def write_private(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` atomically with permissions `mode`."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)  # whatever the umask
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class Listeners:
    """Where the broker listens, and where it finds its files (its own paths, which
    differ from --out when the files are mounted into a container)."""

    config_dir: Path
    certs_dir: Path
    tls_port: int = 8883
    # Poles with a client certificate (CN = pole id) and no password.
    x509_port: int | None = 8884
    # Unencrypted, on this address only (a health check inside the container).
    plain: tuple[str, int] | None = None
    bind: str | None = None  # None: every interface


def render_conf(listen: Listeners) -> str:
    certs = listen.certs_dir
    bind = f" {listen.bind}" if listen.bind else ""
    tls = [
        f"cafile {certs / CA_CERT}",
        f"certfile {certs / SERVER_CERT}",
        f"keyfile {certs / SERVER_KEY}",
        "tls_version tlsv1.2",
    ]
    lines = [
        "# Written by `polegw broker config`. Mosquitto reads it through",
        "# `include_dir` (the folder's *.conf files): keep it in a folder of its own.",
        "# Every client authenticates: poles as their pole id, polegw's services as polegw-….",
        "allow_anonymous false",
        f"password_file {listen.config_dir / PASSWORD_FILE}",
        f"acl_file {listen.config_dir / ACL_FILE}",
        "",
        "# TLS; a client logs in with its user name and secret.",
        f"listener {listen.tls_port}{bind}",
        *tls,
        "require_certificate false",
    ]
    if listen.x509_port is not None:
        lines += [
            "",
            "# TLS with a client certificate from the site's CA; its CN is the user name.",
            f"listener {listen.x509_port}{bind}",
            *tls,
            "require_certificate true",
            "use_identity_as_username true",
        ]
    if listen.plain is not None:
        host, port = listen.plain
        lines += ["", "# Unencrypted, local only.", f"listener {port} {host}"]
    return "\n".join(lines) + "\n"


def write_broker_config(
    out: Path, identities: Iterable[Identity], prefix: str, listen: Listeners
) -> list[Path]:
    """Write the password file, the ACL file and the conf part; returns their paths."""
    ids = list(identities)
    out.mkdir(parents=True, exist_ok=True)
    files = [
        (out / PASSWORD_FILE, render_password_file(ids), 0o600),
        (out / ACL_FILE, render_acl(ids, prefix), 0o644),
        (out / CONF_FILE, render_conf(listen), 0o644),
    ]
    for path, text, mode in files:
        write_private(path, text.encode(), mode)
    return [p for p, _, _ in files]


# ------------------------------------------------------------------ certificates

_PEM = serialization.Encoding.PEM


@dataclass(frozen=True, slots=True)
class Issued:
    cert: Path
    key: Path
    sha256: str  # of the DER certificate


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def load_or_make_ca(
    folder: Path, *, days: int = 3650
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA in `folder` (ca.crt, ca.key), made first if the folder has none."""
    crt, key_path = folder / CA_CERT, folder / CA_KEY
    if crt.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path}: not an EC key made by polegw broker certs")
        return cert, key
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "polegw site CA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(key_path, _key_pem(key), 0o600)
    write_private(crt, cert.public_bytes(_PEM), 0o644)
    return cert, key


def issue_certificate(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    common_name: str,
    cert_path: Path,
    key_path: Path,
    *,
    server_names: list[str] | None = None,
    days: int = 825,
) -> Issued:
    """A certificate signed by `ca`: a server's (`server_names`: DNS names or IP
    addresses it is reached by) or, without them, a client's (CN = user name)."""
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server_names:
        alt: list[x509.GeneralName] = []
        for n in server_names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        usage = ExtendedKeyUsageOID.SERVER_AUTH
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    write_private(key_path, _key_pem(key), 0o600)
    write_private(cert_path, cert.public_bytes(_PEM), 0o644)
    der = cert.public_bytes(serialization.Encoding.DER)
    return Issued(cert_path, key_path, hashlib.sha256(der).hexdigest())

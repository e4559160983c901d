"""A throwaway certificate authority and a server certificate signed by it.

Used when ``gpuadmit run`` serves webhooks without a mounted certificate
(``--webhook-cert-dir`` has no tls.crt/tls.key): development, the demo, tests.
A CA plus a leaf, not one self-signed leaf, because strict TLS clients (the API
server, Python 3.13's default context) refuse a leaf that signs itself: clients
trust ``ca.crt`` and the server presents ``tls.crt``.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
CA_FILE = "ca.crt"
VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    certfile: Path  # the server certificate (PEM)
    keyfile: Path  # its private key (PEM, unencrypted, mode 0600)
    cafile: Path | None  # what clients trust; None when the cert dir brought no ca.crt


def find_tls_files(directory: str | Path | None) -> TlsFiles | None:
    """The certificate in ``directory`` (a mounted kubernetes.io/tls Secret), or None if it has none."""
    if not directory:
        return None
    folder = Path(directory)
    certfile, keyfile, cafile = folder / CERT_FILE, folder / KEY_FILE, folder / CA_FILE
    if certfile.is_file() and keyfile.is_file():
        return TlsFiles(certfile, keyfile, cafile if cafile.is_file() else None)
    return None


def generate_self_signed(directory: str | Path, hostnames: Iterable[str]) -> TlsFiles:
    """Write ca.crt, tls.crt and tls.key into ``directory`` for ``hostnames`` (DNS names or IPs)."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(h for h in hostnames if h))
    if not names:
        raise ValueError("a certificate needs at least one hostname")
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(minutes=5)  # tolerate a little clock skew

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpuadmit webhook CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    common_name = next((n for n in names if not _is_ip(n)), names[0])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    files = TlsFiles(folder / CERT_FILE, folder / KEY_FILE, folder / CA_FILE)
    files.cafile.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))  # type: ignore[union-attr]
    files.certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.keyfile.touch(mode=0o600)
    files.keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return files


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _san(name: str) -> x509.GeneralName:
    if _is_ip(name):
        return x509.IPAddress(ipaddress.ip_address(name))
    return x509.DNSName(name)

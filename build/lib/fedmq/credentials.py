"""Credentials for the secure broker profile: Mosquitto password hashes and a small TLS CA.

Everything here is pure (values in, PEM bytes and strings out); writing them to
disk with the right permissions is :mod:`fedmq.provision`'s job. Certificates
follow the profile Python's ``ssl`` checks strictly (CA with basic constraints,
key usage and key identifiers; server certificate with subjectAltName and the
serverAuth usage), so clients verify them with hostname checking on.

References: Mosquitto's ``mosquitto_passwd`` (``$7$`` = PBKDF2-HMAC-SHA512);
RFC 5280 for the certificate extensions.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: mosquitto_passwd's own defaults (Mosquitto 2.0): 12-byte salt, 101 PBKDF2 rounds.
#: The passwords fedmq generates are 192 random bits, so the work factor, which
#: slows guessing of human passwords, adds nothing; we match the tool's output.
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
#: random bytes in a generated MQTT password (32 URL-safe characters)
PASSWORD_BYTES = 24
#: a private CA for one deployment; re-provisioning is the way to rotate it
CA_DAYS = 3650
#: the longest server-certificate lifetime Apple's TLS clients accept
SERVER_DAYS = 825


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    """A ``password_file`` hash Mosquitto 2.0 accepts, as ``mosquitto_passwd`` writes it."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    b64 = base64.b64encode
    return f"$7${PBKDF2_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedmq"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_ca(common_name: str, now: dt.datetime) -> Issued:
    """A self-signed P-256 CA that can only issue end-entity certificates."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def server_certificate(ca: Issued, hosts: Sequence[str], now: dt.datetime) -> Issued:
    """A P-256 TLS server certificate for ``hosts`` (names or IP addresses), signed by ``ca``.

    Raises:
        ValueError: if ``hosts`` is empty.
    """
    if not hosts:
        raise ValueError("a server certificate needs at least one host name or address")
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hosts]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )

"""`aaa-failover dev-ca DIR`: a development CA, and a server and a client certificate.

For a bus over TLS on one machine or a compose stack: ``ca.pem`` (the CA's
certificate, what every side trusts), ``server.pem`` and ``server-key.pem``
(the nats-server's, for ``127.0.0.1``, ``localhost`` and the names given),
``client.pem`` and ``client-key.pem`` (a client's, for a server that asks for
one). The CA's own key is not kept: nothing more can be signed with it, so a
new set is made by running the command again in a new folder. Keys are ECDSA
P-256, certificates valid for ``days``. Not for production: there, certificates
come from the operator's own CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FILES = ("ca.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem")


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "aaa-failover development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def _san(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.chmod(path, 0o644)


def make_dev_ca(
    directory: Path, *, names: Sequence[str] = (), days: int = 365, overwrite: bool = False
) -> list[Path]:
    """Write the CA, server and client certificates (and the two keys) to ``directory``.

    The server's certificate names ``127.0.0.1``, ``localhost`` and ``names``.
    FileExistsError if any of the files exists and not ``overwrite``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f for f in FILES]
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists: choose an empty folder")
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("aaa-failover development CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        common: str, usage: x509.ObjectIdentifier, san: Sequence[str]
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if san:
            builder = builder.add_extension(_san(san), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server, server_key = leaf(
        "aaa-failover nats-server",
        ExtendedKeyUsageOID.SERVER_AUTH,
        ["127.0.0.1", "localhost", *names],
    )
    client, client_key = leaf("aaa-failover client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    _write_cert(paths[0], ca)
    _write_cert(paths[1], server)
    _write_key(paths[2], server_key)
    _write_cert(paths[3], client)
    _write_key(paths[4], client_key)
    return paths


def expires_within(cert: Path, *, days: float) -> bool:
    """Whether the certificate in ``cert`` is no longer valid ``days`` from now."""
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)
    return loaded.not_valid_after_utc <= soon

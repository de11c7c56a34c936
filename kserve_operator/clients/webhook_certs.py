"""The placement webhook's certificates, self-managed (no cert-manager needed).

Every operator replica runs `provision_webhook_certificates` at start:

1. read the Secret (`kserve-operator-webhook-tls` in the operator's namespace); when it is
   missing, generate a CA and a serving certificate for `<service>.<namespace>.svc` and create
   it. Two replicas starting together both try: the loser's create answers 409 and it reads the
   winner's, so all replicas serve the same certificate.
2. renew when the stored one cannot serve (under 30 days left, other names, another CA): a JSON
   patch pinned to the resourceVersion read; a 409 means another replica renewed first, and
   its Secret is read and used.
3. write the certificate and key to a fresh directory under /tmp (an emptyDir in the pod) for
   kopf's WebhookServer, the key readable by the operator's user only.
4. set the CA as `caBundle` of the shipped MutatingWebhookConfiguration, only where it differs
   (a JSON patch on that one object; usually nothing to do).

Keys never reach a log line.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kserve_operator.clients.kube import KubeApi, PatchType
from kserve_operator.errors import ApiError
from kserve_operator.resources.kinds import MUTATING_WEBHOOK_CONFIGURATION, SECRET

logger = logging.getLogger(__name__)

#: The serving certificate lives a year and is renewed at a start with under 30 days left.
SERVING_VALIDITY = datetime.timedelta(days=365)
#: The CA lives ten years: renewing the serving certificate keeps the caBundle, so the replicas
#: still running with the old certificate stay trusted while the others restart.
CA_VALIDITY = datetime.timedelta(days=3650)
RENEW_BEFORE = datetime.timedelta(days=30)


def service_dns_names(service: str, namespace: str) -> tuple[str, str]:
    """The names kube-apiserver checks: it calls a webhook Service as `<service>.<namespace>.svc`."""
    return f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"


def _renewal_reason(*, serving_not_after: datetime.datetime, ca_not_after: datetime.datetime,
                   dns_names: Sequence[str], wanted_dns_names: Sequence[str], signed_by_ca: bool,
                   now: datetime.datetime) -> str | None:
    """Why the stored certificate cannot serve as it is, or None when it can."""
    if ca_not_after - now < RENEW_BEFORE:
        return "the CA expires within 30 days"
    if not signed_by_ca:
        return "the serving certificate is not signed by the stored CA"
    if serving_not_after - now < RENEW_BEFORE:
        return "the serving certificate expires within 30 days"
    if not set(wanted_dns_names) <= set(dns_names):
        return f"the serving certificate does not name {', '.join(sorted(set(wanted_dns_names) - set(dns_names)))}"
    return None


def ca_bundle_patch(configuration: Mapping[str, Any], ca_bundle: str) -> list[dict[str, Any]]:
    """JSON patch ops that set every webhook's `clientConfig.caBundle` of the configuration to ours.

    Empty when they all carry it already (the common start: another replica patched it). Each
    op is preceded by a `test` of the value read, so a concurrent edit fails the patch rather
    than being overwritten blindly.
    """
    ops: list[dict[str, Any]] = []
    for index, webhook in enumerate(configuration.get("webhooks") or []):
        client = webhook.get("clientConfig") or {}
        current = client.get("caBundle")
        if current == ca_bundle:
            continue
        path = f"/webhooks/{index}/clientConfig/caBundle"
        ops.append({"op": "test", "path": f"/webhooks/{index}/name", "value": webhook.get("name")})
        ops.append({"op": "replace" if current is not None else "add", "path": path, "value": ca_bundle})
    return ops


CA_CERT, CA_KEY, TLS_CERT, TLS_KEY = "ca.crt", "ca.key", "tls.crt", "tls.key"
MANAGED_BY = {"app.kubernetes.io/managed-by": "kserve-operator", "app.kubernetes.io/component": "webhook"}


@dataclasses.dataclass(frozen=True)
class WebhookCertificates:
    """PEM bytes of the shared CA (certificate and key) and of the serving certificate and key."""

    ca_cert: bytes
    ca_key: bytes
    cert: bytes
    key: bytes


@dataclasses.dataclass(frozen=True)
class CertificateFiles:
    directory: Path
    certfile: Path
    keyfile: Path
    cafile: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _new_ca(now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kserve-operator webhook CA")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _issue(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, dns_names: Sequence[str],
           now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + SERVING_VALIDITY)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name) for name in dns_names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def generate(dns_names: Sequence[str], now: datetime.datetime,
             ca: tuple[bytes, bytes] | None = None) -> WebhookCertificates:
    """A serving certificate for `dns_names`, signed by `ca` (PEM certificate, key) or by a new CA."""
    if ca is None:
        ca_cert, ca_key = _new_ca(now)
    else:
        ca_cert = x509.load_pem_x509_certificate(ca[0])
        loaded = serialization.load_pem_private_key(ca[1], password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError("the stored webhook CA key is not an EC key")
        ca_key = loaded
    cert, key = _issue(ca_cert, ca_key, dns_names, now)
    return WebhookCertificates(ca_cert=ca_cert.public_bytes(serialization.Encoding.PEM), ca_key=_key_pem(ca_key),
                               cert=cert.public_bytes(serialization.Encoding.PEM), key=_key_pem(key))


def renewal_reason(certs: WebhookCertificates, dns_names: Sequence[str], now: datetime.datetime) -> str | None:
    """Why the stored certificates cannot serve (unreadable ones included), or None."""
    try:
        ca_cert = x509.load_pem_x509_certificate(certs.ca_cert)
        cert = x509.load_pem_x509_certificate(certs.cert)
        serialization.load_pem_private_key(certs.key, password=None)
        serialization.load_pem_private_key(certs.ca_key, password=None)
        try:
            cert.verify_directly_issued_by(ca_cert)
            signed = True
        except (InvalidSignature, ValueError, TypeError):
            signed = False
        try:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.DNSName)
        except x509.ExtensionNotFound:
            names = []
    except ValueError as exc:
        return f"the stored certificates cannot be read ({type(exc).__name__})"
    return _renewal_reason(serving_not_after=cert.not_valid_after_utc, ca_not_after=ca_cert.not_valid_after_utc,
                               dns_names=names, wanted_dns_names=dns_names, signed_by_ca=signed, now=now)


def _ca_usable(certs: WebhookCertificates, now: datetime.datetime) -> bool:
    """The stored CA can sign a renewed serving certificate (so the caBundle stays as it is)."""
    try:
        ca_cert = x509.load_pem_x509_certificate(certs.ca_cert)
        key = serialization.load_pem_private_key(certs.ca_key, password=None)
    except ValueError:
        return False
    return isinstance(key, ec.EllipticCurvePrivateKey) and ca_cert.not_valid_after_utc - now >= RENEW_BEFORE


def _from_secret(secret: Mapping[str, Any]) -> WebhookCertificates | None:
    data = secret.get("data") or {}
    try:
        return WebhookCertificates(*(base64.b64decode(data[key]) for key in (CA_CERT, CA_KEY, TLS_CERT, TLS_KEY)))
    except (KeyError, ValueError, TypeError):
        return None


def _secret_data(certs: WebhookCertificates) -> dict[str, str]:
    values = {CA_CERT: certs.ca_cert, CA_KEY: certs.ca_key, TLS_CERT: certs.cert, TLS_KEY: certs.key}
    return {key: base64.b64encode(value).decode("ascii") for key, value in values.items()}


async def ensure_secret(api: KubeApi, *, namespace: str, secret_name: str, dns_names: Sequence[str],
                        now: datetime.datetime) -> WebhookCertificates:
    """The shared certificates: read, created when missing, renewed when they cannot serve."""
    for _attempt in range(3):
        secret = await api.get(SECRET, secret_name, namespace)
        if secret is None:
            certs = generate(dns_names, now)
            body = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                    "metadata": {"name": secret_name, "namespace": namespace, "labels": MANAGED_BY},
                    "data": _secret_data(certs)}
            try:
                await api.create(SECRET, body)
            except ApiError as exc:
                if exc.status == 409:
                    continue  # another replica created it first: use theirs
                raise
            logger.info("Created the webhook certificate Secret %s/%s (CA and serving certificate for %s).",
                        namespace, secret_name, ", ".join(dns_names))
            return certs
        stored = _from_secret(secret)
        reason = renewal_reason(stored, dns_names, now) if stored is not None else "the Secret lacks a key"
        if reason is None and stored is not None:
            return stored
        kept_ca = (stored.ca_cert, stored.ca_key) if stored is not None and _ca_usable(stored, now) else None
        certs = generate(dns_names, now, ca=kept_ca)
        patch = [{"op": "test", "path": "/metadata/resourceVersion", "value": secret["metadata"]["resourceVersion"]},
                 {"op": "replace", "path": "/metadata/resourceVersion", "value": secret["metadata"]["resourceVersion"]},
                 {"op": "replace" if "data" in secret else "add", "path": "/data", "value": _secret_data(certs)}]
        try:
            await api.patch(SECRET, secret_name, patch, namespace=namespace, patch_type=PatchType.JSON)
        except ApiError as exc:
            if exc.status in (409, 422):
                continue  # renewed by another replica in between: read theirs
            raise
        logger.info("Renewed the webhook certificate in %s/%s: %s.", namespace, secret_name, reason)
        return certs
    raise ApiError(409, "Conflict", f"the Secret {namespace}/{secret_name} kept changing while it was read",
                   method="PATCH", path=f"secrets/{secret_name}")


def write_files(certs: WebhookCertificates, directory: str | None = None) -> CertificateFiles:
    """The serving certificate and key (0600) for kopf's WebhookServer, in a fresh directory under /tmp."""
    folder = Path(directory or tempfile.mkdtemp(prefix="kserve-operator-webhook-"))
    files = CertificateFiles(folder, folder / TLS_CERT, folder / TLS_KEY, folder / CA_CERT)
    files.certfile.write_bytes(certs.cert)
    files.cafile.write_bytes(certs.ca_cert)
    descriptor = os.open(files.keyfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(certs.key)
    return files


async def ensure_ca_bundle(api: KubeApi, configuration_name: str, ca_cert: bytes) -> bool:
    """Set our CA as the caBundle of the MutatingWebhookConfiguration where it differs; True if patched."""
    configuration = await api.get(MUTATING_WEBHOOK_CONFIGURATION, configuration_name)
    if configuration is None:
        logger.warning("The MutatingWebhookConfiguration %s does not exist: the API server will not call the "
                       "placement webhook (apply manifests/webhook/).", configuration_name)
        return False
    ops = ca_bundle_patch(configuration, base64.b64encode(ca_cert).decode("ascii"))
    if not ops:
        return False
    await api.patch(MUTATING_WEBHOOK_CONFIGURATION, configuration_name, ops, patch_type=PatchType.JSON)
    logger.info("Set the caBundle of the MutatingWebhookConfiguration %s.", configuration_name)
    return True


async def provision_webhook_certificates(api: KubeApi, *, namespace: str, service: str, secret_name: str,
                                         configuration_name: str) -> CertificateFiles:
    """Steps 1 to 4 of the module docstring."""
    now = datetime.datetime.now(datetime.UTC)
    dns_names = service_dns_names(service, namespace)
    certs = await ensure_secret(api, namespace=namespace, secret_name=secret_name, dns_names=dns_names, now=now)
    files = write_files(certs)
    await ensure_ca_bundle(api, configuration_name, certs.ca_cert)
    return files

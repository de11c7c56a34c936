"""S3 credentials for the preloader, derived the way KServe's storage initializer gets them.

KServe (pkg/credentials) walks the predictor's service account: its own `serving.kserve.io/s3-*`
annotations first (IRSA), then every listed Secret that holds the secret-access-key key. Such a
Secret yields `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` as `secretKeyRef`s (keys
`awsAccessKeyID` / `awsSecretAccessKey` unless renamed) and its annotations become `S3_ENDPOINT`,
`AWS_ENDPOINT_URL`, `S3_USE_HTTPS`, `S3_VERIFY_SSL`, `AWS_DEFAULT_REGION`, `awsAnonymousCredential`,
`S3_USER_VIRTUAL_BUCKET`, `S3_USE_ACCELERATE` and `AWS_CA_BUNDLE`; later sources override earlier
ones by variable name.

For each setting the annotation wins over a same-named Secret key (`s3-endpoint`, `s3-usehttps`,
...), which wins over the operator's default. A value that lives in a Secret is referenced with a
`secretKeyRef`, never copied: this module never sees a Secret's values, only its key names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

ANNOTATION_PREFIX = "serving.kserve.io/"

# setting (annotation suffix and Secret key) -> environment variable
ENDPOINT = "s3-endpoint"
USE_HTTPS = "s3-usehttps"
SETTINGS_ENV = (
    ("s3-verifyssl", "S3_VERIFY_SSL"),
    ("s3-useanoncredential", "awsAnonymousCredential"),
    ("s3-region", "AWS_DEFAULT_REGION"),
    ("s3-usevirtualbucket", "S3_USER_VIRTUAL_BUCKET"),
    ("s3-useaccelerate", "S3_USE_ACCELERATE"),
    ("s3-cabundle", "AWS_CA_BUNDLE"),
)

EnvVar = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class S3KeyNames:
    """KServe's `credentials.s3.s3AccessKeyIDName` / `s3SecretAccessKeyName` (inferenceservice-config)."""

    access_key_id: str = "awsAccessKeyID"
    secret_access_key: str = "awsSecretAccessKey"  # noqa: S105 (a key name, not a secret)


DEFAULT_KEY_NAMES = S3KeyNames()


@dataclasses.dataclass(frozen=True)
class Credentials:
    """The environment to give the preloader, or what is missing (`ServiceAccount x`, `Secret y`)."""

    env: tuple[EnvVar, ...] = ()
    secrets: tuple[str, ...] = ()  # the Secrets referenced, for the docs and the event
    missing_kind: str | None = None
    missing_name: str | None = None


def _ref(secret: str, key: str) -> dict[str, Any]:
    return {"secretKeyRef": {"name": secret, "key": key}}


@dataclasses.dataclass(frozen=True)
class _Source:
    annotations: Mapping[str, str]
    data_keys: frozenset[str]
    secret: str | None
    defaults: Mapping[str, str]

    def value(self, setting: str) -> tuple[str, str] | None:
        """('value', text) or ('ref', key) for a setting, by precedence; None when unset."""
        if ANNOTATION_PREFIX + setting in self.annotations:
            return ("value", self.annotations[ANNOTATION_PREFIX + setting])
        if self.secret is not None and setting in self.data_keys:
            return ("ref", setting)
        if setting in self.defaults:
            return ("value", self.defaults[setting])
        return None

    def var(self, name: str, found: tuple[str, str]) -> EnvVar:
        kind, text = found
        if kind == "ref":
            assert self.secret is not None
            return {"name": name, "valueFrom": _ref(self.secret, text)}
        return {"name": name, "value": text}


def settings_env(source: _Source) -> list[EnvVar]:
    """KServe's BuildS3EnvVars for one source (a service account or a Secret)."""
    env: list[EnvVar] = []
    endpoint, https = source.value(ENDPOINT), source.value(USE_HTTPS)
    if endpoint is not None:
        if https is not None:
            env.append(source.var("S3_USE_HTTPS", https))
        env.append(source.var("S3_ENDPOINT", endpoint))
        if https is None or https[0] == "value":
            scheme = "http" if https is not None and https[1] == "0" else "https"
            # $(S3_ENDPOINT) is expanded by the kubelet, so a referenced endpoint stays a reference;
            # with S3_USE_HTTPS itself in a Secret the preloader composes the URL from the two.
            host = endpoint[1] if endpoint[0] == "value" else "$(S3_ENDPOINT)"
            env.append({"name": "AWS_ENDPOINT_URL", "value": f"{scheme}://{host}"})
    for setting, name in SETTINGS_ENV:
        found = source.value(setting)
        if found is not None and found != ("value", ""):
            env.append(source.var(name, found))
    return env


def merge_env(base: list[EnvVar], override: Sequence[EnvVar]) -> list[EnvVar]:
    """KServe's MergeEnvs: same name -> the later value, in the earlier position."""
    merged = list(base)
    for var in override:
        index = next((i for i, old in enumerate(merged) if old["name"] == var["name"]), None)
        if index is None:
            merged.append(var)
        else:
            merged[index] = var
    return merged


def secret_keys(secret: Mapping[str, Any]) -> frozenset[str]:
    return frozenset({*(secret.get("data") or {}), *(secret.get("stringData") or {})})


def derive_credentials(
    *,
    account_name: str,
    account_named: bool,
    service_account: Mapping[str, Any] | None,
    secrets: Mapping[str, Mapping[str, Any] | None],
    key_names: S3KeyNames = DEFAULT_KEY_NAMES,
    defaults: Mapping[str, str] | None = None,
) -> Credentials:
    """The preloader's S3 environment from a service account and the Secrets it lists.

    `secrets` maps every name the account lists to the Secret read (None: not found).
    A named account that does not exist is missing; the namespace's implicit `default` one
    may be absent (no credentials: IRSA, a node role or anonymous access then apply).
    """
    defaults = defaults or {}
    if service_account is None:
        if account_named:
            return Credentials(missing_kind="ServiceAccount", missing_name=account_name)
        return Credentials(env=tuple(settings_env(_Source({}, frozenset(), None, defaults))))
    meta = service_account.get("metadata") or {}
    env = settings_env(_Source(dict(meta.get("annotations") or {}), frozenset(), None, defaults))
    used: list[str] = []
    for name in listed_secrets(service_account):
        secret = secrets.get(name)
        if secret is None:
            return Credentials(missing_kind="Secret", missing_name=name)
        keys = secret_keys(secret)
        if key_names.secret_access_key not in keys:
            continue  # not an S3 Secret (a GCS key, a registry token): KServe skips it too
        annotations = dict((secret.get("metadata") or {}).get("annotations") or {})
        secret_env = [
            {"name": "AWS_ACCESS_KEY_ID", "valueFrom": _ref(name, key_names.access_key_id)},
            {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": _ref(name, key_names.secret_access_key)},
            *settings_env(_Source(annotations, keys, name, defaults)),
        ]
        env = merge_env(env, secret_env)
        used.append(name)
    return Credentials(env=tuple(env), secrets=tuple(used))


def listed_secrets(service_account: Mapping[str, Any]) -> tuple[str, ...]:
    """The Secrets a service account lists (`secrets[].name`), in order, without duplicates."""
    names: list[str] = []
    for ref in service_account.get("secrets") or ():
        if isinstance(ref, Mapping) and ref.get("name") and str(ref["name"]) not in names:
            names.append(str(ref["name"]))
    return tuple(names)


@dataclasses.dataclass(frozen=True)
class RelocatedCredentials:
    """The environment pointed at one Secret of the Jobs' namespace, and that Secret's data.

    The Jobs run in the platform's namespace, where the tenant's Secrets are out of reach: the
    values the preloader needs are copied into a Secret there (keyed by variable name, so the
    Job spec names no value and its hash never changes with a rotation). `missing` names a key
    the tenant's Secret lacks."""

    env: tuple[EnvVar, ...]
    data: Mapping[str, str]  # variable name -> base64 value, as a Secret's `data`
    missing: str | None = None


def relocate_credentials(
    env: Sequence[EnvVar], secrets: Mapping[str, Mapping[str, Any] | None], copy_name: str
) -> RelocatedCredentials:
    """Rewrite every `secretKeyRef` of `env` to key `<variable>` of Secret `copy_name`."""
    out: list[EnvVar] = []
    data: dict[str, str] = {}
    for var in env:
        ref = (var.get("valueFrom") or {}).get("secretKeyRef")
        if not isinstance(ref, Mapping):
            out.append(dict(var))
            continue
        source = secrets.get(str(ref.get("name"))) or {}
        value = (source.get("data") or {}).get(str(ref.get("key")))
        if not isinstance(value, str):
            return RelocatedCredentials((), {}, missing=f"key {ref.get('key')} of Secret {ref.get('name')}")
        data[str(var["name"])] = value
        out.append({"name": var["name"], "valueFrom": _ref(copy_name, str(var["name"]))})
    return RelocatedCredentials(tuple(out), data)

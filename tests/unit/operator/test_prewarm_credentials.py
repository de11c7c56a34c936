"""S3 credentials derived the KServe way: secretKeyRefs, annotations, precedence, nothing in clear."""

from __future__ import annotations

import json
from typing import Any

from kserve_operator.planning.s3_credentials import S3KeyNames, derive_credentials

SECRET_VALUE = "c2VjcmV0LXZhbHVl"  # base64 of the secret: must never appear in the environment


def account(*secrets: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "models-s3", "annotations": annotations or {}},
            "secrets": [{"name": s} for s in secrets]}


def secret(name: str, *, annotations: dict[str, str] | None = None, **data: str) -> dict[str, Any]:
    keys = {"awsAccessKeyID": SECRET_VALUE, "awsSecretAccessKey": SECRET_VALUE, **data}
    return {"metadata": {"name": name, "annotations": annotations or {}}, "data": keys}


def env_of(service_account: dict[str, Any] | None, secrets: dict[str, Any], **kw: Any) -> dict[str, Any]:
    found = derive_credentials(account_name="models-s3", account_named=True, service_account=service_account,
                               secrets=secrets, **kw)
    assert found.missing_kind is None
    assert SECRET_VALUE not in json.dumps(found.env)
    return {var["name"]: var.get("value", var.get("valueFrom")) for var in found.env}


def test_keys_become_secret_key_refs_and_annotations_plain_env() -> None:
    annotations = {"serving.kserve.io/s3-endpoint": "minio.storage:9000", "serving.kserve.io/s3-usehttps": "0",
                   "serving.kserve.io/s3-region": "eu-west-1", "serving.kserve.io/s3-verifyssl": "0",
                   "serving.kserve.io/s3-useanoncredential": "false",
                   "serving.kserve.io/s3-cabundle": "/etc/ssl/custom/ca.crt"}
    env = env_of(account("s3"), {"s3": secret("s3", annotations=annotations)})
    assert env == {
        "AWS_ACCESS_KEY_ID": {"secretKeyRef": {"name": "s3", "key": "awsAccessKeyID"}},
        "AWS_SECRET_ACCESS_KEY": {"secretKeyRef": {"name": "s3", "key": "awsSecretAccessKey"}},
        "S3_USE_HTTPS": "0",
        "S3_ENDPOINT": "minio.storage:9000",
        "AWS_ENDPOINT_URL": "http://minio.storage:9000",
        "S3_VERIFY_SSL": "0",
        "awsAnonymousCredential": "false",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_CA_BUNDLE": "/etc/ssl/custom/ca.crt",
    }


def test_endpoint_defaults_to_https() -> None:
    env = env_of(account("s3"), {"s3": secret("s3", annotations={"serving.kserve.io/s3-endpoint": "s3.example"})})
    assert env["AWS_ENDPOINT_URL"] == "https://s3.example" and "S3_USE_HTTPS" not in env


def test_annotation_wins_over_secret_key_which_wins_over_default() -> None:
    defaults = {"s3-region": "us-east-1", "s3-endpoint": "default.example"}
    by_key = secret("s3", **{"s3-region": "ZXUtd2VzdC0z", "s3-endpoint": "a2V5LmV4YW1wbGU="})
    env = env_of(account("s3"), {"s3": by_key}, defaults=defaults)
    assert env["AWS_DEFAULT_REGION"] == {"secretKeyRef": {"name": "s3", "key": "s3-region"}}
    assert env["S3_ENDPOINT"] == {"secretKeyRef": {"name": "s3", "key": "s3-endpoint"}}
    assert env["AWS_ENDPOINT_URL"] == "https://$(S3_ENDPOINT)"  # expanded by the kubelet, not by us
    annotated = secret("s3", annotations={"serving.kserve.io/s3-region": "eu-north-1"}, **{"s3-region": "eA=="})
    assert env_of(account("s3"), {"s3": annotated}, defaults=defaults)["AWS_DEFAULT_REGION"] == "eu-north-1"
    assert env_of(account("s3"), {"s3": secret("s3")}, defaults=defaults)["AWS_DEFAULT_REGION"] == "us-east-1"


def test_use_https_in_a_secret_leaves_the_url_to_the_preloader() -> None:
    env = env_of(account("s3"), {"s3": secret("s3", annotations={"serving.kserve.io/s3-endpoint": "m:9000"},
                                              **{"s3-usehttps": "MA=="})})
    assert env["S3_USE_HTTPS"] == {"secretKeyRef": {"name": "s3", "key": "s3-usehttps"}}
    assert env["S3_ENDPOINT"] == "m:9000" and "AWS_ENDPOINT_URL" not in env


def test_service_account_annotations_apply_and_secrets_override_them() -> None:
    irsa = account(annotations={"serving.kserve.io/s3-region": "us-west-2", "serving.kserve.io/s3-endpoint": "a"})
    assert env_of(irsa, {}) == {"AWS_DEFAULT_REGION": "us-west-2", "S3_ENDPOINT": "a",
                                "AWS_ENDPOINT_URL": "https://a"}
    both = account("s3", annotations={"serving.kserve.io/s3-region": "us-west-2"})
    env = env_of(both, {"s3": secret("s3", annotations={"serving.kserve.io/s3-region": "eu-west-1"})})
    assert env["AWS_DEFAULT_REGION"] == "eu-west-1"


def test_non_s3_secrets_are_skipped_and_renamed_keys_are_honoured() -> None:
    registry = {"metadata": {"name": "pull"}, "data": {".dockerconfigjson": "e30="}}
    renamed = {"metadata": {"name": "s3"}, "data": {"key-id": "eA==", "key-secret": "eA=="}}
    env = env_of(account("pull", "s3"), {"pull": registry, "s3": renamed},
                 key_names=S3KeyNames(access_key_id="key-id", secret_access_key="key-secret"))
    assert env == {"AWS_ACCESS_KEY_ID": {"secretKeyRef": {"name": "s3", "key": "key-id"}},
                   "AWS_SECRET_ACCESS_KEY": {"secretKeyRef": {"name": "s3", "key": "key-secret"}}}


def test_missing_account_or_secret_is_named() -> None:
    gone = derive_credentials(account_name="models-s3", account_named=True, service_account=None, secrets={})
    assert (gone.missing_kind, gone.missing_name) == ("ServiceAccount", "models-s3")
    implicit = derive_credentials(account_name="default", account_named=False, service_account=None, secrets={})
    assert implicit.missing_kind is None and implicit.env == ()
    lost = derive_credentials(account_name="models-s3", account_named=True, service_account=account("s3", "gone"),
                              secrets={"s3": secret("s3"), "gone": None})
    assert (lost.missing_kind, lost.missing_name) == ("Secret", "gone")

"""Names and labels are refused exactly as kube-apiserver refuses them (apimachinery's checks).

The operator derives Service names and label values from its custom resources' names; a name
the real server refuses must be refused here too, with the same 422 message, or the dev
cluster hides a failure that would repeat on every resync in production.
"""

from __future__ import annotations

import pytest

from devcluster import ApiError, ClusterClient

SERVICES = "/api/v1/namespaces/default/services"
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"

DNS1035 = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic "
           "character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for "
           "validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")
LABEL_VALUE = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and "
               "must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', "
               "regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")


def service(name: str) -> dict[str, object]:
    return {"metadata": {"name": name}, "spec": {"ports": [{"port": 11211}]}}


@pytest.mark.parametrize("name", ["cache.v1", "1cache", "cache-", "Cache", "cache_1"])
def test_a_service_name_must_be_a_dns1035_label(kube: ClusterClient, name: str) -> None:
    with pytest.raises(ApiError) as info:
        kube.create(SERVICES, service(name))
    assert info.value.status == 422
    assert info.value.message == f'Service "{name}" is invalid: metadata.name: Invalid value: "{name}": {DNS1035}'
    assert info.value.body["details"]["causes"] == [
        {"reason": "FieldValueInvalid", "field": "metadata.name", "message": f'Invalid value: "{name}": {DNS1035}'}]


def test_a_long_service_name_gets_the_length_message(kube: ClusterClient) -> None:
    name = "a" * 64
    with pytest.raises(ApiError) as info:
        kube.create(SERVICES, service(name))
    assert info.value.message == \
        f'Service "{name}" is invalid: metadata.name: Invalid value: "{name}": must be no more than 63 characters'
    kube.create(SERVICES, service("a" * 63))


def test_a_long_and_malformed_service_name_gets_both_messages(kube: ClusterClient) -> None:
    name = "9" + "a" * 63
    with pytest.raises(ApiError) as info:
        kube.create(SERVICES, service(name))
    assert info.value.message == (
        f'Service "{name}" is invalid: [metadata.name: Invalid value: "{name}": must be no more than 63 characters, '
        f'metadata.name: Invalid value: "{name}": {DNS1035}]')


def test_names_that_other_kinds_accept(kube: ClusterClient) -> None:
    kube.create(SERVICES, service("cache-1"))
    kube.create(CONFIGMAPS, {"metadata": {"name": "1cache.v1"}})  # a DNS-1123 subdomain is enough here
    with pytest.raises(ApiError) as info:
        kube.create(CONFIGMAPS, {"metadata": {"name": "Cache"}})
    assert "a lowercase RFC 1123 subdomain must consist of" in info.value.message


def test_a_label_value_over_63_characters_is_refused(kube: ClusterClient) -> None:
    value = "x" * 64
    with pytest.raises(ApiError) as info:
        kube.create(CONFIGMAPS, {"metadata": {"name": "c", "labels": {"app": value}}})
    assert info.value.status == 422
    assert info.value.message == \
        f'ConfigMap "c" is invalid: metadata.labels: Invalid value: "{value}": must be no more than 63 characters'
    kube.create(CONFIGMAPS, {"metadata": {"name": "c", "labels": {"app": "x" * 63, "empty": ""}}})


@pytest.mark.parametrize("value", ["-cache", "cache.", "a b", "cache/1"])
def test_a_label_value_must_match_the_pattern(kube: ClusterClient, value: str) -> None:
    with pytest.raises(ApiError) as info:
        kube.create(SERVICES, {**service("web"), "metadata": {"name": "web", "labels": {"app": value}}})
    assert info.value.message == \
        f'Service "web" is invalid: metadata.labels: Invalid value: "{value}": {LABEL_VALUE}'


def test_a_label_value_is_checked_on_update(kube: ClusterClient) -> None:
    kube.create(SERVICES, service("web"))
    with pytest.raises(ApiError) as info:
        kube.patch(f"{SERVICES}/web", {"metadata": {"labels": {"app": "y" * 64}}})
    assert info.value.status == 422 and "must be no more than 63 characters" in info.value.message


@pytest.mark.parametrize(("key", "message"), [
    ("a" * 64, "name part must be no more than 63 characters"),
    ("example.com/", "name part must be non-empty"),
    ("Example.com/app", "prefix part a lowercase RFC 1123 subdomain must consist of"),
    ("a/b/c", "a qualified name must consist of alphanumeric characters"),
])
def test_label_keys_are_qualified_names(kube: ClusterClient, key: str, message: str) -> None:
    with pytest.raises(ApiError) as info:
        kube.create(CONFIGMAPS, {"metadata": {"name": "c", "labels": {key: "v"}}})
    assert f'metadata.labels: Invalid value: "{key}": {message}' in info.value.message

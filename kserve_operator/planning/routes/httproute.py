"""Pure editing of a Gateway API HTTPRoute (gateway.networking.k8s.io/v1): which rules a ModelCanary
manages and the weights of their backendRefs.

The same rule as the Istio planner (planning/routes/istio.py): only the `weight` of the stable and
candidate backendRefs in the managed rules changes, plus the candidate backendRef appended when a
rule lacks it and removed again on release if we appended it. Everything else (other rules,
matches, filters of the rule and of each backendRef, timeouts, other backendRefs, parentRefs,
hostnames, and the order of all of it) is carried over as read. The write is a JSON patch that
replaces the backendRefs of the changed rules only, pinned to the resourceVersion read, so a
concurrent edit gives 409 instead of being overwritten.

Gateway API reads weights as proportions (a backendRef without one weighs 1); the canary reads
them as percents, as with Istio: stable and candidate share what the other backendRefs leave. A
rule with other backendRefs must therefore add up to 100 as it stands, else its weights mean no
percents (WeightsNotPercent). A rule whose backendRefs already carry the planned proportions is
left as written (a lone stable backendRef weighing 1 is 100%).

Rules are selected by name (`rules[].name`, Gateway API v1.2+) when the spec lists rules, else
every rule with a backendRef to the stable Service. A backend is a cluster Service: a backendRef
of kind Service (the default) named like it, in the route's namespace unless it names another;
Istio's subsets have no counterpart here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from kserve_operator.planning.routes.weights import (
    Route,
    RoutingProblem,
    RuleShape,
    WeightPlan,
    plan_release_in,
    plan_weights_in,
    share_of,
)
from kserve_operator.resources.canary import Backend, CanarySpec
from kserve_operator.resources.canary_conditions import CanaryReason
from kserve_operator.resources.kinds import OPERATOR_GROUP
from kserve_operator.resources.routes import OwnerProblem

KSERVE_GROUP = "serving.kserve.io"
DEFAULT_WEIGHT = 1  # Gateway API's weight of a backendRef that names none


def rule_key(rule: Mapping[str, Any], index: int) -> str:
    """How status names a rule: its name, else its position (`rules[2]`)."""
    name = rule.get("name")
    return name if isinstance(name, str) and name else f"rules[{index}]"


def http_rules(route: Mapping[str, Any]) -> list[Route]:
    rules = (route.get("spec") or {}).get("rules")
    return [r if isinstance(r, dict) else {} for r in rules] if isinstance(rules, list) else []


def _route_name(route: Mapping[str, Any]) -> str:
    meta = route.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


def _service(backend: Backend, role: str) -> tuple[str, str]:
    """(namespace, name) of the Service a backend names; RoutingProblem when it names none."""
    if backend.subset:
        raise RoutingProblem(CanaryReason.BACKEND_NOT_A_SERVICE,
                             f"the {role} backend {backend.display} names a subset, which an HTTPRoute backendRef "
                             "cannot: give each version its own Service")
    service = backend.service
    if service is None:
        raise RoutingProblem(CanaryReason.BACKEND_NOT_A_SERVICE,
                             f"the {role} backend {backend.host} is not a cluster Service "
                             "(NAME.NAMESPACE.svc.cluster.local), which is what an HTTPRoute backendRef names")
    return service


def _matches(ref: Any, service: tuple[str, str], port: int | None, namespace: str) -> bool:
    if not isinstance(ref, Mapping):
        return False
    if (ref.get("group") or "") != "" or (ref.get("kind") or "Service") != "Service":
        return False
    if ref.get("name") != service[1] or (ref.get("namespace") or namespace) != service[0]:
        return False
    return port is None or ref.get("port") == port


def _find(rule: Route, backend: Backend, namespace: str, key: str, role: str) -> int | None:
    refs = rule.get("backendRefs")
    if not isinstance(refs, list):
        return None
    service = _service(backend, role)
    found = [i for i, ref in enumerate(refs) if _matches(ref, service, backend.port, namespace)]
    if len(found) > 1:
        raise RoutingProblem(
            CanaryReason.AMBIGUOUS_DESTINATION,
            f"HTTPRoute rule {key} sends to the {role} backend {backend.display} through {len(found)} backendRefs; "
            "name a port to pick one",
        )
    return found[0] if found else None


def managed_rules(route: Mapping[str, Any], spec: CanarySpec) -> tuple[int, ...]:
    """Indices of the rules the canary manages; RoutingProblem when one cannot be managed."""
    rules = http_rules(route)
    namespace = spec.route.namespace
    if spec.route.rules is None:
        found = tuple(i for i, rule in enumerate(rules)
                      if _find(rule, spec.stable, namespace, rule_key(rule, i), "stable") is not None)
        if not found:
            raise RoutingProblem(CanaryReason.STABLE_NOT_ROUTED,
                                 f"no rule of HTTPRoute {_route_name(route)} has a backendRef to the stable "
                                 f"backend {spec.stable.host}")
        return found
    indices = []
    for name in spec.route.rules:
        index = next((i for i, rule in enumerate(rules) if rule.get("name") == name), None)
        if index is None:
            raise RoutingProblem(CanaryReason.ROUTE_NOT_FOUND,
                                 f"HTTPRoute {_route_name(route)} has no rule named {name}")
        if _find(rules[index], spec.stable, namespace, name, "stable") is None:
            raise RoutingProblem(CanaryReason.STABLE_NOT_ROUTED,
                                 f"rule {name} of HTTPRoute {_route_name(route)} has no backendRef to the stable "
                                 f"backend {spec.stable.host}")
        indices.append(index)
    return tuple(indices)


def managed_keys(route: Mapping[str, Any], spec: CanarySpec) -> tuple[str, ...]:
    rules = http_rules(route)
    return tuple(rule_key(rules[i], i) for i in managed_rules(route, spec))


def _weight(ref: Mapping[str, Any]) -> int:
    weight = ref.get("weight")
    return weight if isinstance(weight, int) and not isinstance(weight, bool) else DEFAULT_WEIGHT


def _proportions(refs: Sequence[Mapping[str, Any]]) -> tuple[Fraction, ...] | None:
    total = sum(_weight(ref) for ref in refs)
    return tuple(Fraction(_weight(ref), total) for ref in refs) if total else None


def _candidate_ref(spec: CanarySpec, stable_ref: Mapping[str, Any], weight: int) -> dict[str, Any]:
    namespace, name = _service(spec.candidate, "candidate")
    ref: dict[str, Any] = {key: stable_ref[key] for key in ("group", "kind") if key in stable_ref}
    ref["name"] = name
    if namespace != spec.route.namespace:
        ref["namespace"] = namespace
    port = spec.candidate.port if spec.candidate.port is not None else stable_ref.get("port")
    if port is not None:
        ref["port"] = port
    ref["weight"] = weight
    return ref


def split_weights(
    refs: Sequence[Mapping[str, Any]], spec: CanarySpec, percent: int, key: str, *,
    remove_added_candidate: bool = False,
) -> tuple[list[dict[str, Any]], bool, tuple[int, int]]:
    """New backendRefs for one managed rule: (list, candidate appended?, (stable, candidate) weights)."""
    namespace = spec.route.namespace
    rule: Route = {"backendRefs": list(refs)}
    stable_at = _find(rule, spec.stable, namespace, key, "stable")
    if stable_at is None:
        raise RoutingProblem(CanaryReason.STABLE_NOT_ROUTED,
                             f"HTTPRoute rule {key} has no backendRef to the stable backend {spec.stable.host}")
    candidate_at = _find(rule, spec.candidate, namespace, key, "candidate")
    others = [i for i in range(len(refs)) if i not in (stable_at, candidate_at)]
    taken = sum(_weight(refs[i]) for i in others)
    if taken > 100:
        raise RoutingProblem(CanaryReason.WEIGHTS_OVERFLOW,
                             f"HTTPRoute rule {key}: other backendRefs already weigh {taken} (over 100)")
    total = sum(_weight(ref) for ref in refs)
    if others and total != 100:
        raise RoutingProblem(CanaryReason.WEIGHTS_NOT_PERCENT,
                             f"HTTPRoute rule {key}: its backendRefs weigh {total} in all; beside other backendRefs "
                             "the weights must add up to 100 to be read as percents")
    remaining = 100 - taken
    candidate_weight = share_of(remaining, percent)
    stable_weight = remaining - candidate_weight
    drop = remove_added_candidate and candidate_at is not None
    appended = candidate_at is None and candidate_weight > 0
    result: list[dict[str, Any]] = []
    for i, ref in enumerate(refs):
        if i == stable_at:
            result.append({**ref, "weight": stable_weight})
        elif i == candidate_at:
            if not drop:
                result.append({**ref, "weight": candidate_weight})
        else:
            result.append(dict(ref))
    if appended:
        result.append(_candidate_ref(spec, refs[stable_at], candidate_weight))
    if not drop and not appended and _proportions(refs) == _proportions(result):
        result = [dict(ref) for ref in refs]  # already these proportions: left as written
    return result, appended, (stable_weight, candidate_weight)


def plan_weights(obj: Mapping[str, Any], spec: CanarySpec, percent: int, *,
                 previously: Sequence[str] = (), added: Sequence[str] = ()) -> WeightPlan:
    """The candidate at `percent` of every managed rule (weights.plan_weights_in over
    an HTTPRoute's `spec.rules[].backendRefs`)."""
    return plan_weights_in(HTTP_ROUTE_RULES, obj, spec, percent, previously=previously, added=added)


def plan_release(obj: Mapping[str, Any], spec: CanarySpec, managed: Sequence[str],
                 added: Sequence[str]) -> WeightPlan:
    """Stable 100% again in the rules we managed (weights.plan_release_in)."""
    return plan_release_in(HTTP_ROUTE_RULES, obj, spec, managed, added)


def weights_patch(route: Mapping[str, Any], rules: list[Route]) -> list[dict[str, Any]]:
    """A JSON patch replacing the backendRefs of the rules that changed, pinned to the resourceVersion read."""
    ops: list[dict[str, Any]] = [{"op": "replace", "path": "/metadata/resourceVersion",
                                  "value": (route.get("metadata") or {}).get("resourceVersion")}]
    for index, (before, after) in enumerate(zip(http_rules(route), rules, strict=True)):
        if before == after:
            continue
        assert {k: v for k, v in before.items() if k != "backendRefs"} == {
            k: v for k, v in after.items() if k != "backendRefs"}, "a plan changes backendRefs only"
        ops.append({"op": "replace" if "backendRefs" in before else "add",
                    "path": f"/spec/rules/{index}/backendRefs", "value": after.get("backendRefs") or []})
    return ops


def owner_problem(route: Mapping[str, Any]) -> OwnerProblem | None:
    """Why another controller owns the HTTPRoute (an ownerReference with controller: true that is not
    ours, e.g. KServe's raw deployment mode), or None."""
    for ref in (route.get("metadata") or {}).get("ownerReferences") or []:
        if not isinstance(ref, Mapping) or ref.get("controller") is not True:
            continue
        api_version = str(ref.get("apiVersion", ""))
        group = api_version.split("/")[0] if "/" in api_version else ""
        if group == OPERATOR_GROUP:
            continue
        if group == KSERVE_GROUP:
            return OwnerProblem(CanaryReason.FOREIGN_OWNER,
                                f"HTTPRoute {_route_name(route)} is owned by KServe's {ref.get('kind')} "
                                f"{ref.get('name')}, which rewrites its rules (raw deployment mode); point the "
                                "ModelCanary at an HTTPRoute the platform team owns")
        return OwnerProblem(CanaryReason.FOREIGN_CONTROLLER,
                            f"HTTPRoute {_route_name(route)} is controlled by {ref.get('kind')} {ref.get('name')} "
                            f"({api_version}), which may rewrite its rules; point the ModelCanary at an "
                            "HTTPRoute the platform team owns")
    return None


HTTP_ROUTE_RULES = RuleShape(rules=http_rules, key=rule_key, backends="backendRefs",
                             managed=managed_rules, split=split_weights)

"""Traffic routers: read and write the routing object of a mesh (Flagger's router shape).

Routers translate, they do not decide: the weights come from planning.canary and
planning.virtualservice. `TrafficRouter` is what the ModelCanary controller needs;
`IstioRouter` implements it for Istio VirtualServices.
"""

from kserve_operator.clients.routers.istio import IstioRouter, RouteTable, TrafficRouter

__all__ = ["IstioRouter", "RouteTable", "TrafficRouter"]

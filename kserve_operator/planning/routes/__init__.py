"""Pure planning of traffic weights in a routing object, one module per kind: `istio` (an Istio
VirtualService's `spec.http`), `httproute` (a Gateway API HTTPRoute's `spec.rules`); `weights` what
both share; `planners` picks one by the kind a ModelCanary names. No I/O: the routers
(controllers/canary_routing.py) read and write through clients/routers/.
"""

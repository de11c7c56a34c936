"""Pure planning: spec + observed state -> desired objects and status. No kopf, no clients, no clock."""

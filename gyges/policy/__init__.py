"""Where requests go and when instances merge or split (pure decisions over a snapshot). The
policies a server or a simulation may name are registered here, and only here."""
from collections.abc import Callable

from gyges.policy.config import PolicyConfig
from gyges.policy.cost_model import CostModel
from gyges.policy.policy import GygesPolicy, StaticPolicy

POLICIES: dict[str, Callable[[CostModel, PolicyConfig], StaticPolicy]] = {
    "gyges": lambda cost, config: GygesPolicy(cost, config),    # merges and splits with the traffic
    "static": lambda cost, config: StaticPolicy(config, cost),  # keeps the start-up layout
}


def make_policy(name: str, cost: CostModel, config: PolicyConfig) -> StaticPolicy:
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    return POLICIES[name](cost, config)

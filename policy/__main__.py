"""Pulumi policy pack of the model-serving stack: `pulumi preview --policy-pack policy
--policy-pack-config policy/config/<stack>.json`."""

import sys
from pathlib import Path

# The rules are imported as the `policy` package, as `modelctl plan` imports them.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_policy import PolicyPack

from policy.pack import policies

PolicyPack(name="model-serving", policies=policies())

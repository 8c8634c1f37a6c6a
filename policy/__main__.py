"""Pulumi policy pack of the model-serving stack: `pulumi preview --policy-pack policy
--policy-pack-config policy/config/<stack>.json`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pack import policies
from pulumi_policy import PolicyPack

PolicyPack(name="model-serving", policies=policies())

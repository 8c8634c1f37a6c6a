"""The Platform component and its builders: cluster, add-ons, namespace and gateway, object store and IAM."""

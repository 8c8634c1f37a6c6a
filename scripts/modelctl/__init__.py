"""`modelctl`: the operator CLI of the model-serving stack."""

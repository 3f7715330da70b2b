"""What the agents act and read through: the domain models, backend contracts and their implementations."""

"""Training the heads: the trainer, its config and recipes, losses, DDP, checkpoints and tower-output caches."""

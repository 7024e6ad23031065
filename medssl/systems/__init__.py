"""LightningModules: each receives a model (an ``nn.Module``) and adds the loss, the optimiser and the logging."""

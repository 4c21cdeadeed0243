"""Architectures and input adapters: nn.Modules only, no I/O."""

"""Building: compile to TorchScript/AOTInductor, archive as .mar, resolve weights, inspect builds."""

"""The task plug-ins the batch engine drives (engine.Task), one module each."""

"""Local inference: the runtime adapter, the model directory, and the service that runs
installed models for local programs and (later) for tasks from the hub."""

"""The model families, a package each: configs, the release's network and sampler, the hooks it offers an
acceleration, and the family's generator. A family imports no method (accel/methods); the registry
(accel/registry.py) joins them."""

"""spawner — XNAT-scoped JupyterHub spawners (one mixin, thin backends)."""

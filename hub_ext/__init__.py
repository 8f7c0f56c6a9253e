"""hub_ext — the parts of xnat-hpc-hub that run in the JupyterHub process."""

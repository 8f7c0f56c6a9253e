"""``python -m xnat_hpc_governance``: the governance service (:mod:`xnat_hpc_governance.app`)."""

from .app import main

if __name__ == "__main__":
    main()

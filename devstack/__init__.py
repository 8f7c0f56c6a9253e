"""Development tooling of this checkout: not part of what a site installs.

``devstack.slurm`` runs a single-node Slurm, ``devstack.demo`` the whole stack on
127.0.0.1 (``xnat-hpc-hub demo``), ``devstack.accounts`` creates the demo users'
Unix accounts, ``devstack.hubconfig`` writes the demo's and the tests' hub
configurations. It may use ``xnat_bridge``; the product never imports it.
"""

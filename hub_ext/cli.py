"""The ``xnat-hpc-hub`` command.

    xnat-hpc-hub demo [--run-dir DIR]        devxnat + local Slurm (+ hub), until Ctrl-C
    xnat-hpc-hub devxnat --data DIR ...      the XNAT development server
    xnat-hpc-hub check-config FILE...        validate admin profiles YAML (exit 1 on problems)
    xnat-hpc-hub slurm up|down|status        the single-node development Slurm
    xnat-hpc-hub kube up|down|status         the single-node development Kubernetes
    xnat-hpc-hub jobs list|show ID|cancel ID offloaded training jobs of a workspace
    xnat-hpc-hub audit verify [FILE...]      check audit trails (exit 1 if broken): no FILE = the hub's
                                             store (--config / --store, --key); a FILE = a researcher's
                                             JSON-lines log, or a hub store (SQLite) with its key
    xnat-hpc-hub verify-results DIR --key K  check published results: the hub's signature of their
                                             RO-Crate and every file's sha256 (exit 1 naming the file)
    xnat-hpc-hub results-key [--config F]    the hub's key of published results, as an OpenSSH
                                             allowed_signers line (c.ResultsSigner.key_path)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from xnat_bridge.errors import XnatHpcError

# devstack.slurm.DEFAULT_RUN_DIR (a unit test checks the two agree); a constant here so
# that building the parser imports no development tooling
SLURM_RUN_DIR = Path("/var/lib/xnat-hpc-hub/slurm")
KUBE_RUN_DIR = Path("/var/lib/xnat-hpc-hub/kube")
CHECKOUT_HINT = (
    "`xnat-hpc-hub {verb}` is development tooling: it needs a source checkout of "
    "xnat-hpc-hub installed with the `demo` extra (cd xnat-hpc-hub && pip install -e '.[hub,server,demo]')"
)


class CheckoutRequired(XnatHpcError):
    """A development verb ran where the checkout's ``devxnat``/``devstack`` cannot be imported."""


def _dev_module(name: str, verb: str):
    """Import a development package's module (``devstack.slurm``, ``devxnat``) or say what to install."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as e:
        # the package itself is absent (a wheel install), or a dependency of it (numpy, ...)
        missing = e.name if e.name and e.name.split(".")[0] not in ("devxnat", "devstack") else None
        hint = CHECKOUT_HINT.format(verb=verb)
        raise CheckoutRequired(f"{hint}; missing module: {missing}" if missing else hint) from e


def _slurm(args: argparse.Namespace) -> int:
    slurm = _dev_module("devstack.slurm", "slurm")
    dev = slurm.SlurmDev(args.run_dir)
    if args.action == "up":
        statuses = dev.up(timeout=args.timeout)
    elif args.action == "down":
        statuses = dev.down(stop_munge=not args.keep_munge)
    else:
        statuses = dev.status()
    print(slurm.format_status(statuses, dev.cfg.run_dir))
    if args.action == "status":
        missing = slurm.SlurmDev.missing_programs()
        if missing:
            print(f"  programs missing: {', '.join(missing)}; {slurm.INSTALL_HINT}")
        # like `systemctl status`: 0 when everything runs, 3 otherwise
        return 0 if all(s.running for s in statuses) else 3
    return 0


def _kube(args: argparse.Namespace) -> int:
    kube = _dev_module("devstack.kube", "kube")
    dev = kube.KubeDev(args.run_dir)
    if args.action == "up":
        dev.up(timeout=args.timeout)
        print(f"kubeconfig: {dev.cfg.admin_kubeconfig} (admin); {dev.cfg.kubeconfig('hub')} (the hub, "
              f"namespace {kube.HUB_NAMESPACE})")
    elif args.action == "down":
        dev.down()
    statuses = dev.status()
    print(kube.format_status(statuses, dev.cfg.run_dir))
    if args.action == "status":
        missing = dev.missing_programs()
        if missing:
            print(f"  programs missing: {', '.join(missing)}; {kube.INSTALL_HINT}")
        return 0 if all(s.running for s in statuses) else 3
    return 0


def _verify_results(args: argparse.Namespace) -> int:
    """0 and "verified" when the results are as the hub signed them; 1 and one line per problem."""
    from xnat_bridge.results_crate import verify_results
    from xnat_bridge.sshsig import parse_public_key_line

    key = parse_public_key_line(args.key.read_text().strip().splitlines()[0])
    problems = verify_results(args.directory, key)
    for line in problems:
        print(f"{args.directory}/{line}", file=sys.stderr)
    if not problems:
        print(f"{args.directory}: verified (the hub's signature and every file's sha256)")
    return 1 if problems else 0


def _results_key(args: argparse.Namespace) -> int:
    """The ``allowed_signers`` line of the hub's results key (never made here: the governance
    service makes it, as the hub's account, at its first publication)."""
    import os

    from traitlets.config import PyFileConfigLoader

    from .results_signer import ResultsSigner

    config = args.config
    if not config.exists():
        raise CheckoutRequired(f"no hub configuration at {config}: name it with --config FILE")
    cfg = PyFileConfigLoader(config.name, path=str(config.parent.absolute())).load_config()
    signer = ResultsSigner(config=cfg)
    key = signer.key_path if os.path.isabs(signer.key_path) else str(config.parent.absolute() / signer.key_path)
    if not os.path.lexists(key):
        print(f"no results key at {key} yet: the governance service makes it at the first publication "
              "(c.ResultsSigner.key_path)", file=sys.stderr)
        return 1
    signer.key_path = key
    sys.stdout.write(signer.allowed_signers())
    return 0


def _devxnat(args: argparse.Namespace) -> int:
    return _dev_module("devxnat", "devxnat").main(args.rest) or 0


def _check_config(args: argparse.Namespace) -> int:
    from .profiles import check_config_main

    return check_config_main([str(f) for f in args.files])


def _hub_store_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """The hub store and key that ``audit verify`` checks: --store/--key, else the hub's config."""
    if args.store is not None:
        return args.store, args.key or args.store.with_name("audit.key")
    from traitlets.config import PyFileConfigLoader

    from .audit_log import HubAuditLog

    config = args.config
    if not config.exists():
        raise CheckoutRequired(f"no hub configuration at {config}: name it with --config FILE, or the store "
                               "with --store PATH (and --key FILE)")
    cfg = PyFileConfigLoader(config.name, path=str(config.parent.absolute())).load_config()
    log = HubAuditLog(config=cfg)
    return Path(log.abspath), Path(args.key or log.key_path)


def _verify_hub_store(store: Path, key_path: Path) -> int:
    from .audit_store import AuditStoreError, load_key, verify_store

    try:
        key = load_key(key_path, create=False)
    except AuditStoreError as e:
        print(f"{store}: cannot verify: {e.message}")
        return 1
    except OSError as e:
        print(f"{store}: cannot read the key {key_path}: {e.strerror or e}")
        return 1
    verdict = verify_store(store, key)
    print(f"{store}: {'OK, ' if verdict.ok else 'BROKEN: '}{verdict.sentence}")
    return 0 if verdict.ok else 1


def _audit(args: argparse.Namespace) -> int:
    from xnat_bridge.audit import verify_chain

    from .audit_store import SQLITE_MAGIC

    if not args.files:
        return _verify_hub_store(*_hub_store_paths(args))
    status = 0
    for path in args.files:
        try:
            with open(path, "rb") as f:
                is_hub_store = f.read(16) == SQLITE_MAGIC
            if is_hub_store:
                status = _verify_hub_store(path, args.key or path.with_name("audit.key")) or status
                continue
            count, problem = verify_chain(path)
        except OSError as exc:
            print(f"{path}: cannot read: {exc.strerror or exc}")
            status = 1
            continue
        print(f"{path}: {problem}" if problem else f"{path}: OK, hash chain intact ({count} events)")
        status = status or (1 if problem else 0)
    return status


def _jobs(args: argparse.Namespace) -> int:
    from xnat_bridge.offload.cli import jobs_main

    return jobs_main(args.action, args.job_id, args.workspace)


def _demo(args: argparse.Namespace) -> int:
    return _dev_module("devstack.demo", "demo").run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xnat-hpc-hub",
        description="XNAT-scoped JupyterHub with encrypted offload to a secure Slurm partition",
    )
    p.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("slurm", help="single-node development Slurm: up | down | status")
    s.add_argument("action", choices=["up", "down", "status"])
    s.add_argument(
        "--run-dir",
        type=Path,
        default=SLURM_RUN_DIR,
        help=f"state, spool, logs and pid files (default {SLURM_RUN_DIR})",
    )
    s.add_argument("--timeout", type=float, default=60, help="seconds to wait for `up` (default 60)")
    s.add_argument("--keep-munge", action="store_true", help="`down` leaves munged running")
    s.set_defaults(func=_slurm)

    k = sub.add_parser("kube", help="single-node development Kubernetes: up | down | status")
    k.add_argument("action", choices=["up", "down", "status"])
    k.add_argument("--run-dir", type=Path, default=KUBE_RUN_DIR,
                   help=f"PKI, etcd, containerd and kubelet state, logs and pid files (default {KUBE_RUN_DIR})")
    k.add_argument("--timeout", type=float, default=180, help="seconds to wait for `up` (default 180)")
    k.set_defaults(func=_kube)

    d = sub.add_parser(
        "devxnat",
        help="XNAT development server (a REST stand-in for XNAT; see --help)",
        add_help=False,
    )
    d.add_argument("rest", nargs=argparse.REMAINDER)
    d.set_defaults(func=_devxnat)

    c = sub.add_parser("check-config", help="validate profiles YAML files; every problem with file:line")
    c.add_argument("files", nargs="+", type=Path, metavar="FILE")
    c.set_defaults(func=_check_config)

    a = sub.add_parser("audit", help="audit trails: verify [FILE...] checks the hub's store or the files given")
    a.add_argument("action", choices=["verify"])
    a.add_argument("files", nargs="*", type=Path, metavar="FILE",
                   help="researchers' JSON-lines logs or hub stores; none: the hub's store")
    a.add_argument("--config", type=Path, default=Path("jupyterhub_config.py"),
                   help="the hub's configuration, for c.HubAuditLog.path and key_file (default ./jupyterhub_config.py)")
    a.add_argument("--store", type=Path, default=None, help="the hub's audit store (instead of --config)")
    a.add_argument("--key", type=Path, default=None,
                   help="the store's key file (default: c.HubAuditLog.key_file, else audit.key next to the store)")
    a.set_defaults(func=_audit)

    v = sub.add_parser("verify-results", help="check published results: the hub's signature and every file")
    v.add_argument("directory", type=Path, help="the results as downloaded from XNAT (with ro-crate-metadata.json "
                   "and its .sig)")
    v.add_argument("--key", type=Path, required=True,
                   help="the hub's public key: a file with its ssh-ed25519 line (or an allowed_signers line)")
    v.set_defaults(func=_verify_results)

    r = sub.add_parser("results-key", help="the hub's key of published results, as an allowed_signers line")
    r.add_argument("--config", type=Path, default=Path("jupyterhub_config.py"),
                   help="the hub's configuration, for c.ResultsSigner.key_path (default ./jupyterhub_config.py; "
                   "a relative key path is taken from its directory)")
    r.set_defaults(func=_results_key)

    j = sub.add_parser("jobs", help="offloaded training jobs: list | show ID | cancel ID")
    j.add_argument("action", choices=["list", "show", "cancel"])
    j.add_argument("job_id", nargs="?", help="job id (j + 12 hex digits) for show and cancel")
    j.add_argument("--workspace", type=Path, default=None,
                   help="the researcher's workspace (default $XNAT_HPC_WORKSPACE or ~/xnat-hpc)")
    j.set_defaults(func=_jobs)

    m = sub.add_parser("demo", help="start devxnat (demo archive), the local Slurm and JupyterHub")
    m.add_argument(
        "--run-dir",
        type=Path,
        default=Path("/var/lib/xnat-hpc-hub/demo"),
        help="where the demo keeps its archive, state and logs",
    )
    m.add_argument(
        "--slurm-run-dir",
        type=Path,
        default=SLURM_RUN_DIR,
        help=f"run directory of the development Slurm (default {SLURM_RUN_DIR})",
    )
    m.add_argument("--xnat-port", type=int, default=8080, help="devxnat port (default 8080)")
    m.add_argument("--hub-port", type=int, default=8000, help="JupyterHub port (default 8000)")
    m.add_argument("--demo-size", default="30MB", help="size of the synthetic archive (default 30MB)")
    m.add_argument("--staging-dir", type=Path, default=Path("/var/lib/xnat-hpc-hub/staging"),
                   help="the offload's staging area (default /var/lib/xnat-hpc-hub/staging)")
    m.add_argument("--unix-accounts", default="{name}", metavar="TEMPLATE",
                   help="the Unix accounts of the demo users' servers, c.UnixAccounts.name_template "
                        "(default {name}: alice, bob, ...; the tests run the demo in throwaway accounts)")
    m.add_argument(
        "--exit-when-ready",
        action="store_true",
        help="start everything, print the summary, stop again and exit (a smoke test)",
    )
    m.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `devxnat` forwards everything (including --help) to the server's own parser
    if argv and argv[0] == "devxnat":
        try:
            devxnat = _dev_module("devxnat", "devxnat")
        except CheckoutRequired as e:
            print(f"xnat-hpc-hub: error: {e.message}", file=sys.stderr)
            return 1
        return devxnat.main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="[%(levelname)s %(name)s] %(message)s",
    )
    try:
        return args.func(args)
    except XnatHpcError as e:
        print(f"xnat-hpc-hub: error: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""A real single-node Kubernetes for the demo and the tests (issue 21).

``xnat-hpc-hub kube up`` starts, directly (no systemd, like ``slurm up``): etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, containerd (Debian's, with runc and the CNI plugins)
and a kubelet, with a CNI bridge for the pods. The Kubernetes programs are v1.34 built from the
Go module proxy (``devstack/k8s/``: a module that pins ``k8s.io/kubernetes`` and the published
``k8s.io/*`` v0.34 modules for its staging ``replace`` lines; ``scripts/bootstrap.sh kube``
builds them into :data:`BIN_DIR` once and again only when that module changes). Every call is
safe to repeat; ``down`` stops everything and removes the pods' containers and the bridge.

What this machine needs, found here (docs/admin.md, "Kubernetes for development"):

* **cgroup v1 only**: the kubelet runs with ``cgroupDriver: cgroupfs`` and
  ``failCgroupV1: false`` (Kubernetes 1.31 put cgroup v1 in maintenance; 1.34 still runs on it);
  containerd's runc with ``SystemdCgroup = false`` (there is no systemd);
* **no CAP_SYS_RESOURCE** inside this VM: containerd's CRI with ``restrict_oom_score_adj = true``
  (else every container's start fails writing a lower ``oom_score_adj``);
* **no registry**: images are OCI archives written here (:mod:`devstack.oci`) and imported with
  ``ctr -n k8s.io images import``; the pod sandbox image is this project's ``pause``
  (``devstack/k8s/pause``, a static Go program), used with ``imagePullPolicy: Never``;
* **one bridge** (:data:`BRIDGE`, :data:`NODE_IP`) made before the kubelet starts (it must find its
  node IP on an interface); pods get addresses of :data:`POD_CIDR` from CNI's ``host-local``.

Security, as on a site: TLS with client certificates between every component, loopback too
(:mod:`devstack.kube_pki`: etcd holds the Secrets of the Kubernetes backend's servers); the API
server and the kubelet refuse anonymous calls and authorize with RBAC and the Node authorizer;
every key is 0600 in root's 0700 run directory. The admin kubeconfig (``RUN/admin.kubeconfig``)
is root's: the hub and the tests run as root.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from xnat_bridge.errors import XnatHpcError

from .daemons import DaemonStatus, running_pid, start, terminate

log = logging.getLogger(__name__)

DEFAULT_RUN_DIR = Path("/var/lib/xnat-hpc-hub/kube")
#: where ``scripts/bootstrap.sh kube`` puts the Kubernetes programs built from the Go module proxy
BIN_DIR = Path("/opt/xnat-hpc-hub/k8s/bin")
#: the Kubernetes version built (``devstack/k8s/go.mod``)
KUBE_VERSION = "v1.34.4"
NODE = "xnat-hpc-dev"
BRIDGE = "xnatk8s0"
POD_CIDR = "10.244.0.0/24"
NODE_IP = "10.244.0.1"
SERVICE_CIDR = "10.96.0.0/24"
SERVICE_IP = "10.96.0.1"
API_PORT = 6443
PAUSE_IMAGE = "docker.io/xnat-hpc-hub/pause:3.10"
#: the kubelet's eviction thresholds: low, so a development disk does not put the node under pressure
EVICTION_HARD = {"memory.available": "100Mi", "nodefs.available": "1%", "nodefs.inodesFree": "1%",
                 "imagefs.available": "1%"}
#: the namespace of the researchers' servers (pods, Secrets, workspace claims) and the hub's Role
HUB_NAMESPACE = "xnat-hpc"
INSTALL_HINT = "build and install them with `make kube` (scripts/bootstrap.sh kube; `make test` runs it)"


class KubeError(XnatHpcError):
    """The development cluster cannot start or answer; the message says which part and why."""

    status = 503
    reason = "kube_dev"


@dataclasses.dataclass(frozen=True)
class KubeDevConfig:
    """Everything the daemons' command lines and files depend on (pure data)."""

    run_dir: Path = DEFAULT_RUN_DIR
    bin_dir: Path = BIN_DIR
    node: str = NODE
    node_ip: str = NODE_IP

    @property
    def pki(self) -> Path:
        return self.run_dir / "pki"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "log"

    @property
    def pid_dir(self) -> Path:
        return self.run_dir / "run"

    @property
    def sock_dir(self) -> Path:
        """containerd's socket and state: on /run (a tmpfs), a directory of root's."""
        return Path("/run/xnat-hpc-hub/kube")

    @property
    def containerd_socket(self) -> Path:
        return self.sock_dir / "containerd.sock"

    @property
    def cni_conf_dir(self) -> Path:
        return self.run_dir / "cni"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.run_dir / "admin.kubeconfig"

    def kubeconfig(self, who: str) -> Path:
        return self.run_dir / f"{who}.kubeconfig"

    def prog(self, name: str) -> str:
        return str(self.bin_dir / name) if name != "containerd" else "containerd"

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{API_PORT}"


# -- configuration (pure) -------------------------------------------------------------------------
def hub_manifests(namespace: str = HUB_NAMESPACE, hub_ip: str = NODE_IP) -> str:
    """What a site's admin (or Zero to JupyterHub's chart) sets up for the hub, as a YAML stream
    (pure): the servers' namespace; the hub's Role there, the chart's own (pods, Secrets,
    services and claims: read, create, delete; events: read), bound to the hub's certificate
    user :data:`~devstack.kube_pki.HUB_USER`, which has nothing else in the cluster; and the
    servers' NetworkPolicy: in, only from the hub's side (the proxy on *hub_ip*) to the server's
    port; out, only to *hub_ip* (the hub's API and XNAT) and DNS. The bridge CNI does not enforce
    NetworkPolicy (docs/admin.md): on this cluster it is admitted and selects the servers' pods,
    as on a site whose CNI enforces it."""
    from .kube_pki import HUB_USER

    singleuser = {"component": "singleuser-server"}
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "xnat-hpc-hub", "namespace": namespace},
         "rules": [{"apiGroups": [""], "resources": ["pods", "persistentvolumeclaims", "secrets", "services"],
                    "verbs": ["get", "watch", "list", "create", "delete"]},
                   {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "watch", "list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "xnat-hpc-hub", "namespace": namespace},
         "subjects": [{"kind": "User", "name": HUB_USER, "apiGroup": "rbac.authorization.k8s.io"}],
         "roleRef": {"kind": "Role", "name": "xnat-hpc-hub", "apiGroup": "rbac.authorization.k8s.io"}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "singleuser", "namespace": namespace},
         "spec": {"podSelector": {"matchLabels": singleuser}, "policyTypes": ["Ingress", "Egress"],
                  "ingress": [{"from": [{"ipBlock": {"cidr": f"{hub_ip}/32"}}],
                               "ports": [{"port": 8888, "protocol": "TCP"}]}],
                  "egress": [{"to": [{"ipBlock": {"cidr": f"{hub_ip}/32"}}]},
                             {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]}},
    ]
    return "".join("---\n" + json.dumps(d, indent=1) + "\n" for d in docs)



def containerd_toml(cfg: KubeDevConfig) -> str:
    """containerd's configuration: its own root, state and socket; CRI with this project's pause
    image, runc on cgroupfs, ``restrict_oom_score_adj`` (no CAP_SYS_RESOURCE here), the CNI
    plugins of Debian's ``containernetworking-plugins``."""
    return f'''version = 2
root = "{cfg.run_dir / 'containerd'}"
state = "{cfg.sock_dir / 'containerd-state'}"
[grpc]
  address = "{cfg.containerd_socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  enable_unprivileged_ports = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cfg.cni_conf_dir}"
'''


def cni_conflist(cfg: KubeDevConfig) -> str:
    """The pods' network: the bridge :data:`BRIDGE` (its gateway the node's IP), addresses of
    :data:`POD_CIDR`, and a loopback in each pod."""
    return json.dumps({
        "cniVersion": "1.0.0", "name": "xnat-hpc-dev",
        "plugins": [{"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR, "gateway": cfg.node_ip}]],
                              "routes": [{"dst": "0.0.0.0/0"}]}},
                    {"type": "loopback"}]}, indent=2) + "\n"


def kubelet_config(cfg: KubeDevConfig) -> str:
    """The kubelet's ``KubeletConfiguration`` (JSON, which it reads as YAML)."""
    pki = cfg.pki
    return json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        # the node's address: the API server reaches the kubelet there (logs, exec); pods can reach
        # it as on any cluster, and get nothing without a client certificate the CA signed
        "address": cfg.node_ip, "port": 10250, "readOnlyPort": 0, "healthzBindAddress": "127.0.0.1",
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(pki / "kubelet-server.crt"), "tlsPrivateKeyFile": str(pki / "kubelet-server.key"),
        "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{cfg.containerd_socket}",
        "clusterDomain": "cluster.local", "resolvConf": "/etc/resolv.conf",
        "evictionHard": EVICTION_HARD, "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False, "podPidsLimit": 4096, "maxPods": 50,
    }, indent=2) + "\n"


def commands(cfg: KubeDevConfig) -> dict[str, list[str]]:
    """Each daemon's command line, in start order (pure)."""
    pki, run = cfg.pki, cfg.run_dir
    etcd_url = "https://127.0.0.1:2379"
    return {
        "etcd": [
            cfg.prog("etcd"), "--name", "xnat-hpc-dev", "--data-dir", str(run / "etcd"),
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", "https://127.0.0.1:2380", "--initial-advertise-peer-urls", "https://127.0.0.1:2380",
            "--initial-cluster", "xnat-hpc-dev=https://127.0.0.1:2380",
            "--cert-file", str(pki / "etcd-server.crt"), "--key-file", str(pki / "etcd-server.key"),
            "--trusted-ca-file", str(pki / "ca.crt"), "--client-cert-auth",
            "--peer-cert-file", str(pki / "etcd-server.crt"), "--peer-key-file", str(pki / "etcd-server.key"),
            "--peer-trusted-ca-file", str(pki / "ca.crt"), "--peer-client-cert-auth",
        ],
        "kube-apiserver": [
            cfg.prog("kube-apiserver"), "--bind-address", "127.0.0.1", f"--secure-port={API_PORT}",
            "--advertise-address", cfg.node_ip, "--endpoint-reconciler-type", "none",
            "--etcd-servers", etcd_url, "--etcd-cafile", str(pki / "ca.crt"),
            "--etcd-certfile", str(pki / "apiserver-etcd-client.crt"),
            "--etcd-keyfile", str(pki / "apiserver-etcd-client.key"),
            "--client-ca-file", str(pki / "ca.crt"), "--anonymous-auth=false",
            "--tls-cert-file", str(pki / "apiserver.crt"), "--tls-private-key-file", str(pki / "apiserver.key"),
            "--kubelet-client-certificate", str(pki / "apiserver-kubelet-client.crt"),
            "--kubelet-client-key", str(pki / "apiserver-kubelet-client.key"),
            "--kubelet-certificate-authority", str(pki / "ca.crt"),
            "--kubelet-preferred-address-types", "InternalIP",
            "--service-account-key-file", str(pki / "sa.pub"),
            "--service-account-signing-key-file", str(pki / "sa.key"),
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range", SERVICE_CIDR, "--authorization-mode", "Node,RBAC",
            "--enable-admission-plugins", "NodeRestriction", "--allow-privileged=false",
        ],
        "kube-controller-manager": [
            cfg.prog("kube-controller-manager"), "--bind-address", "127.0.0.1",
            "--kubeconfig", str(cfg.kubeconfig("controller-manager")),
            "--authentication-kubeconfig", str(cfg.kubeconfig("controller-manager")),
            "--authorization-kubeconfig", str(cfg.kubeconfig("controller-manager")),
            "--cluster-signing-cert-file", str(pki / "ca.crt"), "--cluster-signing-key-file", str(pki / "ca.key"),
            "--root-ca-file", str(pki / "ca.crt"), "--service-account-private-key-file", str(pki / "sa.key"),
            "--use-service-account-credentials", "--leader-elect=false", "--allocate-node-cidrs=false",
        ],
        "kube-scheduler": [
            cfg.prog("kube-scheduler"), "--bind-address", "127.0.0.1",
            "--kubeconfig", str(cfg.kubeconfig("scheduler")),
            "--authentication-kubeconfig", str(cfg.kubeconfig("scheduler")),
            "--authorization-kubeconfig", str(cfg.kubeconfig("scheduler")), "--leader-elect=false",
        ],
        "containerd": [cfg.prog("containerd"), "--config", str(run / "containerd.toml")],
        "kubelet": [
            cfg.prog("kubelet"), "--config", str(run / "kubelet.json"),
            "--kubeconfig", str(cfg.kubeconfig("kubelet")), "--hostname-override", cfg.node,
            "--node-ip", cfg.node_ip, "--root-dir", str(run / "kubelet"),
        ],
    }


#: the daemons, in start order; stopped in the reverse order
DAEMONS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "containerd", "kubelet")
#: the programs ``scripts/bootstrap.sh kube`` builds into :data:`BIN_DIR`
BUILT = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl", "pause")


class KubeDev:
    """Start, stop and inspect the development cluster (module docstring)."""

    def __init__(self, run_dir: Path | str = DEFAULT_RUN_DIR, cfg: KubeDevConfig | None = None):
        self.cfg = cfg or KubeDevConfig(run_dir=Path(run_dir))

    # -- checks -----------------------------------------------------------------------------------
    def missing_programs(self) -> list[str]:
        from xnat_bridge.procs import which

        missing = [p for p in BUILT if not (self.cfg.bin_dir / p).is_file()]
        missing += [p for p in ("containerd", "runc", "ctr", "ip") if which(p) is None]
        missing += [p for p in ("bridge", "host-local", "loopback") if not Path(f"/usr/lib/cni/{p}").is_file()]
        return missing

    # -- pid files --------------------------------------------------------------------------------
    def _pid_file(self, name: str) -> Path:
        return self.cfg.pid_dir / f"{name}.pid"

    def _pid(self, name: str) -> int | None:
        return running_pid(self._pid_file(name), name)

    def status(self) -> list[DaemonStatus]:
        return [DaemonStatus(n, pid is not None, pid) for n in DAEMONS for pid in [self._pid(n)]]

    # -- up ---------------------------------------------------------------------------------------
    def write_files(self) -> None:
        """The PKI, the kubeconfigs and the daemons' configuration files (root's, private)."""
        from xnat_bridge.private import check_private_dir, create_private_file

        from .kube_pki import cert_specs, ensure_pki, kubeconfig

        cfg = self.cfg
        for d in (cfg.run_dir, cfg.log_dir, cfg.pid_dir, cfg.cni_conf_dir, cfg.sock_dir):
            d.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            check_private_dir(str(d), create=True)
        ensure_pki(cfg.pki, cert_specs(cfg.node, cfg.node_ip, SERVICE_IP))
        for who, cert in (("admin", "admin"), ("hub", "hub"), ("controller-manager", "controller-manager"),
                          ("scheduler", "scheduler"), ("kubelet", "kubelet-client")):
            text = kubeconfig(cfg.api_url, cfg.pki / "ca.crt", cfg.pki / f"{cert}.crt", cfg.pki / f"{cert}.key", who)
            create_private_file(str(cfg.kubeconfig(who)), text.encode(), replace=True)
        for path, text in ((cfg.run_dir / "containerd.toml", containerd_toml(cfg)),
                           (cfg.cni_conf_dir / "10-xnat-hpc-dev.conflist", cni_conflist(cfg)),
                           (cfg.run_dir / "kubelet.json", kubelet_config(cfg))):
            create_private_file(str(path), text.encode(), replace=True)

    def ensure_bridge(self) -> None:
        """:data:`BRIDGE` with the node's IP, up (the kubelet must find its node IP; CNI's bridge
        plugin finds the bridge and its gateway address already there)."""
        from xnat_bridge.procs import run

        if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode != 0:
            run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        addrs = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", BRIDGE], capture_output=True,
                               text=True).stdout
        if f" {self.cfg.node_ip}/" not in addrs:
            run(["ip", "addr", "add", f"{self.cfg.node_ip}/{POD_CIDR.split('/')[1]}", "dev", BRIDGE])
        run(["ip", "link", "set", BRIDGE, "up"])

    def _start(self, name: str, argv: list[str]) -> int:
        pid = self._pid(name)
        if pid is not None:
            return pid
        return start(argv, log=self.cfg.log_dir / f"{name}.log", pid_file=self._pid_file(name), cwd=self.cfg.run_dir)

    def _wait(self, what: str, check, timeout: float, daemon: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if check():
                return
            if self._pid(daemon) is None:
                raise KubeError(f"{daemon} exited while starting: {self.log_tail(daemon)}")
            if time.monotonic() > deadline:
                raise KubeError(f"{what} not ready in {timeout:.0f} s: {self.log_tail(daemon)}")
            time.sleep(0.2)

    def log_tail(self, name: str, lines: int = 8) -> str:
        try:
            return " | ".join(self.cfg.log_dir.joinpath(f"{name}.log").read_text(errors="replace")
                              .strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kubectl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([self.cfg.prog("kubectl"), "--kubeconfig", str(self.cfg.admin_kubeconfig), *args],
                              capture_output=True, text=True, timeout=timeout)

    def _api_ready(self) -> bool:
        return self.kubectl("get", "--raw", "/readyz", timeout=10).returncode == 0

    def _node_ready(self) -> bool:
        r = self.kubectl("get", "node", self.cfg.node, "-o",
                         "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}", timeout=10)
        return r.returncode == 0 and r.stdout.strip() == "True"

    def up(self, timeout: float = 180) -> None:
        """Start what is not running; return once the node is Ready and pods can be admitted (the
        namespaces' default service accounts exist)."""
        if os.geteuid() != 0:
            raise KubeError("`xnat-hpc-hub kube up` starts system daemons: run it as root")
        missing = self.missing_programs()
        if missing:
            raise KubeError(f"programs missing for the development cluster: {', '.join(missing)}; {INSTALL_HINT}")
        self.write_files()
        self.ensure_bridge()
        argv = commands(self.cfg)
        self._start("etcd", argv["etcd"])
        self._start("kube-apiserver", argv["kube-apiserver"])
        self._wait("the API server", self._api_ready, timeout, "kube-apiserver")
        for name in ("kube-controller-manager", "kube-scheduler", "containerd"):
            self._start(name, argv[name])
        self._wait("containerd", self.cfg.containerd_socket.exists, 30, "containerd")
        self.import_images()
        self._start("kubelet", argv["kubelet"])
        self._wait(f"the node {self.cfg.node}", self._node_ready, timeout, "kubelet")
        r = subprocess.run([self.cfg.prog("kubectl"), "--kubeconfig", str(self.cfg.admin_kubeconfig), "apply",
                            "-f", "-"], input=hub_manifests(), capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise KubeError(f"could not set up the hub's namespace {HUB_NAMESPACE}: {r.stderr.strip()[-1000:]}")
        # the controller manager makes each namespace's `default` service account shortly after the
        # namespace; until then the API refuses every pod there ("serviceaccount default not found")
        self._wait("the namespaces' default service accounts", self._service_accounts_ready, timeout,
                   "kube-controller-manager")

    def _service_accounts_ready(self) -> bool:
        return all(self.kubectl("get", "serviceaccount", "default", "-n", ns, "-o", "name", timeout=10).returncode == 0
                   for ns in ("default", HUB_NAMESPACE))

    def import_images(self) -> None:
        """The pause image (the pods' sandbox), written as an OCI archive and imported into
        containerd's ``k8s.io`` namespace (no registry)."""
        from .oci import import_image, single_binary_image

        archive = self.cfg.run_dir / "pause.oci.tar"
        single_binary_image(PAUSE_IMAGE, self.cfg.bin_dir / "pause", "/pause", archive)
        import_image(self.cfg.containerd_socket, archive)

    # -- down -------------------------------------------------------------------------------------
    def ctr(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(["ctr", "--address", str(self.cfg.containerd_socket), "-n", "k8s.io", *args],
                              capture_output=True, text=True, timeout=timeout)

    def _tasks(self) -> list[str]:
        r = self.ctr("tasks", "ls", "-q")
        return r.stdout.split() if r.returncode == 0 else []

    def down(self, timeout: float = 30) -> None:
        """Delete every pod through the API (the kubelet tears each down: CNI releases its address
        and its veth), then stop the daemons (kubelet first), kill what containerd still runs, and
        remove the bridge."""
        if self._pid("kube-apiserver") and self._pid("kubelet"):
            self.kubectl("delete", "pods", "--all", "--all-namespaces", "--grace-period=0", "--force",
                         "--wait=false", timeout=timeout)
            deadline = time.monotonic() + timeout
            while self._pid("containerd") and self._tasks() and time.monotonic() < deadline:
                time.sleep(0.2)
        for name in reversed(DAEMONS):
            if name == "containerd" and self._pid(name):
                for task in self._tasks():  # what the kubelet did not tear down in time
                    self.ctr("tasks", "kill", "-s", "SIGKILL", task)
                    self.ctr("tasks", "delete", "-f", task)
            self._stop(name, timeout)
        for shim in _processes_with("containerd-shim-runc-v2", f"-address {self.cfg.containerd_socket}"):
            try:
                os.kill(shim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)

    def _stop(self, name: str, timeout: float) -> None:
        pid = self._pid(name)
        if pid is not None:
            terminate(pid, timeout, group=True)
        self._pid_file(name).unlink(missing_ok=True)


def _processes_with(prog: str, needle: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if prog in cmd and needle in cmd:
            out.append(int(entry))
    return out


def format_status(statuses: list[DaemonStatus], run_dir: Path) -> str:
    lines = [f"development Kubernetes {KUBE_VERSION} in {run_dir}:"]
    lines += [f"  {s.name:24s} {'running, pid ' + str(s.pid) if s.running else 'not running'}" for s in statuses]
    return "\n".join(lines)

"""The development Kubernetes' pure parts (:mod:`devstack.kube`, :mod:`devstack.kube_pki`,
:mod:`devstack.oci`): certificates and who they name, every daemon's TLS, the kubelet's and
containerd's settings for this machine, and OCI archives containerd can import. The cluster
itself runs in ``tests/integration/test_kube_cluster.py``."""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import tarfile
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devstack import kube, kube_pki, oci


def test_every_certificate_is_signed_by_the_ca_for_its_use_and_names(tmp_path):
    specs = kube_pki.cert_specs("node1", "10.244.0.1", "10.96.0.1")
    kube_pki.ensure_pki(tmp_path / "pki", specs)
    ca = x509.load_pem_x509_certificate((tmp_path / "pki" / "ca.crt").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for spec in specs:
        cert = x509.load_pem_x509_certificate((tmp_path / "pki" / f"{spec.name}.crt").read_bytes())
        cert.verify_directly_issued_by(ca)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == spec.cn
        assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == list(spec.orgs)
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        assert (ExtendedKeyUsageOID.SERVER_AUTH in usages) == spec.server
        assert (ExtendedKeyUsageOID.CLIENT_AUTH in usages) == spec.client
        assert ((tmp_path / "pki" / f"{spec.name}.key").stat().st_mode & 0o077) == 0
    api = x509.load_pem_x509_certificate((tmp_path / "pki" / "apiserver.crt").read_bytes())
    sans = api.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(i) for i in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.96.0.1", "10.244.0.1"}
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
    names = {s.name: s for s in specs}
    assert names["kubelet-client"].cn == "system:node:node1" and names["kubelet-client"].orgs == ("system:nodes",)
    assert names["admin"].orgs == ("system:masters",)
    assert ((tmp_path / "pki").stat().st_mode & 0o777) == 0o700
    # a second run keeps the CA (the kubeconfigs and running daemons keep trusting it)
    before = (tmp_path / "pki" / "ca.crt").read_bytes()
    kube_pki.ensure_pki(tmp_path / "pki", specs)
    assert (tmp_path / "pki" / "ca.crt").read_bytes() == before
    assert ipaddress.ip_address("10.244.0.1") in ipaddress.ip_network(kube.POD_CIDR)


def test_every_daemon_speaks_tls_with_client_certificates_and_binds_loopback_or_the_node(tmp_path):
    cfg = kube.KubeDevConfig(run_dir=tmp_path)
    argv = kube.commands(cfg)
    assert list(argv) == list(kube.DAEMONS)
    etcd = " ".join(argv["etcd"])
    assert "--client-cert-auth" in etcd and "--peer-client-cert-auth" in etcd and "http://" not in etcd
    api = argv["kube-apiserver"]
    assert "--anonymous-auth=false" in api and api[api.index("--bind-address") + 1] == "127.0.0.1"
    assert api[api.index("--authorization-mode") + 1] == "Node,RBAC" and "--allow-privileged=false" in api
    for name in ("kube-controller-manager", "kube-scheduler"):
        assert argv[name][argv[name].index("--bind-address") + 1] == "127.0.0.1"
    kubelet = json.loads(kube.kubelet_config(cfg))
    assert kubelet["address"] == kube.NODE_IP and kubelet["readOnlyPort"] == 0 and kubelet["healthzBindAddress"] == "127.0.0.1"
    assert kubelet["authentication"]["anonymous"]["enabled"] is False and kubelet["authorization"]["mode"] == "Webhook"
    # this machine: cgroup v1 without systemd
    assert kubelet["cgroupDriver"] == "cgroupfs" and kubelet["failCgroupV1"] is False
    toml = kube.containerd_toml(cfg)
    assert "restrict_oom_score_adj = true" in toml and "SystemdCgroup = false" in toml
    assert f'sandbox_image = "{kube.PAUSE_IMAGE}"' in toml
    cni = json.loads(kube.cni_conflist(cfg))
    assert cni["plugins"][0]["bridge"] == kube.BRIDGE
    assert cni["plugins"][0]["ipam"]["ranges"] == [[{"subnet": kube.POD_CIDR, "gateway": kube.NODE_IP}]]
    config = json.loads(kube_pki.kubeconfig("https://127.0.0.1:6443", Path("/p/ca.crt"), Path("/p/a.crt"),
                                           Path("/p/a.key"), "admin"))
    assert config["clusters"][0]["cluster"] == {"server": "https://127.0.0.1:6443", "certificate-authority": "/p/ca.crt"}
    assert "token" not in json.dumps(config)


def test_an_oci_archive_is_deterministic_and_complete(tmp_path):
    files = [oci.File("/bin/tool", b"\x7fELF...", 0o755), oci.File("/etc/conf", b"x=1\n")]
    a = oci.image_archive("docker.io/xnat-hpc-hub/t:1", [oci.layer(files)], tmp_path / "a.tar", entrypoint=["/bin/tool"])
    b = oci.image_archive("docker.io/xnat-hpc-hub/t:1", [oci.layer(list(reversed(files)))], tmp_path / "b.tar",
                          entrypoint=["/bin/tool"])
    assert a == b and (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tar:
        names = tar.getnames()
        blobs = {n.rsplit("/", 1)[1]: tar.extractfile(n).read() for n in names if n.startswith("blobs/")}
        index = json.loads(tar.extractfile("index.json").read())
    assert {"oci-layout", "index.json"} <= set(names)
    assert all(hashlib.sha256(data).hexdigest() == digest for digest, data in blobs.items())
    [entry] = index["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == "docker.io/xnat-hpc-hub/t:1"
    manifest = json.loads(blobs[entry["digest"].split(":")[1]])
    config = json.loads(blobs[manifest["config"]["digest"].split(":")[1]])
    assert config["config"]["Entrypoint"] == ["/bin/tool"] and config["rootfs"]["diff_ids"] == [
        manifest["layers"][0]["digest"]]
    with tarfile.open(fileobj=io.BytesIO(blobs[manifest["layers"][0]["digest"].split(":")[1]])) as layer:
        tool = layer.getmember("bin/tool")
        assert tool.mode == 0o755 and layer.getmember("bin").isdir() and tool.mtime == 0


def test_the_cli_and_the_cluster_agree_on_the_run_directory():
    from hub_ext.cli import KUBE_RUN_DIR, build_parser

    assert KUBE_RUN_DIR == kube.DEFAULT_RUN_DIR
    args = build_parser().parse_args(["kube", "status"])
    assert args.run_dir == kube.DEFAULT_RUN_DIR and args.action == "status"


def test_the_server_image_recipe_installs_the_wheel_offline_and_adds_an_unprivileged_user():
    from devstack import images

    steps = images.recipe("xnat_hpc_hub-1.0-py3-none-any.whl")
    pip = next(s for s in steps if "pip install" in s)
    assert "--no-index" in pip and '"/tmp/wheels/xnat_hpc_hub-1.0-py3-none-any.whl[server]"' in pip
    assert any("useradd" in s and f"-u {images.USER_UID}" in s for s in steps)
    assert steps[-1] == 'rm -rf "$1/tmp/wheels"'  # no wheel or wheelhouse left in the image
    assert images.ENV["PATH"].startswith(f"{images.VENV}/bin:")


def test_the_hubs_namespace_role_and_the_servers_network_policy():
    import kubernetes_validate

    from tests.unit.test_kube_objects import K8S_VERSION

    docs = [json.loads(d) for d in kube.hub_manifests("xnat-hpc", "10.244.0.1").split("---\n") if d.strip()]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    by_kind = {d["kind"]: d for d in docs}
    assert by_kind["Namespace"]["metadata"]["name"] == "xnat-hpc"
    # Zero to JupyterHub's hub Role, no more: the hub cannot touch nodes, volumes or other namespaces
    assert by_kind["Role"]["rules"] == [
        {"apiGroups": [""], "resources": ["pods", "persistentvolumeclaims", "secrets", "services"],
         "verbs": ["get", "watch", "list", "create", "delete"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "watch", "list"]}]
    assert by_kind["RoleBinding"]["subjects"] == [{"kind": "User", "name": kube_pki.HUB_USER,
                                                   "apiGroup": "rbac.authorization.k8s.io"}]
    assert {s.name: s for s in kube_pki.cert_specs("n", "10.244.0.1", "10.96.0.1")}["hub"].orgs == ()
    policy = by_kind["NetworkPolicy"]["spec"]
    assert policy["podSelector"] == {"matchLabels": {"component": "singleuser-server"}}  # kubespawner's label
    assert policy["ingress"] == [{"from": [{"ipBlock": {"cidr": "10.244.0.1/32"}}],
                                  "ports": [{"port": 8888, "protocol": "TCP"}]}]
    assert policy["egress"][0] == {"to": [{"ipBlock": {"cidr": "10.244.0.1/32"}}]}

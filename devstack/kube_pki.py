"""The development cluster's PKI: one CA, the certificates of its components, the service
account key and the kubeconfigs (:mod:`devstack.kube`).

Every component talks TLS with a client certificate, also on loopback: a port on 127.0.0.1 is
open to every account of the machine, and etcd holds the cluster's Secrets (a researcher's
server's XNAT credentials on the Kubernetes backend). Keys are written 0600 in a 0700
directory of root's (:func:`xnat_bridge.private.create_private_file`); nothing is reused across
runs of ``kube up`` but the CA, so a certificate whose names changed is issued again.

What each certificate is, as Kubernetes' own "PKI certificates and requirements" lists them:

==========================  =========================================  ======================
file                        subject (CN / O)                           used for
==========================  =========================================  ======================
``ca``                      xnat-hpc-hub dev cluster CA                signs all below
``etcd-server``             etcd                                       etcd's TLS (server)
``apiserver-etcd-client``   kube-apiserver-etcd-client                 apiserver → etcd
``apiserver``               kube-apiserver (SANs: loopback, the         the API's TLS (server)
                            service IP, the node's bridge IP, names)
``apiserver-kubelet-client`` kube-apiserver-kubelet-client / masters    apiserver → kubelet
``admin``                   xnat-hpc-hub-admin / system:masters        kubectl, the hub, tests
``controller-manager``      system:kube-controller-manager             its kubeconfig
``scheduler``               system:kube-scheduler                      its kubeconfig
``kubelet-client``          system:node:NODE / system:nodes            kubelet → apiserver
``kubelet-server``          NODE (SANs: loopback, the node's IP)       the kubelet's TLS
``sa`` (key pair)           —                                          service account tokens
==========================  =========================================  ======================
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import ipaddress
import os
from pathlib import Path

from xnat_bridge.private import check_private_dir, create_private_file

#: the hub's user in the cluster (its client certificate's CN), bound to the hub's Role
HUB_USER = "xnat-hpc-hub"
#: how long the development certificates are valid (the cluster is re-made, never renewed)
VALID_DAYS = 365


@dataclasses.dataclass(frozen=True)
class CertSpec:
    """One certificate to issue (pure data)."""

    name: str
    cn: str
    orgs: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    server: bool = False
    client: bool = False


def cert_specs(node: str, node_ip: str, service_ip: str) -> list[CertSpec]:
    """The certificates of the cluster (pure; the module docstring's table)."""
    api_dns = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
               "kubernetes.default.svc.cluster.local")
    return [
        CertSpec("etcd-server", "etcd", dns=("localhost",), ips=("127.0.0.1",), server=True),
        CertSpec("apiserver-etcd-client", "kube-apiserver-etcd-client", client=True),
        CertSpec("apiserver", "kube-apiserver", dns=api_dns, ips=("127.0.0.1", service_ip, node_ip), server=True),
        CertSpec("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",), client=True),
        CertSpec("admin", "xnat-hpc-hub-admin", ("system:masters",), client=True),
        # the hub: no group, only what the Role of :func:`devstack.kube.hub_manifests` grants
        CertSpec("hub", HUB_USER, client=True),
        CertSpec("controller-manager", "system:kube-controller-manager", client=True),
        CertSpec("scheduler", "system:kube-scheduler", client=True),
        CertSpec("kubelet-client", f"system:node:{node}", ("system:nodes",), client=True),
        CertSpec("kubelet-server", node, dns=(node, "localhost"), ips=("127.0.0.1", node_ip), server=True),
    ]


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str, orgs: tuple[str, ...] = ()):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([*(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca() -> tuple[bytes, bytes]:
    """A new CA: ``(certificate PEM, key PEM)``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    key = _key()
    now = _dt.datetime.now(_dt.timezone.utc)
    name = _name("xnat-hpc-hub dev cluster CA")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - _dt.timedelta(minutes=5))
            .not_valid_after(now + _dt.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def issue(spec: CertSpec, ca_cert_pem: bytes, ca_key_pem: bytes) -> tuple[bytes, bytes]:
    """*spec*'s certificate signed by the CA: ``(certificate PEM, key PEM)``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    key = _key()
    now = _dt.datetime.now(_dt.timezone.utc)
    usages = [u for u, on in ((ExtendedKeyUsageOID.SERVER_AUTH, spec.server),
                              (ExtendedKeyUsageOID.CLIENT_AUTH, spec.client)) if on]
    builder = (x509.CertificateBuilder().subject_name(_name(spec.cn, spec.orgs)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - _dt.timedelta(minutes=5)).not_valid_after(now + _dt.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
    sans = [x509.DNSName(d) for d in spec.dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in spec.ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def kubeconfig(server: str, ca_path: Path, cert_path: Path, key_path: Path, user: str) -> str:
    """A kubeconfig of one cluster, one user (client certificate files), one context (pure)."""
    import json

    doc = {"apiVersion": "v1", "kind": "Config",
           "clusters": [{"name": "xnat-hpc-dev", "cluster": {"server": server, "certificate-authority": str(ca_path)}}],
           "users": [{"name": user, "user": {"client-certificate": str(cert_path), "client-key": str(key_path)}}],
           "contexts": [{"name": "xnat-hpc-dev", "context": {"cluster": "xnat-hpc-dev", "user": user}}],
           "current-context": "xnat-hpc-dev"}
    return json.dumps(doc, indent=2) + "\n"  # JSON is YAML: kubectl and the clients read it


def ensure_pki(pki_dir: Path, specs: list[CertSpec]) -> None:
    """The CA (made once) and every certificate of *specs* (issued again at each call: their
    names may have changed), and the service account key pair, in *pki_dir* (0700, root's)."""
    from cryptography.hazmat.primitives import serialization

    check_private_dir(str(pki_dir), create=True)
    ca_cert, ca_key = pki_dir / "ca.crt", pki_dir / "ca.key"
    if not (ca_cert.exists() and ca_key.exists()):
        cert, key = make_ca()
        create_private_file(str(ca_key), key, replace=True)
        create_private_file(str(ca_cert), cert, replace=True)
    ca = ca_cert.read_bytes(), ca_key.read_bytes()
    for spec in specs:
        cert, key = issue(spec, *ca)
        create_private_file(str(pki_dir / f"{spec.name}.key"), key, replace=True)
        create_private_file(str(pki_dir / f"{spec.name}.crt"), cert, replace=True)
    if not (pki_dir / "sa.key").exists():
        key = _key()
        create_private_file(str(pki_dir / "sa.key"), _pem_key(key), replace=True)
        pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        create_private_file(str(pki_dir / "sa.pub"), pub, replace=True)
    os.chmod(pki_dir, 0o700)

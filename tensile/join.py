"""``tensile join`` and ``tensile unjoin``: the API calls behind :mod:`tensile.joinplan`.

Both sides are checked before anything is written: each cluster answers as a Kubernetes API, the
two are different clusters, the caller holds every right the steps need (SelfSubjectAccessReview,
so the message names the verb and the resource), and the name is not joined to another lower
cluster. Objects are server-side applied, so running ``join`` again refreshes the token and
changes nothing else. When a step fails half-way, what this run created is deleted again.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

from tensile import clusterprofile, manifests, rbac
from tensile import conventions as c
from tensile.joinplan import (
    APPLY_PATCH,
    COPY_KINDS,
    FIELD_MANAGER,
    JoinError,
    Names,
    Right,
    check_name,
    copy_selector,
    current_cluster,
    describe,
    joined_elsewhere,
    leftovers_report,
    lower_objects,
    lower_rights,
    minted_kubeconfig,
    missing_message,
    namespace,
    object_path,
    path_of,
    token_request,
    upper_installed,
    upper_rbac,
    upper_rights,
    upper_secret,
)
from tensile.kube.client import Kube, path
from tensile.kube.errors import ApiError

log = logging.getLogger("tensile.join")

JSON = dict[str, Any]


def say(line: str) -> None:
    """Progress goes to stderr; stdout carries only what ``--print`` prints."""
    print(line, file=sys.stderr, flush=True)


@dataclasses.dataclass
class Cluster:
    side: str
    kube: Kube
    kubeconfig: Path
    uid: str = ""
    user: str = ""


async def connect(side: str, kubeconfig: Path | None) -> Cluster:
    """A client for one side that has answered as a Kubernetes API, or a :class:`JoinError` saying why not."""
    if kubeconfig is None:
        raise JoinError(f"no {side} kubeconfig: pass --{side}-kubeconfig")
    if not kubeconfig.is_file():
        raise JoinError(f"the {side} kubeconfig {kubeconfig} does not exist")
    try:
        kube = await Kube.from_kubeconfig(str(kubeconfig), name=side)
    except Exception as exc:  # the loader raises many kinds; each means a bad kubeconfig
        raise JoinError(f"cannot load the {side} kubeconfig {kubeconfig}: {exc}") from exc
    cluster = Cluster(side, kube, kubeconfig)
    try:
        version = await kube.get("/version", timeout=10)
        if "gitVersion" not in version:
            raise JoinError(f"{kube.host} (the {side} kubeconfig's server) is not a Kubernetes API server")
        system = await kube.get(path("namespaces", name=c.KUBE_SYSTEM), timeout=10)
        cluster.uid = str(system["metadata"]["uid"])
        cluster.user = await _whoami(kube)
    except ApiError as exc:
        await kube.close()
        if exc.status == 0:
            raise JoinError(f"cannot reach the {side} cluster at {kube.host}: {exc.message}") from exc
        if exc.status == 401:
            raise JoinError(f"the {side} cluster at {kube.host} refused the kubeconfig's credentials") from exc
        if exc.status == 403:
            raise JoinError(f"the {side} kubeconfig may not get namespaces/{c.KUBE_SYSTEM} (join reads the "
                            "cluster's id there)") from exc
        raise JoinError(f"{kube.host} (the {side} kubeconfig's server) is not a Kubernetes API server: "
                        f"{exc}") from exc
    except JoinError:
        await kube.close()
        raise
    return cluster


async def _whoami(kube: Kube) -> str:
    try:
        review = await kube.create("/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                   {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    except ApiError:
        return ""  # only for messages; an old apiserver lacks the API
    return str(((review.get("status") or {}).get("userInfo") or {}).get("username", ""))


async def require(cluster: Cluster, rights: list[Right]) -> None:
    missing = []
    for right in rights:
        review = await cluster.kube.create("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", right.review())
        if not (review.get("status") or {}).get("allowed"):
            missing.append(right)
    if missing:
        raise JoinError(missing_message(cluster.side, cluster.user, missing))


async def get_or_none(kube: Kube, url_path: str) -> JSON | None:
    try:
        return await kube.get(url_path)
    except ApiError as exc:
        if exc.not_found:
            return None
        raise


class Applier:
    """Server-side applies objects and remembers those it created, to delete them if a later step fails."""

    def __init__(self) -> None:
        self.created: list[tuple[Cluster, JSON]] = []

    async def apply(self, cluster: Cluster, obj: JSON) -> JSON:
        url_path = path_of(obj)
        existed = await get_or_none(cluster.kube, url_path) is not None
        if existed and obj["kind"] == "Namespace":
            return {}  # someone else's namespace stays as it is (unjoin removes only one join made)
        result = await cluster.kube.request("PATCH", url_path, params={"fieldManager": FIELD_MANAGER, "force": "true"},
                                            body=obj, content_type=APPLY_PATCH)
        if not existed:
            self.created.append((cluster, obj))
        say(f"{describe(obj)} {'configured' if existed else 'created'} in the {cluster.side} cluster")
        return result

    async def rollback(self) -> None:
        for cluster, obj in reversed(self.created):
            try:
                await cluster.kube.delete(path_of(obj))
                say(f"{describe(obj)} removed again from the {cluster.side} cluster")
            except ApiError as exc:
                if not exc.not_found:
                    say(f"warning: could not remove {describe(obj)} from the {cluster.side} cluster: {exc}")
        self.created.clear()


@dataclasses.dataclass(frozen=True)
class Target:
    """The two clusters and the virtual node that join and unjoin act on."""

    upper_kubeconfig: Path | None
    lower_kubeconfig: Path | None
    name: str
    namespace: str = "tensile-system"


@dataclasses.dataclass(frozen=True)
class JoinOptions(Target):
    install: bool = False
    lower_server: str | None = None
    token_seconds: int = 365 * 24 * 3600
    image: str = manifests.DEFAULT_IMAGE
    flags: tuple[str, ...] = ()


async def _both(options_upper: Path | None, options_lower: Path | None,
                body: Callable[[Cluster, Cluster], Awaitable[str]]) -> str:
    upper = await connect("upper", options_upper)
    try:
        lower = await connect("lower", options_lower)
        try:
            if upper.uid == lower.uid:
                raise JoinError("the upper and the lower kubeconfig reach the same cluster "
                                f"(kube-system uid {upper.uid})")
            return await body(upper, lower)
        except ApiError as exc:
            # Refused half-way (what this run created is removed again by then): say what, not where.
            raise JoinError(str(exc)) from exc
        finally:
            await lower.kube.close()
    finally:
        await upper.kube.close()


def _lower_ca(kubeconfig: Path, cluster: JSON) -> bytes | None:
    if cluster.get("certificate-authority-data"):
        return base64.b64decode(cluster["certificate-authority-data"])
    if cluster.get("certificate-authority"):
        ca = Path(cluster["certificate-authority"])
        ca = ca if ca.is_absolute() else kubeconfig.parent / ca
        try:
            return ca.read_bytes()
        except OSError as exc:
            raise JoinError(f"cannot read the lower cluster's CA {ca}: {exc}") from exc
    return None


async def join(options: JoinOptions) -> str:
    """Link the lower cluster; returns what ``--print`` prints (or a summary)."""
    check_name(options.name)

    async def body(upper: Cluster, lower: Cluster) -> str:
        names = Names(options.name, options.namespace, upper.uid)
        await require(lower, lower_rights(names))
        await require(upper, upper_rights(names, options.install))
        secret = await get_or_none(upper.kube, object_path("Secret", names.secret, names.namespace))
        node = await get_or_none(upper.kube, object_path("Node", names.node))
        if why := joined_elsewhere(secret, node, lower.uid, names.node):
            raise JoinError(why)
        try:
            config = yaml.safe_load(lower.kubeconfig.read_text())
            _, entry = current_cluster(config if isinstance(config, dict) else {})
        except (OSError, yaml.YAMLError) as exc:
            raise JoinError(f"cannot read the lower kubeconfig {lower.kubeconfig}: {exc}") from exc
        ca = _lower_ca(lower.kubeconfig, entry)
        deployment = manifests.virtual_node_deployment(
            names.node, names.namespace, options.image, list(options.flags), secret=names.secret,
            service_account=names.upper_service_account)
        installed = upper_installed(names, deployment)
        applier = Applier()
        try:
            for obj in lower_objects(names):
                await applier.apply(lower, obj)
            minted = await lower.kube.create(
                path("serviceaccounts", names.namespace, names.lower_service_account, "token"),
                token_request(options.token_seconds))
            status = minted.get("status") or {}
            kubeconfig = minted_kubeconfig(entry, ca, str(status.get("token", "")), names.lower_service_account,
                                           options.lower_server)
            expires = str(status.get("expirationTimestamp", ""))
            await applier.apply(upper, namespace(names.namespace, {c.MANAGED_BY_LABEL: c.MANAGED_BY_VALUE}))
            await applier.apply(upper, upper_secret(names, yaml.safe_dump(kubeconfig), lower.uid, expires))
            say(f"the lower token expires at {expires}; run this join again before then to renew it")
            if options.install:
                for obj in installed:
                    await applier.apply(upper, obj)
        except BaseException:
            await applier.rollback()
            raise
        if options.install:
            return ""
        return yaml.safe_dump_all(installed, sort_keys=False)

    return await _both(options.upper_kubeconfig, options.lower_kubeconfig, body)


@dataclasses.dataclass(frozen=True)
class UnjoinOptions(Target):
    purge: bool = False


async def _delete(cluster: Cluster, url_path: str, what: str) -> bool:
    try:
        await cluster.kube.delete(url_path)
    except ApiError as exc:
        if exc.not_found:
            return False
        raise
    say(f"{what} removed from the {cluster.side} cluster")
    return True


async def _names(kube: Kube, collection: str, selector: str) -> list[JSON]:
    listed = await kube.get(collection, params={"labelSelector": selector})
    return list(listed.get("items") or [])


async def _only_defaults(kube: Kube, ns: str) -> bool:
    """Nothing but the ``default`` ServiceAccount lives in ``ns`` (so tensile may remove the namespace)."""
    accounts = await kube.get(path("serviceaccounts", ns))
    return all(sa["metadata"]["name"] == "default" for sa in accounts.get("items") or [])


async def unjoin(options: UnjoinOptions) -> str:
    """Remove what ``join`` made in both clusters; report (or, with ``purge``, remove) copies left downstairs."""
    check_name(options.name)

    async def body(upper: Cluster, lower: Cluster) -> str:
        names = Names(options.name, options.namespace, upper.uid)
        ns = names.namespace
        deployment = manifests.virtual_node_deployment(names.node, ns, manifests.DEFAULT_IMAGE, [],
                                                       secret=names.secret,
                                                       service_account=names.upper_service_account)
        # Upstairs: the Deployment first, so nothing recreates what follows.
        for obj in [deployment, *reversed(upper_rbac(names))]:
            await _delete(upper, path_of(obj), describe(obj))
        await _delete(upper, object_path("Secret", names.secret, ns), f"Secret {ns}/{names.secret}")
        await _delete(upper, object_path(c.PROFILE_KIND, names.node), f"{c.PROFILE_KIND} {names.node}")
        await _delete(upper, object_path("Lease", names.node, c.NODE_LEASE_NAMESPACE), f"Lease {names.node}")
        await _delete(upper, object_path("Lease", names.node, ns), f"Lease {ns}/{names.node}")
        await _delete(upper, object_path("Node", names.node), f"Node {names.node}")
        profiles = await get_or_none(upper.kube, object_path(c.PROFILE_KIND, "", collection=True))
        if profiles is not None and not profiles.get("items"):
            # No virtual node publishes a profile any more: the CRD join installed goes too.
            crd = clusterprofile.crd()
            await _delete(upper, path_of(crd), describe(crd))
        upper_ns = await get_or_none(upper.kube, object_path("Namespace", ns))
        if upper_ns and _managed(upper_ns) and await _only_defaults(upper.kube, ns):
            await _delete(upper, object_path("Namespace", ns), f"Namespace {ns}")
        # Downstairs: the copies, then the credentials.
        found: dict[str, list[str]] = {}
        for kind, group_version in COPY_KINDS:
            items = await _names(lower.kube, path(kind, group_version=group_version), copy_selector(names))
            keys = [f"{i['metadata'].get('namespace', '')}/{i['metadata']['name']}" for i in items]
            found[kind] = keys
            if options.purge:
                for item, key in zip(items, keys, strict=True):
                    meta = item["metadata"]
                    await _delete(lower, path(kind, meta["namespace"], meta["name"], group_version=group_version),
                                  f"{kind} {key}")
        created_ns = await _names(lower.kube, path("namespaces"), copy_selector(names))
        found["namespaces"] = [n["metadata"]["name"] for n in created_ns]
        if options.purge:
            for item in created_ns:
                await _delete(lower, object_path("Namespace", item["metadata"]["name"]),
                              f"Namespace {item['metadata']['name']}")
        for obj in reversed(lower_objects(names)):
            kind = obj["kind"]
            if kind in ("ServiceAccount", "ClusterRoleBinding"):
                await _delete(lower, path_of(obj), describe(obj))
        if not await _other_lower_bindings(lower.kube):
            # The last joined ServiceAccount is gone: the shared role and the guard policy go too.
            for obj in lower_objects(names):
                if obj["kind"] in ("ClusterRole", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
                    await _delete(lower, path_of(obj), describe(obj))
            lower_ns = await get_or_none(lower.kube, object_path("Namespace", ns))
            if lower_ns and _managed(lower_ns) and await _only_defaults(lower.kube, ns):
                await _delete(lower, object_path("Namespace", ns), f"Namespace {ns}")
        return leftovers_report(found, options.purge)

    return await _both(options.upper_kubeconfig, options.lower_kubeconfig, body)


def _managed(obj: JSON) -> bool:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(c.MANAGED_BY_LABEL) == c.MANAGED_BY_VALUE


async def _other_lower_bindings(kube: Kube) -> bool:
    bindings = await kube.get(object_path("ClusterRoleBinding", "", collection=True),
                              params={"labelSelector": f"{c.MANAGED_BY_LABEL}={c.MANAGED_BY_VALUE}"})
    return any((b.get("roleRef") or {}).get("name") == rbac.LOWER_ROLE for b in bindings.get("items") or [])

"""Where an upper namespace lives in the lower cluster (``--namespace-mapping``). Pure.

- ``same``: upper ``ns`` is lower ``ns``. Two upper clusters sharing a lower cluster then share
  its namespaces, and a same-named object of the second is refused (never clobbered): the
  ownership labels say whose each copy is.
- ``suffixed``: upper ``ns`` is lower ``<ns>-<suffix>``, the suffix naming the upper cluster, so
  every upper cluster has namespaces of its own downstairs. A name past 63 characters is cut and
  made unique again with a hash of the whole upper name.

Lower objects made in ``suffixed`` mode record their upper namespace in an annotation, so the way
back never has to undo a hash. A lower object without it is read as ``same``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any, Literal

from tensile import conventions as c

JSON = dict[str, Any]
Mode = Literal["same", "suffixed"]
MODES: tuple[Mode, ...] = ("same", "suffixed")
#: A namespace name is a DNS label (RFC 1123).
MAX_NAME = 63
#: Longest suffix allowed, so at least 20 characters of the upper name survive a cut.
MAX_SUFFIX = MAX_NAME - 20 - 10
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def suffix_problem(suffix: str) -> str | None:
    """Why ``suffix`` cannot end lower namespace names; None when it can."""
    if not _DNS_LABEL.match(suffix):
        return f"{suffix!r} is not a DNS label (lower-case letters, digits and '-', starting and ending alphanumeric)"
    if len(suffix) > MAX_SUFFIX:
        return f"{suffix!r} is longer than {MAX_SUFFIX} characters"
    return None


def default_suffix(upper_cluster_uid: str) -> str:
    """The first 8 characters of the upper cluster's kube-system UID: short, and distinct in practice.

    Two upper clusters that did collide would still never touch each other's copies (the
    ownership labels differ): the second's would be refused, as in ``same`` mode.
    """
    return re.sub(r"[^a-z0-9]", "", upper_cluster_uid.lower())[:8] or "upper"


@dataclasses.dataclass(frozen=True)
class NamespaceMapping:
    mode: Mode = "same"
    suffix: str = ""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown namespace mapping {self.mode!r}; expected one of {', '.join(MODES)}")
        if self.mode == "suffixed" and (problem := suffix_problem(self.suffix)):
            raise ValueError(f"namespace suffix {problem}")

    @property
    def mapped(self) -> bool:
        return self.mode == "suffixed"

    def lower(self, namespace: str) -> str:
        """The lower namespace of upper ``namespace``."""
        if not self.mapped:
            return namespace
        name = f"{namespace}-{self.suffix}"
        if len(name) <= MAX_NAME:
            return name
        digest = hashlib.sha256(namespace.encode()).hexdigest()[:8]
        keep = MAX_NAME - len(self.suffix) - len(digest) - 2
        return f"{namespace[:keep].rstrip('-')}-{digest}-{self.suffix}"

    def annotations(self, namespace: str) -> dict[str, str]:
        """What a lower object in the lower namespace of ``namespace`` records about it."""
        return {c.UPPER_NAMESPACE_ANNOTATION: namespace} if self.mapped else {}

    def upper(self, lower_obj: JSON) -> str:
        """The upper namespace of a lower object tensile made."""
        meta = lower_obj.get("metadata") or {}
        recorded = (meta.get("annotations") or {}).get(c.UPPER_NAMESPACE_ANNOTATION)
        return str(recorded or meta.get("namespace") or "")

    def upper_of_namespace(self, lower_ns: JSON) -> str:
        """The upper namespace a lower Namespace object stands for."""
        meta = lower_ns.get("metadata") or {}
        recorded = (meta.get("annotations") or {}).get(c.UPPER_NAMESPACE_ANNOTATION)
        return str(recorded or meta.get("name") or "")

    def upper_key(self, lower_obj: JSON) -> str:
        """``namespace/name`` upstairs of a lower object tensile made."""
        return f"{self.upper(lower_obj)}/{(lower_obj.get('metadata') or {}).get('name')}"

    def lower_key(self, upper_key: str) -> str:
        ns, _, name = upper_key.partition("/")
        return f"{self.lower(ns)}/{name}"


#: Today's behaviour: upper ``ns`` is lower ``ns``.
SAME_NAMESPACES = NamespaceMapping()


def mapping(mode: str, suffix: str) -> NamespaceMapping:
    """The mapping for ``--namespace-mapping MODE``; ``ValueError`` for an unknown mode or a bad suffix."""
    if mode == "same":
        return SAME_NAMESPACES
    if mode == "suffixed":
        return NamespaceMapping("suffixed", suffix)
    raise ValueError(f"unknown namespace mapping {mode!r}; expected one of {', '.join(MODES)}")

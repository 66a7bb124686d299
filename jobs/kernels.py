"""Kernel registry services: built-ins from the WASM build, tenant uploads, module bytes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction

from ccgsc_worker.abi import MAX_MODULE_BYTES
from ccgsc_worker.kernel import KernelRejected, validate_module
from jobs.kernel_models import Reducer
from jobs.models import Kernel
from tenants.models import Tenant, User
from tenants.roles import Action
from tenants.services import audit_record, require_role

WASM_BUILD_DIR = Path(settings.BASE_DIR) / "wasm" / "build"
BUILD_MANIFEST = WASM_BUILD_DIR / "manifest.json"


class KernelUnavailable(RuntimeError):
    """The module bytes of a kernel cannot be found or do not match its hash."""


@transaction.atomic
def kernel_sync_builtins() -> list[Kernel]:
    """Register the built-in kernels of the current WASM build (idempotent)."""
    if not BUILD_MANIFEST.exists():
        raise KernelUnavailable("no WASM build found: run `make wasm`")
    manifest = json.loads(BUILD_MANIFEST.read_text())
    kernels = []
    for spec in manifest["kernels"]:
        module = WASM_BUILD_DIR / f"{spec['name']}.wasm"
        data = module.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != spec["sha256"]:
            raise KernelUnavailable(f"{module.name} does not match its manifest: rebuild")
        output = spec.get("output", {})
        defaults = {
            "sha256": digest,
            "size_bytes": len(data),
            "reducer": spec["reducer"],
            "output_bytes": output.get("bytes") if output.get("kind") == "fixed" else None,
            "description": spec.get("description", ""),
            "params_schema": spec.get("params", []),
            "max_range_per_task": int(spec.get("max_range", 1_000_000_000)),
            "work_unit_scale": float(spec.get("work_unit_scale", 1.0)),
            "summary": spec.get("summary", {}),
            "output_layout": output,
            "index_range": spec.get("range", {}),
            "builtin": True,
        }
        # A rebuilt module with the same name and version replaces the old hash.
        Kernel.objects.filter(sha256=digest, tenant=None).exclude(name=spec["name"]).delete()
        kernel, _ = Kernel.objects.update_or_create(
            tenant=None, name=spec["name"], version=spec["version"], defaults=defaults
        )
        kernels.append(kernel)
    return kernels


def kernel_module_bytes(kernel: Kernel) -> bytes:
    """The module of ``kernel``, verified against its hash."""
    if kernel.builtin:
        path = WASM_BUILD_DIR / f"{kernel.name}.wasm"
        data = path.read_bytes() if path.exists() else b""
    else:
        with default_storage.open(kernel.module.name, "rb") as handle:
            data = handle.read()
    if hashlib.sha256(data).hexdigest() != kernel.sha256:
        raise KernelUnavailable(f"module of {kernel} is missing or changed")
    return data


@transaction.atomic
def kernel_upload(
    *,
    tenant: Tenant,
    actor: User | None,
    actor_role: str,
    name: str,
    version: str,
    module: bytes,
    reducer: str,
    output_bytes: int | None = None,
    description: str = "",
    max_range_per_task: int = 100_000_000,
) -> Kernel:
    """Check, hash and store a tenant's own kernel (docs/kernel-abi.md)."""
    require_role(membership_role=actor_role, action=Action.RUN_JOBS)
    if not tenant.policy.custom_kernels:
        raise PermissionDenied(f"Custom kernels are not available on {tenant.policy.label}.")
    if reducer not in Reducer.values:
        raise ValidationError({"reducer": f"Unknown reducer {reducer!r}."})
    if reducer == Reducer.SUM_U64 and (not output_bytes or output_bytes % 8):
        raise ValidationError(
            {"output_bytes": "sum_u64 needs a fixed output length, a multiple of 8."}
        )
    if len(module) > MAX_MODULE_BYTES:
        raise ValidationError({"module": f"Modules are limited to {MAX_MODULE_BYTES} bytes."})
    try:
        validate_module(module, kind="fc")
    except KernelRejected as exc:
        raise ValidationError({"module": str(exc)}) from exc
    digest = hashlib.sha256(module).hexdigest()
    stored = default_storage.save(f"kernels/{digest}.wasm", ContentFile(module))
    try:
        kernel = Kernel.objects.create(
            tenant=tenant,
            name=name,
            version=version,
            sha256=digest,
            size_bytes=len(module),
            reducer=reducer,
            output_bytes=output_bytes,
            description=description,
            max_range_per_task=max_range_per_task,
            module=stored,
        )
    except IntegrityError as exc:
        default_storage.delete(stored)
        raise ValidationError(
            {"module": "You already have this kernel (same name and version, or same module)."}
        ) from exc
    audit_record(
        tenant=tenant,
        actor=actor,
        action="kernel.uploaded",
        target=f"{name} {version}",
        sha256=digest,
    )
    return kernel

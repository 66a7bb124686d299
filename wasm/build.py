#!/usr/bin/env python3
"""Build the built-in WASM kernels into wasm/build/ and write wasm/build/manifest.json.

Each kernel listed in wasm/kernels.json (the ABI v1 ``kernels`` and the ABI v2
``training_kernels``) is compiled from C with the Zig toolchain that is
installed from PyPI (the ``ziglang`` package), so no system compiler is needed. Outputs are
skipped when a stamp over the compiler version, the flags and every source byte is unchanged.
The manifest merges the hand-written kernel descriptions with each module's sha256.

Usage: python wasm/build.py [--force] [--quiet]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

WASM_DIR = Path(__file__).resolve().parent
SRC_DIR = WASM_DIR / "src"
BUILD_DIR = WASM_DIR / "build"
SOURCE_MANIFEST = WASM_DIR / "kernels.json"
BUILD_MANIFEST = BUILD_DIR / "manifest.json"
EDGE_WORKER_DIR = WASM_DIR.parent / "edge_worker"

# Built-in kernels declare a 16 MiB maximum memory and a 256 KiB stack.
CFLAGS = [
    "--target=wasm32-freestanding",
    "-mcpu=generic",
    "-msimd128",
    "-O3",
    "-ffp-contract=off",
    "-fno-fast-math",
    "-nostdlib",
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wl,--no-entry",
    "-Wl,--max-memory=16777216",
    "-Wl,-z,stack-size=262144",
    "-s",
]


def zig_command() -> list[str]:
    """Return the command prefix that runs the PyPI Zig toolchain."""
    return [sys.executable, "-m", "ziglang"]


def zig_version() -> str:
    """Return the Zig toolchain version string."""
    out = subprocess.run([*zig_command(), "version"], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def entry_flags(entry: dict[str, Any]) -> list[str]:
    """Compiler flags of one kernel: the common ones, then its own memory limit if it has one.

    The linker takes the last ``--max-memory``, so a training kernel's larger limit replaces
    the 16 MiB default while the ABI v1 kernels keep exactly the flags they always had.
    """
    memory = entry.get("limits", {}).get("memory_bytes")
    return [*CFLAGS, f"-Wl,--max-memory={memory}"] if memory else list(CFLAGS)


def build_stamp(
    source: Path, compiler: str, flags: list[str] | None = None, extra: tuple[Path, ...] = ()
) -> str:
    """Hash everything that determines a kernel's bytes: compiler, flags and sources."""
    h = hashlib.sha256()
    h.update(compiler.encode())
    h.update("\0".join(CFLAGS if flags is None else flags).encode())
    for path in [source, *extra, *sorted(SRC_DIR.glob("*.h"))]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def load_previous_manifest() -> dict[str, dict[str, Any]]:
    """Return the previous build manifest's kernels by name, or an empty dict."""
    try:
        data = json.loads(BUILD_MANIFEST.read_text())
    except (OSError, ValueError):
        return {}
    entries = [
        *data.get("kernels", []),
        *data.get("training_kernels", []),
        *data.get("analytics_kernels", []),
    ]
    return {k["name"]: k for k in entries if isinstance(k, dict) and "name" in k}


def compile_kernel(source: Path, output: Path, flags: list[str] | None = None) -> None:
    """Compile one C kernel to a .wasm file, replacing the output atomically."""
    env = dict(os.environ)
    env.setdefault("ZIG_GLOBAL_CACHE_DIR", str(BUILD_DIR / ".zig-cache"))
    env.setdefault("ZIG_LOCAL_CACHE_DIR", str(BUILD_DIR / ".zig-cache"))
    fd, tmp_name = tempfile.mkstemp(dir=BUILD_DIR, suffix=".wasm.tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        cflags = CFLAGS if flags is None else flags
        cmd = [*zig_command(), "cc", *cflags, f"-I{SRC_DIR}", "-o", str(tmp), str(source)]
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            raise SystemExit(f"compiling {source.name} failed:\n{result.stderr}")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


def check_module(path: Path) -> None:
    """Run the host's ABI validator over a freshly built module, when it is importable."""
    sys.path.insert(0, str(EDGE_WORKER_DIR))
    try:
        from ccgsc_worker.kernel import validate_module
    except ImportError:  # the host package needs wasmtime; building does not
        return
    finally:
        sys.path.pop(0)
    validate_module(path.read_bytes())


def build(force: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Build every kernel that is out of date and write the build manifest; return it."""
    spec = json.loads(SOURCE_MANIFEST.read_text())
    BUILD_DIR.mkdir(exist_ok=True)
    compiler = f"zig {zig_version()}"
    previous = load_previous_manifest()
    built: dict[str, list[dict[str, Any]]] = {
        "kernels": [],
        "training_kernels": [],
        "analytics_kernels": [],
    }
    for section, entry in [(s, e) for s in built for e in spec.get(s, [])]:
        name = entry["name"]
        source = WASM_DIR / entry["source"]
        output = BUILD_DIR / f"{name}.wasm"
        flags = entry_flags(entry)
        extra = tuple(WASM_DIR / p for p in entry.get("includes", []))
        stamp = build_stamp(source, compiler, flags, extra)
        old = previous.get(name, {})
        fresh = (
            not force
            and output.exists()
            and old.get("build_stamp") == stamp
            and old.get("sha256") == sha256_file(output)
        )
        if fresh:
            if not quiet:
                print(f"{name}: up to date")
        else:
            compile_kernel(source, output, flags)
            check_module(output)
            if not quiet:
                print(f"{name}: built {output.stat().st_size} bytes")
        record = {k: v for k, v in entry.items() if k not in ("source", "includes")}
        record.update(
            file=output.name,
            sha256=sha256_file(output),
            size=output.stat().st_size,
            build_stamp=stamp,
        )
        built[section].append(record)
    manifest = {"abi_version": spec["abi_version"], "compiler": compiler, **built}
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    if not BUILD_MANIFEST.exists() or BUILD_MANIFEST.read_text() != text:
        fd, tmp_name = tempfile.mkstemp(dir=BUILD_DIR, suffix=".json.tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, BUILD_MANIFEST)
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    args = parser.parse_args(argv)
    build(force=args.force, quiet=args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())

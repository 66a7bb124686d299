"""Register the built-in kernels of the current WASM build."""

from django.core.management.base import BaseCommand

from jobs.kernels import kernel_sync_builtins


class Command(BaseCommand):
    help = "Register (or update) the built-in kernels from wasm/build/manifest.json."

    def handle(self, *args: object, **options: object) -> None:
        for kernel in kernel_sync_builtins():
            self.stdout.write(f"kernel {kernel.name} {kernel.version} {kernel.sha256[:12]}…")

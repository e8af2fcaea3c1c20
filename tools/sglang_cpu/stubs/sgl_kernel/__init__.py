"""Import-only stand-in for SGLang's CUDA kernel package on a CPU test machine.

SGLang imports ``sgl_kernel`` at module level even on its CPU engine; nothing here is ever meant to
run. Every top-level attribute resolves and raises when called, so a code path that really needs a
CUDA kernel fails loudly; submodules do not exist, so SGLang's ``try: from sgl_kernel.x import``
fallbacks take their pure-PyTorch branch.
Test tooling only: never on the library's import path.
"""

import sys
import types


def _missing(name: str):
    def kernel(*args, **kwargs):
        raise NotImplementedError(f"sgl_kernel.{name} is a CPU test stub (no CUDA kernels here)")

    kernel.__name__ = name
    return kernel


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _missing(f"{self.__name__}.{name}")


__version__ = "0.0.0+cpu-stub"
sys.modules[__name__].__class__ = _StubModule

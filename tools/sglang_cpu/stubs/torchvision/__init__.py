"""Import-only stand-in for torchvision, which SGLang's multimodal code imports at module level
(the CPU torch build has no matching torchvision). Text models never call it; anything called
raises. Test tooling only: never on the library's import path."""

import enum
import importlib.abc
import importlib.machinery
import sys
import types

__version__ = "0.0.0+cpu-stub"


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def _missing(name: str):
    class Missing:
        def __init__(self, *args, **kwargs):
            raise NotImplementedError(f"{name} is a CPU test stub")

        def __call__(self, *args, **kwargs):
            raise NotImplementedError(f"{name} is a CPU test stub")

    Missing.__name__ = Missing.__qualname__ = name.rsplit(".", 1)[-1]
    return Missing


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "InterpolationMode":
            return InterpolationMode
        return _missing(f"{self.__name__}.{name}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _Finder())
sys.modules[__name__].__class__ = _StubModule

"""LoyaltyLens core: hook specs, contracts, config, plugin resolution and the pipeline.

What a plugin author needs, in one import:

    from loyaltylens_core import PluginSettings, Register, StageContext, contracts, errors, hookimpl

    class MySettings(PluginSettings):         # unknown keys in loyaltylens.toml are errors
        url: str = "http://localhost:8080"

    def build(settings: MySettings, context: StageContext) -> MyRetriever: ...

    @hookimpl
    def register_retrievers(register: Register) -> None:
        register("mine", build, settings=MySettings)
"""

from typing import TYPE_CHECKING, Any

from loyaltylens_core import _legacy
from loyaltylens_core.kernel.hookspecs import hookimpl, hookspec

_legacy.install()  # the 0.1 module paths keep importing for one release

if TYPE_CHECKING:
    from loyaltylens_core.kernel import contracts
    from loyaltylens_core.kernel import errors
    from loyaltylens_core.kernel.context import StageContext
    from loyaltylens_core.kernel.registry import NoSettings, PluginSettings, Register

# Resolved on first use (PEP 562): `loyaltylens --help` must not pay for building the
# pydantic contracts (~140 ms) just because the package was imported.
_LAZY = {
    "contracts": (".kernel.contracts", None), "errors": (".kernel.errors", None),
    "StageContext": (".kernel.context", "StageContext"), "PluginSettings": (".kernel.registry", "PluginSettings"),
    "Register": (".kernel.registry", "Register"), "NoSettings": (".kernel.registry", "NoSettings"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        from ._legacy import MOVED, moved_module

        if name in MOVED:  # `from loyaltylens_core import adapters` (0.1): the new module, with a warning
            return moved_module(name)
        raise AttributeError(f"module 'loyaltylens_core' has no attribute {name!r}")
    import importlib

    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name, __name__)
    return module if attribute is None else getattr(module, attribute)

__all__ = [
    "NoSettings", "PluginSettings", "Register", "StageContext", "contracts", "errors", "hookimpl", "hookspec", "__version__",
]
__version__ = "0.1.0"

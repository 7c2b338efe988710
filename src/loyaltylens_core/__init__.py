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

from .hookspecs import hookimpl, hookspec

if TYPE_CHECKING:
    from . import contracts, errors
    from .context import StageContext
    from .plugins import PluginSettings, Register

# Resolved on first use (PEP 562): `loyaltylens --help` must not pay for building the
# pydantic contracts (~140 ms) just because the package was imported.
_LAZY = {
    "contracts": (".contracts", None), "errors": (".errors", None), "StageContext": (".context", "StageContext"),
    "PluginSettings": (".plugins", "PluginSettings"), "Register": (".plugins", "Register"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'loyaltylens_core' has no attribute {name!r}")
    import importlib

    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name, __name__)
    return module if attribute is None else getattr(module, attribute)

__all__ = [
    "PluginSettings", "Register", "StageContext", "contracts", "errors", "hookimpl", "hookspec", "__version__",
]
__version__ = "0.1.0"

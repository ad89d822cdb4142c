"""Importing the user's own code (`model.module`, `data.factory`): every way it can fail is one line that
names the module, sys.exit() at import included, with a hint when the module sits in the working directory
(which `python -m ray_al` searches and the `ray-al` console script does not)."""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from ray_al.errors import ConfigError


def import_user_module(name: str, key: str, error: type[Exception] = ConfigError) -> ModuleType:
    """Import `name` for config key `key` ("model.module '...'", "data.factory '...'")."""
    try:
        return importlib.import_module(name)
    except SystemExit as e:  # a script's sys.exit() run at import would end ray-al without a word
        raise error(f"{key} cannot be imported: the module called sys.exit({e.code!r}) while being imported") \
            from None
    except Exception as e:  # the user's code: any failure on import is a config problem
        raise error(f"{key} cannot be imported: {type(e).__name__}: {e}{_working_dir_hint(name, e)}") from None


def _working_dir_hint(name: str, e: Exception) -> str:
    top = name.split(".")[0]
    if not isinstance(e, ModuleNotFoundError) or e.name != top:
        return ""
    here = Path.cwd()
    if (here / f"{top}.py").is_file() or (here / top).is_dir():
        return (f" ({top} is in the working directory, which the ray-al command does not search: "
                f"run PYTHONPATH=. ray-al ... or python -m ray_al ...)")
    return ""

"""YAML with a bound on what it may expand to. An alias bomb (`a: &a [x, x]`, `b: &b [*a, *a]`, ...) is a
few hundred bytes that PyYAML loads as shared lists; the first deepcopy, JSON or YAML dump of the config
then expands it without end. The size is counted on the composed node graph, each alias where it is used,
before anything is built."""
from __future__ import annotations

import yaml

from ray_al.errors import ConfigError

MAX_BYTES = 16 * 2**20     # a config file (an embedded dataset would be a mistake anyway)
MAX_VALUES = 200_000       # scalars, lists and mappings, aliases counted where they are used


def load_bounded(text: str, where: str):
    """yaml.safe_load(text), refused in one line when it expands beyond MAX_VALUES."""
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{where}: {len(text):,} characters is more than a config may hold ({MAX_BYTES:,})")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_VALUES:
            raise ConfigError(f"{where}: expands to more than {MAX_VALUES:,} values (aliases repeat what they "
                              f"name): refused")
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None
    finally:
        loader.dispose()


def _expanded_size(node, sizes: dict) -> int:
    """Values `node` stands for once every alias is expanded; capped at MAX_VALUES + 1 (a node that
    holds itself counts as the cap: it expands without end)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    sizes[key] = MAX_VALUES + 1  # while being counted: reached again only through a cycle
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    total = 1
    for child in children:
        total += _expanded_size(child, sizes)
        if total > MAX_VALUES:
            break
    sizes[key] = min(total, MAX_VALUES + 1)
    return sizes[key]

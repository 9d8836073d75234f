"""A small TOML writer for test configs: tables, arrays of tables, str/int/float/bool/list (and path) values."""
import json
import math
import os
import re


def dumps(data):
    """TOML text for a dict; dict values become [tables], lists of dicts [[tables]], None values are left out."""
    lines = []
    _table(lines, data, ())
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_table_array(value):
    return isinstance(value, list) and value and all(isinstance(item, dict) for item in value)


def _table(lines, table, path):
    nested = []
    for key, value in table.items():
        if value is None:
            continue
        if isinstance(value, dict) or _is_table_array(value):
            nested.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in nested:
        header = ".".join(_key(part) for part in path + (key,))
        for item in value if isinstance(value, list) else [value]:
            lines.extend(["", f"[[{header}]]" if isinstance(value, list) else f"[{header}]"])
            _table(lines, item, path + (key,))


def _key(key):
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _string(key)


def _string(text):
    # JSON escapes are valid TOML basic-string escapes; TOML also forbids a raw DEL
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007F")


def _value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, (str, os.PathLike)):
        return _string(os.fspath(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML: {value!r}")

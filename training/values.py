"""How each setting's text is read: booleans, paths, positive numbers, fractions, patch sizes, the void label, ...

Each parser takes the text of an env var or flag and returns the value, or raises ValueError saying what was
expected; its __name__ is what config.py's error calls the kind of value ("not a valid boolean"). No torch.
"""

from __future__ import annotations

from typing import Callable

from utils import UserError

# <name>.int8.onnx beside the export: auto = when held-back images can measure it (export.py --int8, INT8)
INT8_MODES = ("auto", "on", "off")


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


def parse_amp(text: str) -> str | bool:
    """USE_AMP: 'auto', or a boolean (True/False, as the setting was before 'auto' existed)."""
    value = text.strip().lower()
    if value == "auto":
        return "auto"
    try:
        return parse_bool(value)
    except ValueError:
        raise ValueError("expected auto, or one of 1/0, true/false, yes/no, on/off") from None


def parse_optional_path(text: str) -> str | None:
    return None if text.strip().lower() in ("", "none") else text


# What a bad value is reported as not being ("not a valid boolean"), never an internal function name.
parse_bool.__name__ = "boolean"
parse_optional_path.__name__ = "path"
parse_amp.__name__ = "AMP setting"


def positive(kind: Callable) -> Callable:
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise ValueError(f"expected a positive {kind.__name__}")
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def non_negative(kind: Callable) -> Callable:
    def parse(text: str):
        value = kind(text)
        if value < 0:
            raise ValueError(f"expected a {kind.__name__} >= 0")
        return value
    parse.__name__ = f"non-negative {kind.__name__}"
    return parse


def recall_value(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise ValueError("expected a number in (0, 1]")
    return value


recall_value.__name__ = "recall"


def pos_weight_value(text: str) -> str:
    """'' (no weighting), 'auto' (clean / defective images of the training fold) or a positive number."""
    value = text.strip().lower()
    if value in ("", "none", "auto"):
        return "" if value == "none" else value
    if float(value) <= 0:
        raise ValueError("expected '', 'auto' or a positive number")
    return value


pos_weight_value.__name__ = "pos weight"


def parse_patch(text: str) -> str:
    """'' (off) or 'HxW' such as '256x320'; normalised to '<H>x<W>'. Sizes are checked in validate()."""
    text = text.strip().lower()
    if text in ("", "none", "off"):
        return ""
    parts = text.replace("*", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError("expected HxW in pixels such as 256x320, or empty for no patches")
    return f"{int(parts[0])}x{int(parts[1])}"


parse_patch.__name__ = "HxW patch size"


def ignore_value(text: str) -> int | None:
    """IGNORE_INDEX: the void label, 0-255, or none (no pixel is void)."""
    if text.strip().lower() in ("", "none", "off"):
        return None
    return byte_value(text)


ignore_value.__name__ = "void label (0-255 or none)"


def byte_value(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 255:
        raise ValueError("expected an integer from 0 to 255")
    return value


byte_value.__name__ = "grey level (0-255)"


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise ValueError("expected a number strictly between 0 and 1")
    return value


fraction.__name__ = "fraction"


def ema_decay(text: str) -> float:
    """EMA: 0 or off (no average), or a decay in (0, 1) such as 0.999."""
    value = text.strip().lower()
    if value in ("", "0", "off", "none", "false"):
        return 0.0
    return fraction(value)


ema_decay.__name__ = "EMA decay"


def int8_mode(value: str | bool | None) -> str:
    """INT8 / export.py --int8: auto, on or off (True/False: the old on/off switch)."""
    if isinstance(value, bool) or value is None:
        return "on" if value else "off"
    mode = str(value).strip().lower()
    if mode not in INT8_MODES:
        raise UserError(f"--int8 {value!r} is not valid; use one of: {', '.join(INT8_MODES)}")
    return mode

"""Model sizes are data: the DiT presets S, B, L, XL as (hidden_size, depth, num_heads), one line each."""
from __future__ import annotations

DIT_SIZES: dict[str, tuple[int, int, int]] = {
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "XL": (1152, 28, 16),
}


def resolve_size(
    model: str, size: str | None, hidden_size: int | None, depth: int | None, num_heads: int | None
) -> tuple[int, int, int]:
    """(hidden_size, depth, num_heads) from a preset name, explicit values overriding the preset."""
    preset: tuple[int | None, ...] = (None, None, None)
    if size is not None:
        if size.upper() not in DIT_SIZES:
            raise ValueError(f"{model}: unknown size {size!r}; expected one of {', '.join(DIT_SIZES)}")
        preset = DIT_SIZES[size.upper()]
    explicit = (hidden_size, depth, num_heads)
    values = tuple(e if e is not None else p for e, p in zip(explicit, preset))
    missing = [name for name, v in zip(("hidden_size", "depth", "num_heads"), values) if v is None]
    if missing:
        raise ValueError(
            f"{model}: give a size ({', '.join(DIT_SIZES)}) or all of hidden_size, depth, num_heads; "
            f"missing {', '.join(missing)}"
        )
    return values  # type: ignore[return-value]

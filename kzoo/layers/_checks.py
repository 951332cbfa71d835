"""Argument checks shared by the layers (fail early, naming the argument and what is allowed)
and the initializer helpers they share."""

import keras


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return value


def fraction(name: str, value, upper_inclusive: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and (0.0 <= value <= 1.0 if upper_inclusive else 0.0 <= value < 1.0)
    if not ok:
        bound = "[0, 1]" if upper_inclusive else "[0, 1)"
        raise ValueError(f"`{name}` must be a number in {bound}. Received: {name}={value!r}")
    return float(value)


def divisible(name: str, value: int, by_name: str, by: int) -> None:
    if value % by:
        raise ValueError(
            f"`{name}` ({value}) must be divisible by `{by_name}` ({by}). "
            f"Valid `{by_name}` values for {name}={value}: "
            f"{[d for d in range(1, value + 1) if value % d == 0]}"
        )


def one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"Unknown `{name}`: {value!r}. Valid values: {sorted(allowed)}")


def optional_initializer(value):
    """`keras.initializers.get(value)`, keeping None (meaning "use the default one")."""
    return None if value is None else keras.initializers.get(value)


def serialize_optional_initializer(initializer):
    """The `get_config` form of an initializer from `optional_initializer`."""
    return None if initializer is None else keras.initializers.serialize(initializer)


def fresh_initializer(initializer):
    """A copy of `initializer` that draws its own values, for one weight.

    Keras 3 picks an unseeded initializer's seed when the object is made, so one object
    used for several weights gives them all the same draw (every block of a model would
    start as a copy of the first). Copying through the config picks a new seed per weight,
    from Python's `random`, which `keras.utils.set_random_seed` seeds. An explicit integer
    seed is kept: the caller asked for those values.
    """
    if not isinstance(initializer, keras.initializers.Initializer):
        return initializer
    return initializer.__class__.from_config(initializer.get_config())


def built_dense(units: int, input_dim: int, initializer, use_bias: bool, dtype, name: str):
    """A built `Projection` (a `keras.layers.Dense` with factored LoRA) whose kernel is its own
    draw of `initializer`."""
    from kzoo.layers.projection import Projection

    layer = Projection(units, use_bias=use_bias,
                       kernel_initializer=fresh_initializer(initializer), dtype=dtype, name=name)
    layer.build((None, None, input_dim))
    return layer

"""The array zoo: shapes x layouts that every row-normalization test runs over."""
import numpy as np

# (shape, normalized_shape)
SHAPES = [
    ((1,), None),
    ((5, 1), None),
    ((4, 2), None),
    ((3, 7), 7),
    ((3, 768), (768,)),
    ((2, 4097), None),
    ((2, 3, 5), (3, 5)),
    ((2, 3, 4, 7), (4, 7)),
    ((2, 2, 3, 33), None),
    ((0, 8), None),
]

LAYOUTS = ["contiguous", "fortran", "strided_rows", "reversed", "inner_strided", "readonly", "transposed"]


def make(shape, layout, dtype, rng, scale=3.0, offset=1.0):
    """An array of `shape` in `layout` (same values whatever the layout)."""
    base = (rng.standard_normal(shape) * scale + offset).astype(dtype)
    if layout == "contiguous":
        return base
    if layout == "fortran":
        return np.asfortranarray(base)
    if layout == "strided_rows":
        big = np.zeros((2 * shape[0],) + shape[1:], dtype) if shape else base
        big[::2] = base
        return big[::2]
    if layout == "reversed":
        return np.ascontiguousarray(base[::-1])[::-1] if base.ndim else base
    if layout == "inner_strided":
        big = np.zeros(shape[:-1] + (2 * shape[-1],), dtype)
        big[..., ::2] = base
        return big[..., ::2]
    if layout == "readonly":
        a = base.copy()
        a.flags.writeable = False
        return a
    if layout == "transposed":
        return np.ascontiguousarray(base.T).T
    raise ValueError(layout)


def norm_shape_of(shape, normalized_shape):
    """The normalized shape a (shape, normalized_shape) zoo entry stands for."""
    if normalized_shape is None:
        return shape[-1:]
    return (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)

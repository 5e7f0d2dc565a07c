"""Built-in generators; importing this package registers them."""

from synthflow.generators import (
    code_codet,  # noqa: F401, E402
    math_pal,  # noqa: F401
)

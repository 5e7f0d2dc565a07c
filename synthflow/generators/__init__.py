"""Built-in generators; importing this package registers them."""

from synthflow.generators import (  # noqa: F401, E402  # noqa: F401, E402
    agentinstruct,
    code_codet,  # noqa: F401, E402
    math_pal,  # noqa: F401
    math_templates,
    self_instruct,
    skillmix,
)

"""Built-in generators; importing this package registers them."""

from synthflow.generators import (  # noqa: F401
    agentinstruct,
    bonito,
    code_codet,
    ensemble,
    math_pal,
    math_templates,
    self_instruct,
    skillmix,
)

from pydantic import BaseModel, ConfigDict


class Group(BaseModel):
    """One topic of keys; its docstring is the topic's title in `ember train --help`."""
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), coerce_numbers_to_str=True)

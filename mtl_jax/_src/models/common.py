"""The parameter split's names and the option checks shared by the model builders (errors
name ``<module>.<field>``)."""

# The two top-level subtrees of every model's parameters: 'shared' holds the parameters on
# which more than one task's loss depends, 'task' the task-specific ones.
SHARED, TASK = 'shared', 'task'


def check(condition: bool, field: str, message: str, value) -> None:
  """Raises ``ValueError('<module>.<field>: <message>, got <value>')`` unless ``condition``."""
  if not condition:
    raise ValueError(f'{field}: {message}, got {value!r}')


def check_widths(field: str, widths) -> tuple:
  """``widths`` as a tuple of positive ints (else a ``ValueError`` naming ``field``)."""
  widths = tuple(widths)
  check(all(type(w) is int and w > 0 for w in widths), field,
        'must be positive integer widths', widths)
  return widths

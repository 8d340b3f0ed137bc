"""The one error type of pure code: a field, and what is wrong with it."""


class FieldError(ValueError):
    """Bad input: names the field (a dotted path such as ``devices[1].specParams.vram``)."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

"""containerd's rules for object identifiers and labels."""
import re

from .errdefs import q, InvalidArgument

MAX_IDENTIFIER = 76
MAX_LABEL_SIZE = 4096
_IDENTIFIER = re.compile(r"^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$")


def validate(identifier: str) -> None:
    if not identifier:
        raise InvalidArgument("identifier must not be empty: invalid argument")
    if len(identifier) > MAX_IDENTIFIER:
        raise InvalidArgument(f"identifier {q(identifier)} greater than maximum length "
                              f"({MAX_IDENTIFIER} characters): invalid argument")
    if not _IDENTIFIER.match(identifier):
        raise InvalidArgument(f"identifier {q(identifier)} must match {_IDENTIFIER.pattern}"
                              ": invalid argument")


def validate_labels(labels: dict[str, str]) -> None:
    for key, value in labels.items():
        if len(key) + len(value) > MAX_LABEL_SIZE:
            raise InvalidArgument(f"label key and value greater than maximum size "
                                  f"({MAX_LABEL_SIZE} bytes), key: {key[:10]}")

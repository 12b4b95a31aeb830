"""The local stack: real services started and stopped for development and tests (see docs/stack.md)."""

from cqox_platform.stack.config import StackConfig
from cqox_platform.stack.stack import Stack

__all__ = ["Stack", "StackConfig"]

"""Placement strategies for `ftrain.place`: where and how a state trains."""

from ._single import SingleDevice as SingleDevice
from ._single import resolve_device as resolve_device

__all__ = ("SingleDevice", "resolve_device")

"""Placement strategies for `ftrain.place`: where and how a state trains."""

from ._ddp import DDP as DDP
from ._fsdp import FSDP as FSDP
from ._single import SingleDevice as SingleDevice
from ._single import resolve_device as resolve_device
from ._unplaced import Unplaced as Unplaced

__all__ = ("DDP", "FSDP", "SingleDevice", "Unplaced", "resolve_device")

"""The KvStore's settings in ``state.yaml``: in memory, or durable files (the file store)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from state_tasks.adapters.base import StateAdapter
from state_tasks.adapters.file_store import (
    DEFAULT_FILE_PATH,
    DEFAULT_SAVE_INTERVAL_MS,
    FileKvStore,
    FsyncPolicy,
)
from state_tasks.adapters.kv_store import KvStore
from state_tasks.adapters.records import DEFAULT_MAX_OPS
from state_tasks.adapters.settings import AdapterSettings


class KvStoreSettings(AdapterSettings):
    """``modules::state::adapters::KvStore``: :class:`KvStore` (``in_memory``) or
    :class:`FileKvStore` (``file_based``; see its parameters)."""

    kind: ClassVar[str] = "KvStore"
    process_local: ClassVar[bool] = True

    store_method: Literal["in_memory", "file_based"] = "in_memory"
    file_path: str = DEFAULT_FILE_PATH
    save_interval_ms: int = Field(DEFAULT_SAVE_INTERVAL_MS, gt=0)
    fsync: FsyncPolicy = "interval"
    move_corrupt_aside: bool = False
    max_ops: int = Field(DEFAULT_MAX_OPS, gt=0)

    def build(self) -> StateAdapter:
        if self.store_method == "in_memory":
            return KvStore(
                max_value_bytes=self.max_value_bytes,
                op_window_s=self.op_window_s,
                max_ops=self.max_ops,
            )
        return FileKvStore(
            file_path=self.file_path,
            save_interval_ms=self.save_interval_ms,
            fsync=self.fsync,
            move_corrupt_aside=self.move_corrupt_aside,
            max_value_bytes=self.max_value_bytes,
            op_window_s=self.op_window_s,
            max_ops=self.max_ops,
        )

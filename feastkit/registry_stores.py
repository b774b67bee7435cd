"""Feast registry store plugin: Feast's file registry, replaced by rename instead of rewritten in place.

Feast's `FileRegistryStore` commits by opening the registry file with `"wb"` (truncating it) and
then writing the new bytes. A process reading the registry in between (a server refreshing its
cache, a pusher, an Airflow task) parses an empty or partial file as a registry with no views:
pushes fail with "push source not found" or a `KeyError`, and a server caches the empty registry
until its next refresh. This store writes the new registry beside the old one and renames it
over it (`feastkit.atomic.replace_bytes`), so every reader sees one whole committed registry.
Reads, the path rules and teardown are Feast's.

Select it in feature_store.yaml:

    registry:
      registry_type: file
      registry_store_type: feastkit.registry_stores.AtomicFileRegistryStore
      path: data/registry.db
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

from feast.infra.registry.file import FileRegistryStore
from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto
from feast.repo_config import RegistryConfig

from feastkit.atomic import replace_bytes


class AtomicFileRegistryStore(FileRegistryStore):
    """Feast's file registry store whose commits replace the file in one rename."""

    def __init__(self, registry_config: RegistryConfig, repo_path: Path) -> None:
        super().__init__(registry_config, repo_path)
        path = Path(registry_config.path)
        self.registry_file = path if path.is_absolute() else Path(repo_path).joinpath(path)

    def update_registry_proto(self, registry_proto: RegistryProto) -> None:
        """Commit `registry_proto`: stamped as Feast stamps it, then swapped in whole."""
        registry_proto.version_id = str(uuid.uuid4())
        registry_proto.last_updated.FromDatetime(datetime.now(UTC))
        replace_bytes(self.registry_file, registry_proto.SerializeToString())

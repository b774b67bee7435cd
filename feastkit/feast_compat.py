"""The one module that touches Feast's private APIs, checked against the Feast version it was verified on.

feastkit extends Feast through its public extension points (custom offline/online stores and a
compute engine named in feature_store.yaml), but a few things it needs are not published: the
provider behind a FeatureStore, the Redis client and sqlite connection of Feast's online stores,
their key/field/table naming helpers, the duckdb store's source reader and writer, Feast's Arrow
to protobuf conversion, and the compute engine's per-task hook. Every such use goes through a
small named function here, never a `_name` anywhere else, so that:

- moving to another Feast version breaks in exactly one file, and the break is found by
  `tests/unit/test_feast_compat.py`, which checks every function below against the installed
  Feast (the private names exist, their signatures are the ones recorded in `PRIVATE_APIS`, and
  they behave on a tiny real FeatureStore);
- the same test greps the project and fails when another module imports or calls a private
  Feast name, so the rule stays enforced;
- importing this module with a Feast version other than the verified series raises a
  FeastkitError that says what to do, instead of failing somewhere deep inside Feast later.

Feast is imported inside each function: this module is cheap to import, and the Redis helpers
need the `redis` extra only when they are called.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from feastkit.errors import FeastkitError

if TYPE_CHECKING:
    import sqlite3

    import pandas as pd
    import pyarrow as pa
    from feast import FeatureStore, FeatureView, RepoConfig
    from feast.data_source import DataSource
    from feast.infra.compute_engines.dag.context import ExecutionContext
    from feast.infra.provider import Provider
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
    from feast.value_type import ValueType

VERIFIED_VERSION = "0.67.0"
SUPPORTED_SERIES = "0.67"  # patch releases of the verified minor version are accepted

# Version guard ----------------------------------------------------------------------------------


def installed_feast_version() -> str:
    """The installed Feast distribution's version (from its package metadata, without importing Feast)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("feast")
    except PackageNotFoundError:
        raise FeastkitError("Feast is not installed",
                            f"install feastkit with its dependencies: pip install -e . "
                            f"(it pins feast=={VERIFIED_VERSION})") from None


def check_feast_version(installed: str | None = None) -> str:
    """The installed Feast version when it is in the verified series, else a FeastkitError with the fix."""
    installed = installed or installed_feast_version()
    if installed.split(".")[:2] != SUPPORTED_SERIES.split("."):
        raise FeastkitError(
            f"Feast {installed} is installed, but feastkit's use of Feast internals "
            f"(feastkit/feast_compat.py) is verified on Feast {VERIFIED_VERSION} ({SUPPORTED_SERIES}.x)",
            f"install the verified version: pip install 'feast[duckdb,redis]=={VERIFIED_VERSION}' (or "
            f"`pip install -e .`); to move to Feast {installed}, adapt feastkit/feast_compat.py until "
            f"tests/unit/test_feast_compat.py passes, then update VERIFIED_VERSION and pyproject.toml")
    return installed


FEAST_VERSION = check_feast_version()

# What each function relies on: function name -> [(module, qualified name, signature)], the
# signature as inspect renders it without annotations. tests/unit/test_feast_compat.py checks
# every entry against the installed Feast and that every public function here has one.
PRIVATE_APIS: dict[str, list[tuple[str, str, str]]] = {}

F = TypeVar("F", bound=Callable[..., Any])


def _relies_on(*targets: tuple[str, str, str]) -> Callable[[F], F]:
    def record(function: F) -> F:
        PRIVATE_APIS[function.__name__] = list(targets)
        return function
    return record


# FeatureStore -----------------------------------------------------------------------------------


@_relies_on(("feast.feature_store", "FeatureStore.provider", "(self)"))
def provider(store: FeatureStore) -> Provider:
    """The provider behind a FeatureStore (it holds the configured online and offline stores).

    `FeatureStore.provider` is a public property (what the private `_get_provider()` returns);
    what feastkit needs from the provider beyond the Provider interface is below.
    """
    return store.provider


@_relies_on(("feast.feature_store", "FeatureStore.provider", "(self)"),
            ("feast.infra.passthrough_provider", "PassthroughProvider.online_store", "(self)"))
def online_store(store: FeatureStore) -> Any:
    """The online store object a FeatureStore reads and writes through (e.g. feastkit's Redis store)."""
    return store.provider.online_store  # a PassthroughProvider attribute, not Provider API


@_relies_on(("feast.feature_store", "FeatureStore.provider", "(self)"),
            ("feast.infra.passthrough_provider", "PassthroughProvider.offline_store", "(self)"))
def offline_store(store: FeatureStore) -> Any:
    """The offline store object a FeatureStore retrieves through (e.g. feastkit's ASOF DuckDB store)."""
    return store.provider.offline_store  # a PassthroughProvider attribute, not Provider API


# Feast's Redis online store ---------------------------------------------------------------------


@_relies_on(("feast.infra.online_stores.redis", "RedisOnlineStore._get_client", "(self, online_store_config)"))
def redis_client(store: Any, online_store_config: Any) -> Any:
    """The redis-py client a RedisOnlineStore uses (created on first use, then reused)."""
    return store._get_client(online_store_config)


@_relies_on(("feast.infra.online_stores.redis", "_versioned_fv_name", "(table, config)"))
def redis_view_name(view: FeatureView, config: RepoConfig) -> str:
    """The view name Feast's Redis store uses in hash fields (versioned when versioning is on)."""
    from feast.infra.online_stores.redis import _versioned_fv_name

    return _versioned_fv_name(view, config)


@_relies_on(("feast.infra.online_stores.helpers", "_mmh3", "(key)"))
def redis_field(name: str) -> bytes:
    """The hash field of `view:feature` in Feast's Redis layout (4 bytes of murmur3)."""
    from feast.infra.online_stores.helpers import _mmh3

    return _mmh3(name)


@_relies_on(("feast.infra.online_stores.helpers", "_redis_key",
             "(project, entity_key, entity_key_serialization_version=3)"))
def redis_key(project: str, entity_key: EntityKeyProto, entity_key_serialization_version: int = 3) -> bytes:
    """The Redis key of an entity in Feast's layout: serialized entity key + project."""
    from feast.infra.online_stores.helpers import _redis_key

    return _redis_key(project, entity_key, entity_key_serialization_version=entity_key_serialization_version)


@_relies_on(("feast.infra.online_stores.redis", "RedisOnlineStore._generate_redis_keys_for_entities",
             "(self, config, entity_keys)"))
def redis_entity_keys(store: Any, config: RepoConfig, entity_keys: list[EntityKeyProto]) -> list[bytes]:
    """The Redis keys a RedisOnlineStore reads for these entity keys."""
    return store._generate_redis_keys_for_entities(config, entity_keys)


@_relies_on(("feast.infra.online_stores.redis", "RedisOnlineStore._generate_hset_keys_for_features",
             "(self, feature_view, requested_features=None, fv_name_override=None)"))
def redis_hash_fields(store: Any, view: FeatureView, features: list[str],
                      view_name: str) -> tuple[list[str], list[str | bytes]]:
    """(names, hash fields) a RedisOnlineStore reads for these features: the features plus the
    view's `_ts:` field, last. `features` is extended in place (Feast's behaviour): pass a copy."""
    return store._generate_hset_keys_for_features(view, features, fv_name_override=view_name)


@_relies_on(("feast.infra.online_stores.redis", "RedisOnlineStore._read_hash_fields", "(self, config, commands)"))
def redis_read_hash_fields(store: Any, config: RepoConfig,
                           commands: list[tuple[bytes, list[str | bytes]]]) -> list[list[bytes | None]]:
    """One HMGET reply per (key, fields) command, in one round trip (Feast's pipelined read)."""
    return store._read_hash_fields(config, commands)


@_relies_on(("feast.infra.online_stores.redis", "RedisOnlineStore._convert_redis_values_to_protobuf",
             "(self, redis_values, feature_view, requested_features)"))
def redis_values_to_protos(store: Any, replies: Sequence[Sequence[bytes | None]], view_name: str,
                           names: list[str]) -> list[tuple[Any, dict[str, Any] | None]]:
    """HMGET replies as `online_read` returns them: (event time, {feature: ValueProto}) per entity."""
    return store._convert_redis_values_to_protobuf(replies, view_name, names)


# Feast's sqlite online store --------------------------------------------------------------------


@_relies_on(("feast.infra.online_stores.sqlite", "SqliteOnlineStore._get_conn", "(self, config)"))
def sqlite_connection(store: Any, config: RepoConfig) -> sqlite3.Connection:
    """The sqlite connection a SqliteOnlineStore uses (opened on first use, then reused)."""
    return store._get_conn(config)


@_relies_on(("feast.infra.online_stores.sqlite", "_table_id", "(project, table, enable_versioning=False)"))
def sqlite_table_name(project: str, view: FeatureView, enable_versioning: bool = False) -> str:
    """The table a SqliteOnlineStore keeps a view's rows in."""
    from feast.infra.online_stores.sqlite import _table_id

    return _table_id(project, view, enable_versioning)


@_relies_on(("feast.infra.online_stores.sqlite", "_quote_id", "(identifier)"))
def sqlite_quote(identifier: str) -> str:
    """A sqlite identifier quoted the way Feast's sqlite store quotes it."""
    from feast.infra.online_stores.sqlite import _quote_id

    return _quote_id(identifier)


# Feast's registries ------------------------------------------------------------------------------


@_relies_on(("feast.infra.registry.registry", "Registry.refresh", "(self, project=None)"),
            ("feast.infra.registry.registry", "Registry.commit", "(self)"),
            ("feast.infra.registry.sql", "SqlRegistry.apply_feature_view",
             "(self, feature_view, project, commit=True, no_promote=False)"))
def replace_materialization_intervals(store: FeatureStore, intervals: dict[str, list[tuple[Any, Any]]]) -> None:
    """Replace the materialization intervals Feast's registry records for the named views.

    Feast only appends to that list (one entry per `materialize` call, Feast #5800). The SQL
    registry persists a view whose intervals changed through `apply_feature_view`; the file
    registry's `apply_feature_view` keeps the stored intervals of an unchanged view, so there the
    intervals are replaced in its cached registry proto, written back with one `commit()`.
    """
    from feast import FeatureView
    from feast.infra.registry.registry import Registry

    registry, project = store.registry, store.project
    if isinstance(registry, Registry):
        registry.refresh(project)
        protos = registry.cached_registry_proto.feature_views
        for proto in protos:
            if proto.spec.project == project and proto.spec.name in intervals:
                view = FeatureView.from_proto(proto)
                view.materialization_intervals = list(intervals[proto.spec.name])
                proto.meta.ClearField("materialization_intervals")
                proto.meta.materialization_intervals.extend(view.to_proto().meta.materialization_intervals)
        registry.commit()
        return
    for name, items in intervals.items():
        view = registry.get_feature_view(name, project, allow_cache=False)
        view.materialization_intervals = list(items)
        registry.apply_feature_view(view, project, commit=True)


# Repo definitions -------------------------------------------------------------------------------


@_relies_on(("feast.repo_operations", "parse_repo", "(repo_root)"))
def parse_repo_definitions(repo_path: Path) -> Any:
    """A repo's objects read as `feast apply` reads them (Feast's `parse_repo`), without a registry.

    Feast imports each module by a name relative to the working directory and expects the repo on
    sys.path (its CLI sets both up); modules keep plain names (`entities`, `sources`), so modules of
    another repo read earlier in the process are dropped first and this repo's after.
    """
    import contextlib
    import os
    import sys

    from feast.repo_operations import parse_repo

    repo_path = Path(repo_path).resolve()

    def own_modules() -> list[str]:
        return [n for n, m in list(sys.modules.items())
                if (getattr(m, "__file__", None) or "").startswith(str(repo_path) + os.sep)]

    for name in own_modules() + [p.stem for p in repo_path.glob("*.py") if p.stem in sys.modules]:
        sys.modules.pop(name, None)
    sys.path.insert(0, str(repo_path))
    try:
        with contextlib.chdir(repo_path):
            return parse_repo(repo_path)
    finally:
        sys.path.remove(str(repo_path))
        for name in own_modules():
            sys.modules.pop(name, None)


# Feast's duckdb / ibis offline store ------------------------------------------------------------


@_relies_on(("feast.infra.offline_stores.duckdb", "_read_data_source", "(data_source, repo_path)"))
def duckdb_read_source(source: DataSource, repo_path: str) -> Any:
    """An ibis table over a data source, read exactly as Feast's duckdb store reads it."""
    from feast.infra.offline_stores.duckdb import _read_data_source

    return _read_data_source(source, repo_path)


@_relies_on(("feast.infra.offline_stores.duckdb", "_write_data_source",
             "(table, data_source, repo_path, mode='append', allow_overwrite=False)"))
def duckdb_write_source(table: Any, data_source: DataSource, repo_path: str, mode: str = "append",
                        allow_overwrite: bool = False) -> None:
    """Write an Arrow table to a data source as Feast's duckdb store does (its `data_source_writer`)."""
    from feast.infra.offline_stores.duckdb import _write_data_source

    return _write_data_source(table, data_source, repo_path, mode=mode, allow_overwrite=allow_overwrite)


@_relies_on(("feast.infra.offline_stores.ibis", "_get_entity_schema", "(entity_df)"))
def entity_schema(entity_df: pd.DataFrame) -> dict[str, Any]:
    """Column -> dtype of an entity frame, as Feast's ibis stores infer the timestamp column from it."""
    from feast.infra.offline_stores.ibis import _get_entity_schema

    return _get_entity_schema(entity_df)


@_relies_on(("feast.infra.offline_stores.ibis", "_get_entity_df_event_timestamp_range",
             "(entity_df, entity_df_event_timestamp_col)"))
def entity_timestamp_range(entity_df: pd.DataFrame, column: str) -> tuple[Any, Any]:
    """(earliest, latest) entity timestamp, as Feast's ibis stores compute it."""
    from feast.infra.offline_stores.ibis import _get_entity_df_event_timestamp_range

    return _get_entity_df_event_timestamp_range(entity_df, column)


@_relies_on(("feast.infra.offline_stores.ibis", "_to_utc", "(entity_df, event_timestamp_col)"))
def entity_df_to_utc(entity_df: pd.DataFrame, column: str) -> pd.DataFrame:
    """The entity frame with string/object timestamps parsed as UTC, as Feast's ibis stores do (in place)."""
    from feast.infra.offline_stores.ibis import _to_utc

    return _to_utc(entity_df, column)


# Feast's local compute engine -------------------------------------------------------------------


@_relies_on(("feast.utils", "_convert_arrow_to_proto", "(table, feature_view, join_keys)"))
def arrow_to_protos(batch: pa.RecordBatch | pa.Table, view: Any,
                    join_keys: dict[str, ValueType]) -> list[tuple[Any, dict[str, Any], Any, Any]]:
    """Feast's own conversion of an Arrow batch to `online_write_batch` rows (key, values, ts, created)."""
    from feast.utils import _convert_arrow_to_proto

    return _convert_arrow_to_proto(batch, view, join_keys)


@_relies_on(("feast.infra.compute_engines.local.compute", "LocalComputeEngine._get_backend", "(self, context)"))
def compute_backend(engine: Any, context: ExecutionContext) -> Any:
    """The DataFrame backend a LocalComputeEngine runs a task's plan on."""
    return engine._get_backend(context)


class MaterializeTaskHook:
    """Mixin for a Feast ComputeEngine subclass: Feast's `materialize` calls the private per-task hook
    `_materialize_one`, which this routes to `materialize_task(registry, task, **kwargs)`.

    List it before the Feast engine class: `class MyEngine(MaterializeTaskHook, LocalComputeEngine)`.
    """

    def materialize_task(self, registry: Any, task: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def _materialize_one(self, registry: Any, task: Any, **kwargs: Any) -> Any:
        return self.materialize_task(registry, task, **kwargs)


PRIVATE_APIS["MaterializeTaskHook"] = [
    ("feast.infra.compute_engines.base", "ComputeEngine._materialize_one", "(self, registry, task, **kwargs)"),
    ("feast.infra.compute_engines.local.compute", "LocalComputeEngine._materialize_one",
     "(self, registry, task, **kwargs)"),
]

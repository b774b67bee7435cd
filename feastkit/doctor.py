"""Health checks for an installation: configuration, registry, online store, model bundles."""

from __future__ import annotations

from feastkit.errors import FeastkitError, explain, one_line
from feastkit.settings import Settings


def _reason(exc: BaseException) -> str:
    """One line for a failed check: the explained problem and fix, else the exception's type and text."""
    found = explain(exc)
    if found is not None:
        problem, fix = found
        return one_line(f"{problem} — {fix}" if fix else problem)
    return one_line(f"{type(exc).__name__}: {exc}", 300)


def run_checks(settings: Settings) -> list[tuple[str, bool, str]]:
    """(check, passed, detail) for each part a deployment needs."""
    results: list[tuple[str, bool, str]] = []
    try:
        results.append(("profile", True, f"{settings.profile} -> {settings.feature_store_yaml}"))
    except FeastkitError as exc:
        return [("profile", False, _reason(exc))]
    results.append(("data", settings.features_dir.is_dir(),
                     str(settings.features_dir) if settings.features_dir.is_dir()
                     else f"no feature tables in {settings.features_dir}: run `feastkit compute`"))
    try:
        from feastkit.store import open_store, require_applied

        store = open_store(settings)
        require_applied(store)
        results.append(("registry", True, f"{len(store.list_feature_views())} feature views, "
                                           f"{len(store.list_feature_services())} feature services"))
    except Exception as exc:  # noqa: BLE001 (a down registry database is a failed check, not a crash)
        return [*results, ("registry", False, _reason(exc))]
    from feastkit.bundle import current_bundle
    from feastkit.recipes import trainable_services
    from serving.features import OnlineStoreUnavailable, ServiceReader

    services = settings.service_list or trainable_services(store)
    for service in services:
        try:
            bundle = current_bundle(settings.models_dir, service)
            bundle.check_against(store)
            results.append((f"model {service}", True, f"version {bundle.version}, fingerprint matches"))
        except FeastkitError as exc:
            results.append((f"model {service}", False, _reason(exc)))
    try:
        if not services:
            raise FeastkitError("no feature service names a label recipe", "tag one with model=fraud|churn")
        ServiceReader.build(store, services[0]).ping()
        results.append(("online store", True, type(store.config.online_store).__name__))
    except (OnlineStoreUnavailable, Exception) as exc:
        results.append(("online store", False, _reason(exc)))
    return results

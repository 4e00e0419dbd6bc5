"""`orchestrate store ...`: see and manage the image store (managed images, galleries, image
definitions, versions). Objects are named by their Azure-shaped resource IDs; `--json`
everywhere. A delete is refused while a running build uses the object (naming the run), and a
definition or gallery that still holds versions is deleted only with --force."""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

from orchestrator.config import Config
from orchestrator.core.resource_ids import parse
from orchestrator.errors import UsageError

KINDS = {"images": "ManagedImage", "galleries": "Gallery", "definitions": "ImageDefinition",
         "versions": "ImageVersion"}


def add_parsers(sub: Any) -> None:
    store = sub.add_parser("store", help="see and manage managed images and galleries (libvirt storage pools)")
    store.set_defaults(handler=cmd_store)
    actions = store.add_subparsers(dest="store_command", metavar="ACTION", parser_class=sub._parser_class)
    actions.required = True
    lst = actions.add_parser("list", help="list managed images, galleries, definitions and versions")
    lst.add_argument("kind", nargs="?", choices=sorted(KINDS), help="only this kind")
    lst.add_argument("--all", action="store_true", help="also what is being created or was left unfinished")
    show = actions.add_parser("show", help="show one object by its resource ID")
    show.add_argument("resource_id")
    delete = actions.add_parser("delete", help="delete an object (its volumes in every pool)")
    delete.add_argument("resource_id")
    delete.add_argument("--force", action="store_true", help="also delete the versions of a definition or gallery")
    actions.add_parser("sweep", help="remove what killed or crashed runs left unfinished")
    actions.add_parser("init", help="create the storage pools the configuration names (scripts/setup-host.sh runs it)")
    for action in (lst, show, delete, *[actions.choices[n] for n in ("sweep", "init")]):
        action.add_argument("--json", action="store_true", help="machine-readable output")


def _emit(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _stamp(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def shown(obj: dict[str, Any]) -> dict[str, Any]:
    """A store object as `store show --json` prints it."""
    return {"id": obj["resource_id"], "type": obj["kind"], "version": obj["version"],
            "provisioningState": obj["state"], "runId": obj["run_id"], "runOutputName": obj["run_output"],
            "source": obj["source"], "sha256": obj["sha256"], "sizeBytes": obj["virtual_size"],
            "fileBytes": obj["size"], "location": obj["location"], "excludeFromLatest": obj["exclude_from_latest"],
            "storageAccountType": obj["storage_account_type"], "tags": obj["tags"],
            "createdTime": _stamp(obj["created_at"]), "finishedTime": _stamp(obj["finished_at"]),
            "replicas": [{"region": v.region, "pool": v.pool, "volume": v.volume, "path": v.path,
                          "replicaCount": v.replica_count, "storageAccountType": v.storage_account_type}
                         for v in obj["volumes"]]}


def _stores(config: Config, write: bool):
    from orchestrator.effects.state import StateStore
    from orchestrator.effects.store_state import StoreState

    if write:
        state = StateStore.for_config(config.ensure())
    else:
        state = StateStore.for_config(config, read_only=True)
        if state is None:
            return None, None
    return state, StoreState(state)


def cmd_store(args: argparse.Namespace, config: Config) -> int:
    return {"list": _list, "show": _show, "delete": _delete, "sweep": _sweep, "init": _init}[args.store_command](
        args, config)


def _list(args: argparse.Namespace, config: Config) -> int:
    state, store = _stores(config, write=False)
    rows: list[dict[str, Any]] = []
    if store is not None:
        wanted = KINDS.get(args.kind) if args.kind else None
        for container in store.containers():
            if wanted in (None, container["kind"]):
                rows.append({"id": container["resource_id"], "type": container["kind"],
                             "createdTime": _stamp(container["created_at"])})
        for obj in store.objects(None, states=None if args.all else ("Succeeded",)):
            if wanted in (None, obj["kind"]):
                rows.append(shown(obj))
    if args.json:
        _emit(rows)
        return 0
    for row in rows:
        extra = "" if row["type"] in ("Gallery", "ImageDefinition") else (
            f"  {row['provisioningState']}  {row['sizeBytes'] // 2**20 if row['sizeBytes'] else '?'} MiB  "
            f"{', '.join(r['region'] + ':' + r['pool'] for r in row['replicas'])}"
            + ("  excludeFromLatest" if row.get("excludeFromLatest") else ""))
        print(f"{row['type']:16} {row['id']}{extra}")
    return 0


def _find(store, resource_id: str) -> tuple[Any, dict[str, Any] | None, dict[str, Any] | None]:
    rid = parse(resource_id)
    if rid is None or rid.version == "latest":
        raise UsageError(f"`{resource_id}` is not a managed image, gallery, definition or version resource ID",
                         hint="`orchestrate store list` shows them")
    obj = store.get(rid.key) if store is not None else None
    container = store.container(rid.key) if store is not None and obj is None else None
    if obj is None and container is None:
        raise UsageError(f"{resource_id} is not in the image store", hint="`orchestrate store list` shows it")
    return rid, obj, container


def _show(args: argparse.Namespace, config: Config) -> int:
    state, store = _stores(config, write=False)
    rid, obj, container = _find(store, args.resource_id)
    if obj is not None:
        data = shown(obj)
    else:
        children = [shown(o) for o in store.objects() if o["key"].startswith(rid.key + "/")]
        data = {"id": container["resource_id"], "type": container["kind"],
                "createdTime": _stamp(container["created_at"]), "children": children}
    if args.json:
        _emit(data)
    else:
        for key, value in data.items():
            print(f"{key}: {value}")
    return 0


def _refuse_if_used(store, state, rid_key: str, resource_id: str) -> None:
    from orchestrator.distribute.publish import run_alive

    for use in store.users(rid_key):
        if run_alive(state.run(use["id"])):
            raise UsageError(f"{resource_id} is in use by run {use['id']} (its {use['role']}), which is running",
                             hint=f"wait for it, or `orchestrate cancel {use['id']}`, then delete again")


def _delete(args: argparse.Namespace, config: Config) -> int:
    from orchestrator.distribute.publish import delete

    state, store = _stores(config, write=True)
    rid, obj, container = _find(store, args.resource_id)
    _refuse_if_used(store, state, rid.key, args.resource_id)
    targets = [obj] if obj is not None else [o for o in store.objects() if o["key"].startswith(rid.key + "/")]
    if obj is None and targets and not args.force:
        raise UsageError(f"{container['resource_id']} holds {len(targets)} version(s)",
                         hint="delete them first, or pass --force to delete them with it")
    if obj is not None and obj["state"] == "Creating":
        raise UsageError(f"{args.resource_id} is still being created by run {obj['run_id']}",
                         hint="wait for the run; `orchestrate store sweep` removes what dead runs left")
    for target in targets:
        delete(config, state, target)
    if container is not None:
        store.forget_container(rid.key)
    deleted = [t["resource_id"] for t in targets] + ([container["resource_id"]] if container else [])
    if args.json:
        _emit({"ok": True, "deleted": deleted})
    else:
        for item in deleted:
            print(f"deleted {item}")
    return 0


def _sweep(args: argparse.Namespace, config: Config) -> int:
    from orchestrator.distribute.publish import sweep

    state, _ = _stores(config, write=True)
    swept = sweep(config, state)
    if args.json:
        _emit({"ok": True, "swept": swept})
    else:
        print("\n".join(f"removed {s}" for s in swept) or "nothing to sweep")
    return 0


def _init(args: argparse.Namespace, config: Config) -> int:
    from orchestrator.distribute.publish import connect

    pools = sorted({p for _, p in config.pool_regions} | ({config.pool_default} if config.pool_default else set()))
    made = []
    with connect(config) as lv:
        for name in pools:
            pool = lv.pool(name, create_in=config.pool_directory)
            made.append({"pool": name, "path": str(lv.pool_dir(pool))})
    if args.json:
        _emit({"ok": True, "uri": config.libvirt_uri, "pools": made})
    else:
        for item in made:
            print(f"pool {item['pool']}: {item['path']} ({config.libvirt_uri})")
    return 0

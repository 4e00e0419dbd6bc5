"""`orchestrate verify ARTIFACT` and `orchestrate keys init|show`: the provenance of artifacts.

Every artifact a run distributes gets a signed in-toto statement (SLSA provenance v1) made
with this host's key (pipeline/attest.py). `verify` checks one: exit 0 when its signature
verifies and the artifact's sha256 is the one signed; 10 when the artifact or the statement
was changed (or another key signed it), 11 when no statement is found, 2 when the artifact
cannot be read, 6 when there is no key to verify with.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from orchestrator.config import Config
from orchestrator.errors import SigningKeyProblem


def add_parsers(sub: Any) -> None:
    verify = sub.add_parser("verify", help="check an artifact against its signed provenance statement",
                            description="check an artifact (a VHD, a pool volume file, or a managed image / gallery "
                                        "version resource ID) against its signed provenance statement")
    verify.add_argument("artifact", metavar="ARTIFACT", help="a file path, or a run output's resource ID")
    verify.add_argument("--statement", metavar="FILE",
                        help="the statement (default: ARTIFACT.intoto.json beside it, or the one its run recorded)")
    verify.add_argument("--key", metavar="FILE",
                        help="the signer's public key, PEM (default: this host's key; `keys show` prints it)")
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.set_defaults(handler=cmd_verify)

    keys = sub.add_parser("keys", help="this host's provenance signing key: init, show")
    keys.set_defaults(handler=cmd_keys)
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", parser_class=sub._parser_class)
    actions.required = True
    init = actions.add_parser("init", help="make the signing key if there is none (scripts/setup-host.sh runs it)")
    show = actions.add_parser("show", help="print the public key (to verify this host's statements elsewhere)")
    for action in (init, show):
        action.add_argument("--json", action="store_true", help="machine-readable output")


def _emit(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def cmd_verify(args: argparse.Namespace, config: Config) -> int:
    from orchestrator.service.verify import verify_artifact

    result = verify_artifact(config, args.artifact, args.statement, args.key)
    if args.json:
        _emit(result.as_dict())
        return 0
    facts = result.facts
    print(f"verified {result.artifact}")
    for path in result.files:
        if path != result.artifact:
            print(f"  file:      {path}")
    print(f"  sha256:    {result.sha256}")
    print(f"  statement: {result.statement_path} (found by {result.found_by}), signed by key {result.keyid}")
    print(f"  built by:  run {facts.run_id} of template {facts.template_name!r} (sha256 {facts.template_sha256}), "
          f"output {facts.run_output_name!r}, {facts.builder_id}, {facts.started} - {facts.finished}")
    print(f"  materials: {len(facts.materials)} (source image and downloaded files; `--json` lists them)")
    return 0


def cmd_keys(args: argparse.Namespace, config: Config) -> int:
    from orchestrator.effects.signing import ensure_key, host_public_key, key_paths, public_pem

    private_path, public_path = key_paths(config)
    if args.keys_command == "init":
        made_key, made = ensure_key(config.ensure())
        key = made_key.public
    else:
        found = host_public_key(config)
        if found is None:
            raise SigningKeyProblem(f"this host has no provenance key yet ({private_path.parent})",
                                    hint="`orchestrate keys init` makes it (the first build makes it too)")
        key, made = found, False
    pem = public_pem(key)
    if args.json:
        data = {"ok": True, "keyid": key.keyid, "keytype": key.keytype, "scheme": key.scheme,
                "publicKey": str(public_path), "publicKeyPem": pem}
        if args.keys_command == "init":
            data.update(created=made, privateKey=str(private_path))
        _emit(data)
    elif args.keys_command == "init":
        print(f"provenance key {key.keyid} ({key.scheme}): {'made' if made else 'already there'}; "
              f"{private_path} (owner-only), public key {public_path}")
    else:  # stdout is the PEM alone (`keys show > host.pub`); what it is goes to stderr
        print(f"keyid {key.keyid} ({key.scheme}); elsewhere: orchestrate verify ARTIFACT --key FILE", file=sys.stderr)
        print(pem, end="")
    return 0

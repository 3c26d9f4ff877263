"""The `modelseal` command line: flags (each also from MODELSEAL_<FLAG>), and the
one place where errors become exit codes, log lines and the termination message.

Flag values are read by one rule each, whether they come from the command
line or the environment: every numeric flag by its bounds.Number (finite,
in range), every flag that asks for a check (_CHECKS) never empty. Both run
inside main's error handling, so a bad value is one JSON line, the
termination message and exit 2, like any other usage error.

SIGTERM (what the kubelet sends) and SIGINT stop a stage the way an error
does: errors.Stopped unwinds it, so what it had begun to write goes, then
one line is logged and the process exits 143 or 130 (signals.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from . import bounds, buildinfo, stages, usage
from .completion import SHELLS
from .connection import Connection
from .errors import Stopped, StoppedError, UsageError, classify
from .log import Log, write_termination
from .options import (
    FORMATS,
    Decryption,
    Guards,
    KeySpec,
    Output,
    Rewrapping,
    Sealing,
    SourceSpec,
    Unwrapping,
)
from .signals import StopSignals


def _env_name(dest: str) -> str:
    return "MODELSEAL_" + dest.upper()


def _flag(p: argparse.ArgumentParser | argparse._ArgumentGroup, *names: str, **kw: Any) -> None:
    """Add a flag whose default comes from its environment variable, for pod specs."""
    dest = kw.get("dest") or next((n for n in names if n.startswith("--")), names[0]).lstrip("-").replace("-", "_")
    env = _env_name(dest)
    value = os.environ.get(env)
    kw["help"] = f"{kw.get('help', '')} [${env}]".strip()
    if kw.get("action") == "store_true":
        kw["default"] = value is not None and value.strip().lower() in ("1", "true", "yes", "on")
    elif kw.get("action") == "append":  # repeatable: the variable holds one value a line, or (one line) a word
        kw["default"] = [] if value is None else [v.strip() for v in value.splitlines() if v.strip()] \
            if "\n" in value.strip() else value.split()
        kw["help"] = f"{kw['help']} (in ${env}: one a line, or separated by spaces on one line)"
    elif value is not None:
        kw["default"] = value
        if names[0].startswith("-"):
            kw["required"] = False
        else:
            kw["nargs"] = "?"
    p.add_argument(*names, **kw)


#: Every numeric flag and its rule: the connection settings' come with Connection (a URI query sets them too).
_NUMBERS: dict[str, bounds.Number] = {
    **{f.name: f.metadata["number"] for f in fields(Connection) if "number" in f.metadata},
    "max_bytes": bounds.MAX_BYTES, "max_files": bounds.MAX_FILES, "max_file_size": bounds.MAX_FILE_SIZE,
    "max_ratio": bounds.MAX_RATIO, "workers": bounds.WORKERS,
}
#: Flags that ask for a check, naming what it compares against (a signer's key, a root, a digest, a
#: CA): given empty (an unset template variable), they would turn the check off without a word.
_CHECKS = ("verify_key", "verify_certificate", "signature", "sha256", *Connection.checks())


def _named(dest: str, argv: list[str]) -> str:
    """How the user set a flag: --the-flag, or its environment variable when the command line has no such flag."""
    flag = "--" + dest.replace("_", "-")
    if any(a == flag or a.startswith(flag + "=") for a in argv) or _env_name(dest) not in os.environ:
        return flag
    return "$" + _env_name(dest)


def _read_values(a: argparse.Namespace, argv: list[str]) -> None:
    """Apply the two rules (module docstring) to every flag this command has."""
    for dest in _CHECKS:
        value = getattr(a, dest, None)
        if value is not None and not str(value).strip():
            raise UsageError(f"{_named(dest, argv)} is empty, which would turn its check off: give a value, "
                             "or leave the flag out")
    for dest, rule in _NUMBERS.items():
        value = getattr(a, dest, None)
        if value is not None:
            setattr(a, dest, rule.parse(value, _named(dest, argv)))
            a.given_as = {**getattr(a, "given_as", {}), dest: _named(dest, argv)}  # for limit messages


if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from .signing import StreamVerifier
    from .unpack import Limits

_Group = TypeVar("_Group", bound="DataclassInstance")


def _build(group: type[_Group], a: argparse.Namespace, **built: Any) -> _Group:
    """One of options.py's groups from the parsed flags: each field from the flag of its name (a field
    this command has no flag for keeps its default), or from `built` when the CLI makes the value."""
    given = {f.name: getattr(a, f.name) for f in fields(group) if hasattr(a, f.name)}
    return group(**{**given, **built})


def _connection(p: argparse.ArgumentParser, title: str = "connection (also as URI query parameters)") -> None:
    g = p.add_argument_group(title)
    _flag(g, "--timeout", default=30.0, help="seconds for each network call")
    _flag(g, "--ca", help="CA bundle for TLS")
    _flag(g, "--cert", help="client certificate (PEM)")
    _flag(g, "--cert-key", help="client certificate key (PEM), when separate")
    _flag(g, "--token-file", help="bearer token file (HTTPS, Vault)")
    _flag(g, "--endpoint-url", help="S3/KMS-compatible endpoint")
    _flag(g, "--allow-http", action="store_true", help="allow plain http:// (warned)")
    _flag(g, "--retries", default=6, help="attempts on transient errors")
    _flag(g, "--concurrency", default=4, help="parallel ranged reads (S3: each holds one part, 8 MiB)")
    _flag(g, "--cdh-url", default="http://127.0.0.1:8006", help="Confidential Data Hub for kbs:///")
    _flag(g, "--role", help="Vault Kubernetes-auth role")


def _connection_of(a: argparse.Namespace) -> Connection:
    return _build(Connection, a)


_KEY_URIS = ("key URI: file://, env:, https://, aws-kms://, secretsmanager://, gcp-kms://, azure-kv://, "
             "azure-skr://, vault://, vault-transit://, kbs:///")
_SOURCES = "s3://, gs://, azblob://, https://, oci://, file:// or -"


def _keys(p: argparse.ArgumentParser, formats: bool = False) -> None:
    """--key and --key-uri; `formats`: the command reads --format (decrypt, run), so --key's help names it."""
    _flag(p, "--key", help="key file (32 raw bytes; a Tink keyset or raw key with --format tink; "
                            "a passphrase file with --format openpgp)" if formats else
          "key file: the 32-byte data key (raw, base64 or hex), as keygen writes it")
    _flag(p, "--key-uri", help=_KEY_URIS)


_IDENTITY = ("an age identity (AGE-SECRET-KEY-1..., age-keygen's file) from a key URI: file://, env:, kbs:///, "
             "vault://, secretsmanager://, ...; opens a version 2 .seal it is a recipient of")
_RECIPIENT = ("a recipient of the new file's data key (repeatable): an age public key age1..., or a key URI "
              "(aws-kms://, vault-transit://, gcp-kms://, azure-kv://, azure-skr://: the service wraps it; "
              "any other: a 32-byte key, as --key)")


def _identity(p: argparse.ArgumentParser) -> None:
    _flag(p, "--identity", metavar="URI", help=_IDENTITY)


def _keyspec(a: argparse.Namespace) -> KeySpec:
    return _build(KeySpec, a, key_file=a.key)


def _format(p: argparse.ArgumentParser) -> None:
    _flag(p, "--format", choices=FORMATS, default="seal", help="input format")
    _flag(p, "--associated-data", default="", help="associated data for --format tink (text)")
    _flag(p, "--associated-data-hex", default="", help="associated data for --format tink (hex)")
    _flag(p, "--tink-template", default="AES256_GCM_HKDF_1MB", help="parameters for a raw Tink key")
    _flag(p, "--workers", default="auto", help="processes decrypting segments in parallel (1: in this process; "
                                             "auto: from the CPU affinity and the cgroup CPU quota)")


def _decryption(a: argparse.Namespace) -> Decryption:
    return _build(Decryption, a, associated_data=_aad(a), workers=_workers(a))


def _aad(a: argparse.Namespace) -> bytes:
    if a.associated_data and a.associated_data_hex:
        raise UsageError("give --associated-data or --associated-data-hex, not both")
    try:
        return bytes.fromhex(a.associated_data_hex) if a.associated_data_hex else a.associated_data.encode()
    except ValueError:
        raise UsageError("--associated-data-hex is not valid hex") from None


def _limit_default(limit: str, header: str) -> str:
    """The help text's default of an unpack limit: the header's sizes, else the fixed value (unpack/limits.py)."""
    from .unpack.limits import shown

    fixed = shown(limit, bounds.UNPACK_DEFAULTS[limit])
    return f"(default: {header}; {fixed} for input without sizes in a .seal header)"


def _limits(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("unpack limits (counted on the stream; a .seal header's sizes are the limits, "
                             "a limit given below them is refused before the first byte)")
    _flag(g, "--max-bytes", help="total bytes of files extracted, e.g. 200G "
          + _limit_default("max_bytes", "the files' total the header declares"))
    _flag(g, "--max-files", help="number of entries "
          + _limit_default("max_files", "what the header's tar size can hold"))
    _flag(g, "--max-file-size", help="bytes in one file, e.g. 64G "
          + _limit_default("max_file_size", "the files' total the header declares"))
    _flag(g, "--max-ratio", help="decompressed / compressed bytes "
          + _limit_default("max_ratio", "off, the header's tar size bounds the stream"))
    _flag(g, "--allow-symlinks", action="store_true", help="extract symlinks that stay inside the target")


def _limits_of(a: argparse.Namespace) -> Limits:
    from .unpack import Limits

    # _read_values has read these (command line or $MODELSEAL_*) by their bounds.Number rules.
    given = {k: getattr(a, k) for k in ("max_bytes", "max_files", "max_file_size", "max_ratio")}
    named = getattr(a, "given_as", {})
    return Limits(**{k: v for k, v in given.items() if v is not None},
                  named={k: named[k] for k in given if k in named})


def _verify(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("signature (OpenSSF model signing, checked in the stream before the rename)")
    _flag(g, "--verify-key", metavar="PEM", help="verify with this EC public key (model_signing's key method)")
    _flag(g, "--verify-certificate", metavar="PEM", help="verify a certificate-signed model: the signing "
          "certificate must chain to a root in this PEM file (model_signing's certificate method)")
    _flag(g, "--signature", metavar="PATH", help="the Sigstore bundle: a path inside the model (default "
          "model.sig) or an absolute path to a separate file")


def _verifier(a: argparse.Namespace, log: Log) -> StreamVerifier | None:
    if not (a.verify_key or a.verify_certificate or a.signature):
        return None  # no signature asked for: spare every run the x509 imports (~60 ms)
    from . import signing

    return signing.verifier(a.verify_key, a.verify_certificate, a.signature, log)


def _guards(a: argparse.Namespace, log: Log) -> Guards:
    """The guards of a writing stage; the unpack limits and the verifier only where the command has their flags."""
    built: dict[str, Any] = {"preflight": not getattr(a, "no_preflight", False)}
    if hasattr(a, "max_bytes"):
        built["limits"] = _limits_of(a)
    if hasattr(a, "verify_key"):
        built["verify"] = _verifier(a, log)
    return _build(Guards, a, **built)


def _output(a: argparse.Namespace) -> Output:
    return _build(Output, a, path=a.output)


def _allow_disk(p: argparse.ArgumentParser) -> None:
    _flag(p, "--allow-disk", action="store_true", help="allow plaintext on a non-memory filesystem (logged)")


def _preflight(p: argparse.ArgumentParser) -> None:
    _flag(p, "--no-preflight", action="store_true", help="do not check room on the target and under the memory "
                                                         "limit before writing (logged)")


def _logging(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    _flag(g, "--log-format", choices=LOG_FORMATS, default="auto", help="text: short lines and a progress bar, for a "
          "person; json: one JSON object per line (the documented format); auto: text when stderr is a terminal, "
          "else json")
    _flag(g, "-q", "--quiet", action="store_true", help="log errors only")


#: --log-format's values (auto: text on a terminal, JSON elsewhere, so pods keep their JSON).
LOG_FORMATS = ("auto", "text", "json")


def _force(p: argparse.ArgumentParser) -> None:
    _flag(p, "--force", action="store_true", help="replace an existing local output file (s3://, gs://, azblob:// "
          "and oci:// outputs are replaced as their stores do: version them, or pin with --sha256)")


class _Version(argparse.Action):
    """--version, asked only when given: finding the commit may run git, which no stage should wait for."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kw: Any) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, **kw)

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option_string: Any = None) -> None:
        print(buildinfo.version_line())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = usage.Parser(prog="modelseal", description="Deliver encrypted models into pods; "
                          "plaintext only ever on tmpfs.")
    parser.add_argument("--version", action=_Version, help="print the version and the commit it was built from")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        _logging(p)
        return p

    p = command("keygen", _keygen, "write a new random 32-byte data key (mode 0400)")
    _flag(p, "-o", "--output", required=True, help="key file to create")

    p = command("seal", _seal, "tar (optionally compress) and encrypt a model into one .seal")
    _flag(p, "src", metavar="SRC", help="model directory or file; - for stdin")
    _flag(p, "-o", "--output", required=True, help="OUT.seal, - for stdout, s3://BUCKET/KEY, gs://BUCKET/OBJECT, "
          "azblob://ACCOUNT/CONTAINER/BLOB or oci://REGISTRY/REPO:TAG")
    _keys(p)
    _flag(p, "--recipient", action="append", metavar="R", help=_RECIPIENT)
    _flag(p, "--name", help="model name recorded in the header (default: SRC's name)")
    _flag(p, "--model-version", default="", help="model version recorded in the header")
    _flag(p, "--compress", choices=("none", "gzip", "zstd"), default="none", help="compression inside the seal")
    _flag(p, "--sign-key", metavar="PEM", help="sign the model directory with this EC private key "
          "(OpenSSF model signing); adds model.sig to the archive")
    _flag(p, "--follow-external-symlinks", action="store_true", help="seal what symlinks that leave SRC point "
          "to (refused by default: a link to /etc/passwd would be shipped)")
    _force(p)
    _connection(p)

    p = command("convert", _convert, "re-encrypt an OpenPGP (gpg -c) file into a .seal in one pass")
    _flag(p, "input", metavar="IN", help="model.tar.gpg, or - for stdin")
    _flag(p, "-o", "--output", required=True, help="OUT.seal, - for stdout, s3://BUCKET/KEY, gs://BUCKET/OBJECT, "
          "azblob://ACCOUNT/CONTAINER/BLOB or oci://REGISTRY/REPO:TAG")
    _flag(p, "--passphrase-file", required=True, help="the gpg passphrase (first line)")
    _keys(p)
    _flag(p, "--recipient", action="append", metavar="R", help=_RECIPIENT)
    _flag(p, "--name", help="model name recorded in the header")
    _flag(p, "--model-version", default="", help="model version recorded in the header")
    _force(p)
    _connection(p)

    p = command("inspect", _inspect, "print a .seal header as JSON (no key needed)")
    _flag(p, "file", metavar="FILE", help=".seal file or source URI (" + _SOURCES + "): reads the header only")
    _flag(p, "--resources", action="store_true", help="print the pod resources and emptyDir sizeLimits this "
                                                      "model needs, four-stage and single-stage")
    _flag(p, "-o", "--output-format", choices=("yaml", "patch", "json"), default="yaml", help="--resources as "
          "commented YAML, a strategic-merge patch for the single-stage pod or Deployment (kubectl patch, "
          "kustomize), or JSON")
    _flag(p, "--kind", choices=("Deployment", "Pod"), default="Deployment", help="what the patch applies to")
    _flag(p, "--workload", metavar="NAME", help="the Deployment's or Pod's name, written into the patch (kustomize "
          "finds its target by it; kubectl patch names it on its command line)")
    _connection(p)

    p = command("fetch-key", _fetch_key, "fetch or unwrap the data key onto tmpfs (mode 0400)")
    _flag(p, "--key-uri", help=_KEY_URIS)
    _identity(p)
    _flag(p, "-o", "--output", required=True, help="key file to write (with --identity, or a key service and a "
          ".seal header: the file's data key, which decrypt --key takes)")
    _flag(p, "--wrapped-from", help="local .seal whose header carries the wrapped key")
    _flag(p, "--source", help="model source whose header carries the wrapped key (a ranged read)")
    _flag(p, "--passphrase", action="store_true", help="a secret of any length (an OpenPGP passphrase), "
                                                        "not a 32-byte data key")
    _allow_disk(p)
    _connection(p)

    p = command("fetch-model", _fetch_model, "download the ciphertext (may be on disk)")
    _flag(p, "--source", required=True, help=_SOURCES)
    _flag(p, "-o", "--output", required=True, help="file to write")
    _flag(p, "--sha256", help="expected SHA-256 of the ciphertext")
    _connection(p)

    p = command("decrypt", _decrypt, "decrypt onto tmpfs; the output appears only once fully verified")
    _flag(p, "--in", dest="input", required=True, help="ciphertext file or -")
    _flag(p, "-o", "--output", required=True, help="plaintext file (on tmpfs) or - (a pipe, never a terminal)")
    _keys(p, formats=True)
    _identity(p)
    _format(p)
    _allow_disk(p)
    _preflight(p)
    _flag(p, "--delete-key", action="store_true", help="delete the key file after success")
    _flag(p, "--delete-input", action="store_true", help="delete the ciphertext after success")
    _connection(p)

    p = command("unpack", _unpack, "safely extract a tar or zip into a new directory on tmpfs")
    _flag(p, "--in", dest="input", required=True, help="archive file or -")
    _flag(p, "-o", "--output", required=True, help="directory to create")
    _limits(p)
    _verify(p)
    _allow_disk(p)
    _preflight(p)
    _flag(p, "--delete-input", action="store_true", help="delete the archive after success")

    p = command("run", _run, "fetch, decrypt and unpack in one streaming pass")
    _flag(p, "--source", required=True, help=_SOURCES)
    _flag(p, "-o", "--output", required=True, help="directory to create (on tmpfs)")
    _keys(p, formats=True)
    _identity(p)
    _flag(p, "--sha256", help="expected SHA-256 of the ciphertext")
    _format(p)
    _limits(p)
    _verify(p)
    _allow_disk(p)
    _preflight(p)
    _flag(p, "--delete-key", action="store_true", help="delete the key file after success")
    _connection(p)

    p = command("rewrap", _rewrap, "change a version 2 .seal's recipients; the payload is copied byte for byte, "
                "never decrypted (a removed recipient that already unwrapped the data key keeps it: rotate it "
                "by re-sealing)")
    _flag(p, "input", metavar="IN", help=".seal to read: a path, s3://, gs://, azblob://, https://, oci://")
    _flag(p, "-o", "--output", required=True, help="the new .seal: a path, s3://, gs://, azblob:// or oci:// "
          "(may be IN: it is replaced only once complete)")
    _keys(p)
    _identity(p)
    _flag(p, "--add", action="append", metavar="R", help="add a recipient, as seal --recipient (repeatable)")
    _flag(p, "--remove", action="append", metavar="R", help="remove a recipient, as seal --recipient takes it or "
          "as inspect lists it (repeatable); the last one is never removed")
    _connection(p)
    _injection_commands(command)

    p = sub.add_parser("completion", help="print a shell completion script (bash, zsh or fish)",
                       description="print a shell completion script: eval \"$(modelseal completion bash)\"")
    p.add_argument("shell", choices=SHELLS, help="the shell")
    return parser


def _require(a: argparse.Namespace, *names: str) -> None:
    for name in names:
        if not getattr(a, name, None):
            raise UsageError(f"missing {name.upper()} (argument or ${_env_name(name)})")


def _keygen(a: argparse.Namespace, log: Log) -> dict:
    return stages.keygen(_output(a), log)


def _seal(a: argparse.Namespace, log: Log) -> dict:
    _require(a, "src")
    return stages.seal(a.src, _output(a), _keyspec(a), _build(Sealing, a, recipient=tuple(a.recipient or ())),
                       _connection_of(a), log)


def _convert(a: argparse.Namespace, log: Log) -> dict:
    _require(a, "input")
    return stages.convert(a.input, _output(a), a.passphrase_file, _keyspec(a),
                          _build(Sealing, a, recipient=tuple(a.recipient or ())), _connection_of(a), log)


def _inspect(a: argparse.Namespace, log: Log) -> dict:
    _require(a, "file")
    seen = stages.inspect(a.file, _connection_of(a))
    if a.resources:
        from .placement import advice

        if a.output_format == "patch":
            from .sources import backend_class

            # a source read in parallel ranged parts holds them in flight (pods.S3_READER)
            parallel = a.file != "-" and backend_class(a.file).PARALLEL_PARTS
            print(advice.patch_text(seen.header.fixed, seen.payload_bytes, seen.prefix_bytes, kind=a.kind,
                                    parallel=parallel, workload=a.workload), end="")
        elif a.output_format == "json":
            print(json.dumps(advice.numbers(seen.header.fixed, seen.payload_bytes, seen.prefix_bytes), indent=2))
        else:
            print(advice.advice(seen.header.fixed, seen.payload_bytes, seen.prefix_bytes), end="")
    else:
        print(json.dumps(seen.to_json(), indent=2, sort_keys=True))
    return {"name": seen.header.fixed.name}


def _fetch_key(a: argparse.Namespace, log: Log) -> dict:
    return stages.fetch_key(a.key_uri, _output(a), _build(Unwrapping, a), _guards(a, log), _connection_of(a), log)


def _rewrap(a: argparse.Namespace, log: Log) -> dict:
    _require(a, "input")
    rewrapping = Rewrapping(key=_keyspec(a), add=tuple(a.add or ()), remove=tuple(a.remove or ()))
    return stages.rewrap(a.input, _output(a), rewrapping, _connection_of(a), log)


def _fetch_model(a: argparse.Namespace, log: Log) -> dict:
    return stages.fetch_model(_build(SourceSpec, a), _output(a), _connection_of(a), log)


def _decrypt(a: argparse.Namespace, log: Log) -> dict:
    return stages.decrypt(a.input, _output(a), _keyspec(a), _decryption(a), _guards(a, log), _connection_of(a), log)


def _unpack(a: argparse.Namespace, log: Log) -> dict:
    return stages.unpack(a.input, _output(a), _guards(a, log), log)


def _run(a: argparse.Namespace, log: Log) -> dict:
    return stages.run(_build(SourceSpec, a), _output(a), _keyspec(a), _decryption(a), _guards(a, log),
                      _connection_of(a), log)


# ---- injection (issue 23): `inject` and `webhook`, one block ------------------------------------

def _injection_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """`modelseal inject` and `modelseal webhook`: both run inject.inject() (one function), on YAML or on reviews."""
    def images(p: argparse.ArgumentParser) -> None:
        _flag(p, "--image-prefix", default="modelseal", help="the injected stage images' registry and prefix: "
              "PREFIX/run:TAG (default %(default)s)")
        _flag(p, "--image-tag", default=buildinfo.__version__,
              help="the injected stage images' tag (default %(default)s)")

    header = ("connection, for reading the model's header (not written into the pods; also as URI query "
              "parameters)")

    p = command("inject", _inject, "add the sealed model's delivery (init containers, tmpfs volumes, limits sized "
                "from its header) to workloads: YAML in, YAML out. Each flag overrides its modelseal.dev/ "
                "annotation and is written back into it where the workload is annotated; a workload with neither "
                "flags nor annotations is passed through")
    _flag(p, "-f", "--filename", required=True, help="workloads (multi-document YAML), - for stdin")
    _flag(p, "--source", help="the sealed model's URI (default: the modelseal.dev/source annotation)")
    _flag(p, "--seal", metavar="FILE", help="read the header from this local .seal, not by a ranged read of --source")
    _flag(p, "--key-uri", help="key URI the init containers fetch the data key from; not read here "
          "(modelseal.dev/key-uri)")
    _flag(p, "--identity", metavar="URI", help="age identity URI for the stages (modelseal.dev/identity; needs "
          "the .seal format v2 and stage images that read it)")
    _flag(p, "--verify-key", metavar="CONFIGMAP[/KEY]", help="check the model's signature with the public key in "
          "this ConfigMap (key signer.pub by default), mounted into the init containers (modelseal.dev/verify-key)")
    _flag(p, "--container", help="the serving container (modelseal.dev/container; default: the only one)")
    _flag(p, "--mount", help="where the serving container reads the model, mounted read-only (modelseal.dev/mount)")
    _flag(p, "--shape", choices=("single", "four"), help="single (one `run` init container, the default) or four "
          "stages (modelseal.dev/shape)")
    _flag(p, "--size", help="the models volume's size from `inspect --resources` (modelseal.dev/size): size "
          "without reading the header")
    images(p)
    _connection(p, header)

    p = command("webhook", _webhook, "serve the mutating admission webhook (AdmissionReview v1 over TLS) that "
                "injects pods annotated with modelseal.dev/*")
    _flag(p, "--tls-cert", required=True, help="serving certificate chain (PEM), re-read when it changes")
    _flag(p, "--tls-key", required=True, help="its private key (PEM), re-read when it changes")
    _flag(p, "--listen", default="0.0.0.0:8443", help="HOST:PORT to serve /mutate, /healthz and /readyz on "
          "(default %(default)s; port 0: any free port, logged)")
    _flag(p, "--allow-sources", metavar="PREFIX,...", help="read headers only from sources under these URI "
          "prefixes, at a / boundary, without . or .. segments (default: any source but file://); pods that set "
          "modelseal.dev/size need no read")
    images(p)
    _connection(p, header)


def _inject(a: argparse.Namespace, log: Log) -> dict:
    from .inject import Images, Params, inject_documents

    text, count = inject_documents(a.filename, a.seal, _build(Params, a), _build(Images, a), _connection_of(a))
    sys.stdout.write(text)
    return {"documents": count}


def _webhook(a: argparse.Namespace, log: Log) -> dict:
    from . import webhook
    from .inject import Images

    return webhook.serve(_build(webhook.Serving, a), _build(Images, a), _connection_of(a), log)


def _workers(a: argparse.Namespace) -> int:
    if a.workers is not None:
        return a.workers
    from .parallel import default_workers

    return default_workers()  # auto


def _log(args: argparse.Namespace) -> Log:
    """JSON lines unless a person is reading: --log-format text, or auto with stderr on a terminal."""
    try:
        terminal = sys.stderr is not None and sys.stderr.isatty()
    except (OSError, ValueError):
        terminal = False
    text = args.log_format == "text" or (args.log_format == "auto" and terminal)
    return Log(args.command, text=text, quiet=args.quiet, bars=text and terminal)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv:  # `modelseal` alone: the help, and exit 2 (an init container given no args must not pass)
        parser.print_help(sys.stderr)
        return 2
    usage.check_flags(parser, argv)  # an unknown flag, under its command's usage, with "did you mean" (exit 2)
    args = parser.parse_args(argv)  # a malformed command line exits 2 here
    if args.command == "completion":
        from .completion import script

        sys.stdout.write(script(parser, args.shell))
        return 0
    log = _log(args)
    for name, close in usage.misspelled(parser, dict(os.environ)):
        log.warning("unknown_variable", variable=name, message=f"${name} is not a modelseal setting"
                    + (f"; did you mean ${close}?" if close else ""))
    os.environ.setdefault("MODELSEAL_STAGE", args.command)  # backends log under the stage's name
    try:
        with StopSignals() as signals:
            try:
                _read_values(args, argv)
                summary = args.func(args, log) or {}
            except (Exception, KeyboardInterrupt, Stopped) as exc:
                signals.quiet()
                return _failed(args, log, exc, signals.taken)
    except Stopped as exc:  # in the instant the handlers were being put in place or taken down (the soak's find)
        return _failed(args, log, exc)
    seconds = round(log.elapsed(), 3)
    memory = _peak_memory()
    log.info("done", seconds=seconds, **memory)
    write_termination({"stage": args.command, "status": "ok", "seconds": seconds, **memory,
                       **{k: v for k, v in summary.items() if isinstance(v, (int, float, str))}})
    return 0


def _failed(args: argparse.Namespace, log: Log, exc: BaseException, stop: int | None = None) -> int:
    """Report a failure: one line, the termination message, its exit code (at once after a stop signal).

    Once a stop signal's handler has run, the stage was stopped, whatever
    exception the unwinding ended in: a stop inside an import can leave the
    import system to raise a TypeError that no longer carries the Stopped as
    its context (the soak's find in CI: exit 1, "internal error ... ssl.py")."""
    err = StoppedError(stop) if stop is not None else classify(exc)
    log.error("failed", category=err.category, exit_code=err.exit_code, error=str(err))
    write_termination({"stage": args.command, "status": "error", "exit_code": err.exit_code,
                       "category": err.category, "error": str(err)})
    if isinstance(err, StoppedError):
        _exit_now(err.exit_code)
    return err.exit_code


def _exit_now(code: int) -> None:
    """Exit at once after a stop signal: the stage has unwound (its cleanup ran), but a thread still
    blocked in a network call (an S3 part, an upload chunk) would hold the interpreter's exit up to
    --timeout, past the kubelet's grace period."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _peak_memory() -> dict[str, float]:
    """This process's peak RSS, and its memory cgroup's peak (tmpfs pages written included) when
    a limit applies: what the example specs' limits are measured by."""
    from .placement import cgroup

    out: dict[str, float] = {}
    try:
        with open("/proc/self/status") as f:
            hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        out["peak_rss_mib"] = round(hwm / 1024, 1)
    except (OSError, StopIteration, ValueError):
        pass
    if cgroup.memory() is not None:
        peak = cgroup.peak()
        if peak is not None:
            out["cgroup_peak_mib"] = round(peak / 2**20, 1)
    return out


if __name__ == "__main__":
    sys.exit(main())

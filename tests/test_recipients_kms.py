"""Key services that wrap as `.seal` v2 recipients, against real servers on 127.0.0.1: moto (AWS KMS)
and the Vault-API server (transit). Generic: the same code for both providers."""

from __future__ import annotations

import io
import os
import sys
import uuid

import pyrage
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import refused
from modelseal import header_v2, sealfile
from modelseal.errors import DeniedError, IntegrityError, NotARecipient, UsageError
from modelseal.keys import open_key
from modelseal.recipients import kms, x25519
from modelseal.recipients.stanza import Stanza
from support.fixtures import fast
from support.processes import write_file
from support.vault import VaultServer

PLAINTEXT = b"weights\n" * 1000


def unlocking(identities):
    """open_sealed's key_for for a version 2 file: the header unlocked with these identities."""
    return lambda header: header.unlock(identities)


@pytest.fixture
def kms_keys(moto, aws_env):
    """Two KMS keys (two regions' keys, say), by alias."""
    import boto3

    client = boto3.client("kms", endpoint_url=moto.url, region_name="us-east-1")
    aliases = []
    for _ in range(2):
        meta = client.create_key(Description="modelseal v2 test")["KeyMetadata"]
        alias = "alias/ms-" + uuid.uuid4().hex[:8]
        client.create_alias(AliasName=alias, TargetKeyId=meta["KeyId"])
        aliases.append((alias, meta["Arn"]))
    return aliases


def aws(moto, alias: str):
    return open_key(f"aws-kms://{alias}", fast(endpoint_url=moto.url))


def sealed(data_key: bytes, to: list) -> bytes:
    header = header_v2.seal(header_v2.Fixed(name="m", version="1"), data_key, to)
    out = io.BytesIO()
    with header_v2.seal_writer(out, header, data_key) as w:
        w.write(PLAINTEXT)
    return out.getvalue()


def opened(data: bytes, identities: list) -> bytes:
    header, reader = sealfile.open_sealed(io.BytesIO(data), unlocking(identities))
    return reader.read()


def test_two_age_recipients_and_one_kms_recipient_each_alone_unlocks(kms_keys, moto):
    alice, bob = (x25519.Identity.parse(str(pyrage.x25519.Identity.generate()), "id") for _ in range(2))
    alias, arn = kms_keys[0]
    data_key = header_v2.new_data_key()
    data = sealed(data_key, [alice.recipient, bob.recipient, kms.Recipient(aws(moto, alias))])
    for identity in (alice, bob, kms.Identity(aws(moto, alias)), kms.Identity(aws(moto, arn))):
        assert opened(data, [identity]) == PLAINTEXT, identity
    header = sealfile.read_prefix(io.BytesIO(data))[0]
    assert header.recipients()[2] == {"type": "kms", "recipient": f"aws-kms {arn}"}
    assert header.stanzas[2].args[2] == '{"modelseal":"v2"}'
    assert data_key not in data


def test_a_kms_identity_moves_past_another_keys_stanza(kms_keys, moto):
    """Two KMS keys of one provider: the service refuses the other key's stanza, the next one unwraps."""
    (first, _), (second, _) = kms_keys
    data_key = header_v2.new_data_key()
    data = sealed(data_key, [kms.Recipient(aws(moto, first)), kms.Recipient(aws(moto, second))])
    assert opened(data, [kms.Identity(aws(moto, second))]) == PLAINTEXT
    assert opened(data, [kms.Identity(aws(moto, first))]) == PLAINTEXT


def test_a_kms_key_that_is_not_a_recipient(kms_keys, moto):
    (first, _), (second, _) = kms_keys
    data = sealed(header_v2.new_data_key(), [kms.Recipient(aws(moto, first))])
    # moto answers AccessDenied where AWS answers IncorrectKeyException: a denial stays a denial (exit 3)
    with refused(DeniedError, match="unwrapped none of the file's 1 aws-kms stanzas") as e:
        opened(data, [kms.Identity(aws(moto, second))])
    assert e.value.exit_code == 3
    alice = x25519.Identity.parse(str(pyrage.x25519.Identity.generate()), "id")
    only_age = sealed(header_v2.new_data_key(), [alice.recipient])
    with refused(NotARecipient, match="no aws-kms key is a recipient"):
        opened(only_age, [kms.Identity(aws(moto, first))])


def test_a_kms_stanza_with_a_changed_context_is_refused_by_the_service(kms_keys, moto):
    alias, _ = kms_keys[0]
    data_key = header_v2.new_data_key()
    s = kms.Recipient(aws(moto, alias)).wrap(data_key)
    changed = Stanza(s.type, (s.args[0], s.args[1], '{"modelseal":"v1"}'), s.body)
    with refused(IntegrityError, match="unwrapped none"):
        kms.Identity(aws(moto, alias)).unwrap([changed])
    assert kms.Identity(aws(moto, alias)).unwrap([s]) == data_key


def test_vault_transit_is_a_recipient_through_the_same_code(pki, shm_dir):
    vault = VaultServer(tls=pki.server_context())
    try:
        vault.add_transit_key("modelseal")
        vault.add_transit_key("other")
        token = write_file(os.path.join(shm_dir, "t"), vault.add_token())
        opts = fast(ca=pki.ca, token_file=token)
        key = open_key(f"vault-transit://127.0.0.1:{vault.port}/transit/modelseal", opts)
        other = open_key(f"vault-transit://127.0.0.1:{vault.port}/transit/other", opts)
        data_key = header_v2.new_data_key()
        data = sealed(data_key, [kms.Recipient(other), kms.Recipient(key)])
        header = sealfile.read_prefix(io.BytesIO(data))[0]
        assert [r["recipient"] for r in header.recipients()] == ["vault-transit transit/other",
                                                                 "vault-transit transit/modelseal"]
        assert header.stanzas[1].body.startswith(b"vault:v1:")
        assert opened(data, [kms.Identity(key)]) == PLAINTEXT  # Vault's 400 for "other"'s stanza: the next
        # rewrap: remove one transit key by the URI that added it
        smaller = header.rewrap(data_key, remove=[kms.Recipient(other)])
        assert [s.args[1] for s in smaller.stanzas] == ["transit/modelseal"]
        with refused(IntegrityError, match="unwrapped none of the file's 1 vault-transit stanzas"):
            smaller.unlock([kms.Identity(other)])  # Vault refuses the remaining stanza: not its key
    finally:
        vault.close()


def test_a_key_source_that_does_not_wrap_cannot_be_a_recipient(shm_dir):
    path = write_file(os.path.join(shm_dir, "k"), os.urandom(32).hex())
    with refused(UsageError, match="does not wrap keys"):
        kms.Recipient(open_key(f"file://{path}"))
    with refused(UsageError, match="does not wrap keys"):
        kms.Identity(open_key(f"file://{path}"))


@pytest.mark.parametrize("args,body,says", [
    (("aws-kms", "k"), b"x", "3 arguments"),
    (("", "k", "{}"), b"x", "names no provider"),
    (("aws-kms", "k", "{}"), b"", "no ciphertext"),
    (("aws-kms", "k", "[]"), b"x", "object of strings"),
    (("aws-kms", "k", '{"a":1}'), b"x", "object of strings"),
    (("aws-kms", "k", '{"a":{"b":"c"}}'), b"x", "nested|object of strings"),
    (("aws-kms", "k", "{"), b"x", "not valid UTF-8 JSON"),
])
def test_a_malformed_kms_stanza_is_exit_4(args, body, says):
    with refused(IntegrityError, match=says):
        kms.check(Stanza("kms", args, body), "stanza 0")


def test_the_context_is_written_canonically():
    s = kms.stanza_of(kms.WrappedKey("p", "k", b"c", {"b": "2", "a": "\u00e9 x"}))
    assert s.args == ("p", "k", '{"a":"\\u00e9 x","b":"2"}')
    assert kms.wrapped_of(s).context == {"a": "\u00e9 x", "b": "2"}


"""The attacker of tests/containers/compose/tamper.yml: whoever can write where the ciphertext is stored flips one byte of it.

    python3 tamper.py s3://BUCKET/KEY     # the sealed model in S3 (boto3, AWS_ENDPOINT_URL: moto)
    python3 tamper.py /path/model.tar.gpg # the old recipe's baked ciphertext

The byte is the middle one: inside the encrypted payload, past every
header, so only the authentication tags can notice.
"""

import json
import os
import sys

target = sys.argv[1]
if target.startswith("s3://"):
    import boto3

    bucket, _, key = target[len("s3://"):].partition("/")
    s3 = boto3.client("s3", region_name=os.environ.get("AWS_REGION"))
    data = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    offset = len(data) // 2
    data[offset] ^= 0x01
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))
else:
    os.chmod(target, 0o644)
    with open(target, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        offset = size // 2
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x01]))
print(json.dumps({"stage": "tamper", "event": "done", "target": target, "offset": offset}), file=sys.stderr)

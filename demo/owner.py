"""The model owner's AWS account in the compose demo (runs in modelseal/run, entrypoint python3).

Creates what an AWS account would already have: the S3 bucket and a KMS
key-encryption key with an alias (in moto, on 127.0.0.1). The `train`
service meanwhile trains the model (demo/train_iris.py) into /export/iris, a
tmpfs volume, and the `seal` service then seals it into the bucket, exactly
like examples/kubernetes/seal-job.yaml.

boto3 finds moto through AWS_ENDPOINT_URL; the bucket and alias come from
DEMO_BUCKET and DEMO_KMS_ALIAS.
"""

import json
import os
import sys

import boto3

bucket, alias = os.environ["DEMO_BUCKET"], os.environ["DEMO_KMS_ALIAS"]
region = os.environ.get("AWS_REGION", "eu-west-1")

s3 = boto3.client("s3", region_name=region)
extra = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
s3.create_bucket(Bucket=bucket, **extra)

kms = boto3.client("kms", region_name=region)
key_id = kms.create_key(Description="modelseal demo key-encryption key")["KeyMetadata"]["KeyId"]
kms.create_alias(AliasName=alias, TargetKeyId=key_id)

print(json.dumps({"stage": "owner", "event": "ready", "bucket": bucket, "kms_key_id": key_id,
                  "kms_alias": alias}), file=sys.stderr, flush=True)
